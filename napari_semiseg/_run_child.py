"""The child side of a training run, free of Qt and napari: the training process's body.

:func:`train_job` runs in the training process (:mod:`napari_semiseg._train_process`), started
by :func:`~napari_semiseg._run_parent.training_events` in the worker thread with the
:class:`~napari_semiseg._jobs.ChildJob` that :func:`~napari_semiseg._run_parent.prepare_run`
made. It reads the labels from the run folder, builds or resumes the model, trains it into the
run folder and sends every progress event and, every ``preview_seconds`` seconds of training
(pauses excluded), a :class:`~napari_semiseg._jobs.Preview` of the slice the viewer shows.
It is also callable in-process (tests do, to reach the trainer with a monkeypatch).

The training process imports this module (and what it imports, never napari nor Qt).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_semiseg._jobs import ChildJob, Preview, _friendly
from napari_semiseg._labels import label_values
from napari_semiseg._runs import LABELS_FILE
from src_models.data.lazy import make_lazy_volume, read_label_slices
from src_models.data.volumes import check_labels, make_volumes
from src_models.device import select_device
from src_models.errors import SemisegError
from src_models.inference import predict_training_slice
from src_models.recipe import build_run
from src_models.training.checkpoint import ModelBundle, load_model
from src_models.training.control import TrainingControl
from src_models.training.trainer import Progress, train

#: least seconds of training between a preview and the one of a newly shown slice
PREVIEW_FOLLOW_SECONDS = 1.0
#: log a progress line in the process log every this many seconds of training
LOG_SECONDS = 10.0

log = logging.getLogger(__name__)


def _lazy_volumes(spec: ChildJob, run_dir: Path, resumed: ModelBundle | None):
    """Child side, lazy image: only the labeled slices of the saved labels are read (the
    file is memory-mapped); the image is read slab by slab through a bounded cache."""
    labels = np.load(run_dir / LABELS_FILE, mmap_mode="r")
    if tuple(labels.shape) != tuple(spec.image.shape[1:]):
        raise SemisegError(
            f"the labels have shape {tuple(labels.shape)}, the image {tuple(spec.image.shape[1:])}"
            ": they must match voxel for voxel"
        )
    slices = read_label_slices(labels, spec.axis, spec.labeled)
    slices = {s: check_labels(a, allow_ignore=True) for s, a in slices.items()}
    if resumed is not None:
        num_classes = resumed.num_classes
    else:
        num_classes = max(2, max((int(a.max()) for a in slices.values() if a.size), default=0) + 1)
    log.info(
        "image %s (%s) read slab by slab: %d labeled slice(s) in memory",
        tuple(spec.image.shape),
        type(getattr(spec.image.array, "array", spec.image.array)).__name__,
        len(slices),
    )
    return [make_lazy_volume(spec.image, slices, spec.axis, num_classes)], num_classes


def train_job(
    spec: ChildJob,
    send: Callable[[Any], None],
    control: TrainingControl,
    preview_index: Callable[[], int | None],
) -> int:
    """Child side of a run (the training process's target; also callable in-process): build
    or resume the model, train it into the run folder, ``send`` every :class:`Progress` and
    :class:`Preview`. Returns the iteration reached (the checkpoint holds the model)."""
    if spec.setup is not None:
        spec.setup()
    req, run_dir = spec.request, Path(spec.run_dir)
    image = spec.image.numpy() if isinstance(spec.image, torch.Tensor) else spec.image
    labels = None if spec.lazy else np.load(run_dir / LABELS_FILE)
    try:
        resumed = load_model(run_dir, device=select_device(spec.device)) if spec.resume else None
        values = None
        if spec.lazy:  # (painted ids are classes as they are)
            volumes, num_classes = _lazy_volumes(spec, run_dir, resumed)
        else:
            # painted values read as the CLI reads them (0/255 -> 2 classes, gaps closed)
            values = label_values(labels, req.ignore_label, resumed)
            volumes, num_classes = make_volumes(
                [image],
                [values.encode(labels)],
                spec.axis,
                [spec.labeled],
                num_classes=values.num_classes,
                spacings=[spec.info.get("spacing")],
            )
        volume = volumes[0]
        recipe = req.recipe(spec.axis)
        if control.stop_requested:  # stopped before it started: checkpoint at once, no prior
            recipe.prior_fraction = 0.0
        device = resumed.method.device if resumed is not None else select_device(req.device)
        run = build_run(
            recipe, volumes=volumes, num_classes=num_classes, device=device, resume=resumed
        )
        bundle, sampler = run.bundle, run.sampler
        bundle.info.update(spec.info)
        if values is not None:
            bundle.info.update(values.info())
        bundle.info["labeled_slices"] = list(volume.labeled)
        config = req.train_config(start=bundle.iteration, axis=spec.axis)
        # seconds of training (Progress.elapsed: pauses excluded) of the next preview / log
        next_preview, next_log = req.preview_seconds, 0.0
        # the slice of the last preview and when it was made: a new slice on screen gets
        # its preview at once (at most every PREVIEW_FOLLOW_SECONDS), not a period later
        shown: int | None = None
        shown_at = 0.0

        def callback(progress: Progress) -> None:
            nonlocal next_preview, next_log, shown, shown_at
            send(progress)
            if progress.elapsed >= next_log or progress.done:
                next_log = progress.elapsed + LOG_SECONDS
                logs = " ".join(f"{k} {v:.4g}" for k, v in progress.logs.items())
                log.info("iteration %d/%d %s", progress.iteration, progress.total, logs)
            every = req.preview_seconds
            if every <= 0:
                return
            index = preview_index()
            n = volume.slices.shape[0]
            index = n // 2 if index is None else min(max(int(index), 0), n - 1)
            moved = (
                shown is not None
                and index != shown
                and progress.elapsed - shown_at >= PREVIEW_FOLLOW_SECONDS
            )
            if progress.elapsed >= next_preview or progress.done or moved:
                next_preview = progress.elapsed + every
                shown, shown_at = index, progress.elapsed
                labels = predict_training_slice(bundle.method, volume, index)
                send(Preview(spec.axis, index, labels, progress.iteration))

        log.info(
            "training %s on %s from iteration %d",
            req.method,
            bundle.method.device,
            bundle.iteration,
        )
        train(bundle, sampler, config, run_dir, callback, control)
        return bundle.iteration
    except (MemoryError, RuntimeError) as exc:
        raise _friendly(exc) from None
