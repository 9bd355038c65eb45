"""The parent side of a training run, free of Qt and napari: it runs in a worker thread.

:func:`training_events` is a generator that the training dock hands to napari's
``create_worker``: it saves the labels to train on in the run folder
(:data:`~napari_semiseg._runs.LABELS_FILE`, so what the user painted survives any crash),
starts the training in a child process (:mod:`napari_semiseg._train_process`; the child runs
:func:`~napari_semiseg._run_child.train_job`), yields the interpolation when the job asks for
it (so it reaches the viewer before any training event), and relays what the child sends as
:class:`~napari_semiseg._jobs.TrainingUpdate` batches at most every ``UPDATE_PERIOD`` seconds
(so a fast tiny model never floods the GUI thread). Every ``preview_seconds`` seconds of
training (pauses excluded) the child also predicts the slice the viewer shows (its index is
read from :attr:`~napari_semiseg._session.Session.preview_index`, written by the GUI thread,
and handed on by the generator) and sends it as a :class:`~napari_semiseg._jobs.Preview`. At
the end the generator loads the trained bundle from the run folder's checkpoint and returns
it; when the child dies it raises :class:`~napari_semiseg._jobs.TrainingProcessDied`,
holding the last good checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_semiseg._jobs import (
    ChildJob,
    InterpolationPreview,
    Preview,
    TrainingJob,
    TrainingProcessDied,
    TrainingUpdate,
    _friendly,
)
from napari_semiseg._labels import label_values
from napari_semiseg._layer_data import image_channels_first, lazy_image, picklable_image
from napari_semiseg._previews import interpolate_labels, propagate_labels
from napari_semiseg._run_child import train_job
from napari_semiseg._runs import LABELS_FILE, PROCESS_LOG, SLICES_FILE
from napari_semiseg._train_process import ChildError, ChildProcess, describe_exit, tail_lines
from src_models.device import select_device
from src_models.errors import SemisegError
from src_models.files import atomic_write
from src_models.training.checkpoint import (
    META_FILE,
    ModelBundle,
    load_model,
    save_model,
)
from src_models.training.trainer import Progress

#: seconds between two batches of events handed to the GUI thread
UPDATE_PERIOD = 0.05
#: longest wait for the training process before the generator checks control and liveness
POLL_PERIOD = 0.1
#: seconds to wait for the exit code of a child that closed its end of the pipe
KILL_WAIT = 10.0


def save_labels(run_dir: Path, labels: np.ndarray, axis: int, labeled: list[int], info=None):
    """Write the labels a run trains on (``labels.npy``) and their slicing (axis, labeled
    slices, layer names: ``labeled_slices.json``) into ``run_dir``, atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    array = np.asarray(labels)

    def write_array(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(run_dir / LABELS_FILE, write_array)
    meta = {"axis": int(axis), "labeled_slices": [int(s) for s in labeled]}
    meta.update({k: str(v) for k, v in (info or {}).items() if v is not None})
    text = json.dumps(meta, indent=2)
    atomic_write(run_dir / SLICES_FILE, lambda tmp: Path(tmp).write_text(text))


def _share(array: np.ndarray) -> Any:
    """A torch tensor in shared memory for ``array`` (passed to a child without a copy
    through the pipe), or the array itself when torch has no such dtype."""
    try:
        return torch.from_numpy(np.ascontiguousarray(array)).share_memory_()
    except TypeError:
        return array


def prepare_run(job: TrainingJob) -> ChildJob:
    """Parent side of a run: check a model to continue against the job, save the labels (and
    that model) into the run folder, put the image in shared memory (or, for a lazy image
    layer larger than :data:`napari_semiseg.io.LAZY_VOXELS` voxels, hand the child a lazy view
    of it: never read whole here)."""
    view = lazy_image(job.image, job.rgb)
    image = view if view is not None else image_channels_first(job.image, job.rgb)
    bundle = job.bundle
    if bundle is not None:
        if bundle.axis != job.axis:
            raise SemisegError(
                f"the model was trained on slices along axis {bundle.axis}, the labels are "
                f"set to axis {job.axis}: set the axis back to {bundle.axis} or train anew"
            )
        if bundle.image_channels != image.shape[0]:
            raise SemisegError(
                f"the model expects {bundle.image_channels} channel(s), the image has "
                f"{image.shape[0]}: pick the image it was trained on or train anew"
            )
    run_dir = Path(job.run_dir)
    save_labels(run_dir, job.labels, job.axis, job.labeled, job.info)
    if bundle is not None:
        save_model(bundle, run_dir)  # the child resumes from it, trainer state included
    device = job.request.device if bundle is None else str(bundle.method.device)
    return ChildJob(
        _share(image) if view is None else picklable_image(view),
        job.axis,
        list(job.labeled),
        job.request,
        str(run_dir),
        bundle is not None,
        device,
        dict(job.info),
        job.child_setup,
        lazy=view is not None,
    )


def _last_checkpoint(run_dir: Path, device: Any) -> ModelBundle | None:
    """The model of the run folder's checkpoint, None when there is none or it is damaged."""
    if not (run_dir / META_FILE).exists():
        return None
    try:
        return load_model(run_dir, device=device)
    except SemisegError:
        return None


def _ended_without_result(job: TrainingJob, child: ChildProcess, device: Any, last) -> Any:
    """The bundle of a run whose process was ended after a stop request (its last checkpoint),
    or the error to raise for one that died."""
    run_dir = Path(job.run_dir)
    checkpoint = _last_checkpoint(run_dir, device)
    grace = job.request.stop_grace
    if child.stop_time is not None and child.terminated:
        if checkpoint is not None:
            return checkpoint
        return SemisegError(
            f"the training process did not stop within {grace:g} s and was ended before its "
            "first checkpoint: nothing to keep; train again"
        )
    how = describe_exit(child.exitcode)
    # a SIGKILL may be the out-of-memory killer, or a user's kill -9
    hint = "; the system's out-of-memory killer may have sent it" if child.exitcode == -9 else ""
    where = f" at iteration {last.iteration}" if last is not None else " before its first iteration"
    lines = tail_lines(run_dir / PROCESS_LOG)
    tail = f" Last log lines: {' | '.join(lines)}." if lines else ""
    if checkpoint is not None:
        kept = (
            f"The last good checkpoint (iteration {checkpoint.iteration}, {run_dir}) is kept "
            "and loaded: continue training from it, save it or train anew."
        )
    else:
        kept = (
            "No checkpoint was written before it died (every "
            f"{job.request.checkpoint_every} iterations or {job.request.checkpoint_seconds:g} s"
            "); the previous model is kept."
        )
    return TrainingProcessDied(
        # what is kept first: a status line shows the first lines of this
        f"the training process died ({how}{hint}){where}. {kept}{tail} The labels it trained "
        f"on are saved in {run_dir / LABELS_FILE}.",
        checkpoint,
    )


def training_events(
    job: TrainingJob,
) -> Generator[TrainingUpdate | InterpolationPreview, None, ModelBundle]:
    """Train as described by ``job`` in a child process; yields :class:`TrainingUpdate` and
    returns the bundle loaded from the run folder's checkpoint.

    With ``job.interpolate`` the first thing yielded is the :class:`InterpolationPreview` of
    the labels: the instant preview, computed while the child starts. ``job.control``
    pauses, resumes and stops the child (a stopped child that has not ended within
    ``request.stop_grace`` seconds is terminated; its last checkpoint is returned); a child
    that dies raises :class:`TrainingProcessDied`. ``job.finished`` is set when everything
    has ended (also on error) and the child is gone.
    """
    child: ChildProcess | None = None
    try:
        req = job.request
        spec = prepare_run(job)
        device = select_device(spec.device)
        child = ChildProcess(
            train_job,
            (spec,),
            Path(job.run_dir) / PROCESS_LOG,
            nice=req.nice,
            threads=req.thread_count(),
            name="semiseg-train",
        )
        job.pid = child.pid
        del spec  # the child holds the shared image now
        if job.interpolate:
            values = label_values(job.labels, job.request.ignore_label, job.bundle)
            yield interpolate_labels(job.labels, job.axis, job.labeled, values=values)
            # the better zero-training result follows within seconds, while the child trains
            propagated = propagate_labels(
                job.image,
                job.labels,
                job.axis,
                job.labeled,
                job.rgb,
                values=values,
                ends_labeled=req.ends_labeled,
                spacing=job.info.get("spacing"),
            )
            if propagated is not None:
                yield propagated
        last: Progress | None = None
        while not child.ended:
            if job.control.stop_requested:
                child.request_stop()
            child.set_paused(job.control.paused)
            child.set_preview_index(job.preview_index())
            child.enforce_stop(req.stop_grace)
            batch = child.receive(POLL_PERIOD, UPDATE_PERIOD)
            progress = [e for e in batch if isinstance(e, Progress)]
            previews = [e for e in batch if isinstance(e, Preview)]
            last = progress[-1] if progress else last
            # a preview can arrive in a batch of its own (after its progress event): never
            # drop it, re-send the latest progress with it
            if last is not None and (progress or previews):
                yield TrainingUpdate(
                    last,
                    [(p.iteration, dict(p.logs)) for p in progress if p.logs and not p.done],
                    previews[-1] if previews else None,
                )
        child.join(KILL_WAIT)
        if child.failure is not None:
            failure = child.failure
            if failure.user_error:
                raise SemisegError(failure.message)
            raise _friendly(ChildError(failure))
        if child.has_result:
            return load_model(job.run_dir, device=device)
        outcome = _ended_without_result(job, child, device, last)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    except (MemoryError, RuntimeError) as exc:
        raise _friendly(exc) from None
    finally:
        if child is not None:
            child.close(job.request.stop_grace)
        job.finished.set()
