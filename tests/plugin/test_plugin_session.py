"""The plugin's Qt-free state and background work (``napari_semiseg._session``, ``_labels``,
``_ranking``, ``_runs``, ``_jobs``, ``_previews``, ``_run_parent``, ``_run_child``,
``_predict``): no viewer needed.

Training runs in a child process; ``train_job`` (``_run_child``), its body, also runs
in-process where a test monkeypatches the trainer.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from helpers import growing_disc, synthetic_volume

import napari_semiseg._run_child as run_child_module
from napari_semiseg._jobs import (
    InterpolationPreview,
    LossHistory,
    Preview,
    TrainingJob,
    TrainingUpdate,
    TrainRequest,
    format_seconds,
)
from napari_semiseg._labels import (
    describe_values,
    detect_axis,
    interpolation_problem,
    label_values,
    labeled_slices,
)
from napari_semiseg._predict import display_maps, predict_layers
from napari_semiseg._previews import interpolate_labels
from napari_semiseg._run_child import train_job
from napari_semiseg._run_parent import prepare_run, training_events
from napari_semiseg._runs import KEEP_FILE, list_runs
from napari_semiseg._session import Session
from src_models.errors import SemisegError
from src_models.inference import VolumePrediction, predict_volume
from src_models.interpolation import interpolate_volume
from src_models.propagation import propagate_volume
from src_models.training.checkpoint import load_model
from src_models.training.control import TrainingControl

TINY = {"channels": "4, 8, 16, 32, 64"}


def sparse(truth: np.ndarray, slices, axis: int = 0) -> np.ndarray:
    out = np.zeros_like(truth)
    where = [slice(None)] * 3
    where[axis] = list(slices)
    out[tuple(where)] = truth[tuple(where)]
    return out


@pytest.mark.parametrize("axis, slices", [(0, (3, 9)), (1, (12, 28)), (2, (12, 25))])
def test_detect_axis_and_labeled_slices(axis, slices):
    _, truth = synthetic_volume((16, 40, 36))
    labels = sparse(truth, slices, axis)
    assert detect_axis(labels) == axis
    assert labeled_slices(labels, axis) == list(slices)
    assert label_values(labels).num_classes == 3
    assert detect_axis(np.zeros((4, 5, 6))) == 0
    assert label_values(np.zeros((2, 2, 2), np.uint8)).num_classes == 2


def test_display_maps_pseudo_becomes_labels_and_others_images():
    pseudo = np.array([[[-1.0, 0.0], [1.0, 2.0]]], np.float32)
    conf = np.full((1, 2, 2), 0.7, np.float32)
    pred = VolumePrediction(
        np.zeros((1, 2, 2), np.uint8),
        None,
        {"confidence": conf, "pseudo": pseudo, "uncertainty": conf},
    )
    shown = display_maps(pred)
    assert set(shown) == {"confidence", "pseudo-labels", "uncertainty"}
    ids, kind = shown["pseudo-labels"]
    assert kind == "labels" and ids.dtype == np.uint8
    np.testing.assert_array_equal(ids, [[[0, 0], [1, 2]]])
    assert shown["confidence"][1] == "image" and shown["confidence"][0].dtype == np.float32


def test_loss_history_and_formatting():
    h = LossHistory()
    h.extend([(1, {"loss": 1.0, "mask_ratio": 0.2}), (2, {"loss": 0.5})])
    assert h.series["loss"] == ([1, 2], [1.0, 0.5])
    assert h.series["mask_ratio"] == ([1], [0.2])
    assert len(h) == 2
    assert format_seconds(75) == "1m15s" and format_seconds(float("nan")) == "?"


def test_request_validation_messages():
    with pytest.raises(SemisegError, match="multiple of 16"):
        TrainRequest("supervised", TINY, patch_size=40).validate()
    with pytest.raises(SemisegError, match="unknown parameter"):
        TrainRequest("supervised", {"nope": 1}).validate()
    with pytest.raises(SemisegError, match="unknown method"):
        TrainRequest("no-such-method").validate()
    with pytest.raises(SemisegError, match="preview interval"):
        TrainRequest("supervised", TINY, preview_seconds=-1).validate()
    config = TrainRequest("supervised", TINY).validate()
    assert config.channels == (4, 8, 16, 32, 64)
    tc = TrainRequest("supervised", iterations=7, batch_size=3, patch_size=32).train_config(5)
    assert (tc.iterations, tc.batch_size, tc.patch_size) == (12, 3, 32)


def run_to_end(gen):
    updates = []
    while True:
        try:
            updates.append(next(gen))
        except StopIteration as stop:
            return updates, stop.value


def test_training_events_yields_progress_previews_and_returns_bundle(tmp_path):
    torch.set_num_threads(1)
    image, truth = synthetic_volume()
    labels = sparse(truth, [2, 6, 9])
    req = TrainRequest(
        "supervised",
        TINY,
        iterations=6,
        batch_size=2,
        patch_size=32,
        device="cpu",
        preview_seconds=0.1,
    )
    job = TrainingJob(image, labels, 0, [2, 6, 9], req, tmp_path, preview_index=lambda: 4)
    updates, bundle = run_to_end(training_events(job))
    assert job.finished.is_set()
    assert all(isinstance(u, TrainingUpdate) for u in updates)
    iterations = [it for u in updates for it, _ in u.history]
    assert iterations == [1, 2, 3, 4, 5, 6]
    assert updates[-1].progress.done and updates[-1].progress.iteration == 6
    previews = [u.preview for u in updates if u.preview is not None]
    assert previews and all(isinstance(p, Preview) for p in previews)
    last = previews[-1]
    assert (last.axis, last.index) == (0, 4)
    assert last.labels.shape == image.shape[1:] and last.labels.dtype == np.uint8
    # the preview is the network's look at one slice: the volume's, before its smoothing
    # across slices
    full = predict_volume(bundle, image, smoothing=0)
    np.testing.assert_array_equal(last.labels, full.labels[4])
    assert bundle.iteration == 6 and bundle.info["labeled_slices"] == [2, 6, 9]
    saved = load_model(tmp_path)  # the bundle is the checkpoint's model
    assert saved.iteration == 6
    weights = bundle.method.net.state_dict()
    for key, value in saved.method.net.state_dict().items():
        assert torch.equal(weights[key], value), key
    # the labels it trained on are in the run folder
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), labels)
    meta = json.loads((tmp_path / "labeled_slices.json").read_text())
    assert meta["axis"] == 0 and meta["labeled_slices"] == [2, 6, 9]
    assert job.pid is not None and job.pid != os.getpid()


def test_interpolate_labels_fills_between_slices_and_rejects_too_few_or_bad_labels():
    labels = growing_disc()
    result = interpolate_labels(labels, 0, [2, 9])
    assert (result.axis, result.labeled) == (0, [2, 9])
    assert result.labels.dtype == np.uint8 and result.labels.shape == labels.shape
    np.testing.assert_array_equal(result.labels, interpolate_volume(labels, [2, 9], 0))
    area = (result.labels == 1).sum(axis=(1, 2))
    np.testing.assert_array_equal(result.labels[[2, 9]], labels[[2, 9]])
    assert area[[0, 1, 10, 11]].tolist() == [0, 0, 0, 0]  # nothing outside the labeled range
    assert all(np.diff(area[2:10]) > 0)  # the disc grows slice by slice in between
    # along another axis: the same fill, transposed
    moved = np.ascontiguousarray(np.moveaxis(labels, 0, 2))
    along_x = interpolate_labels(moved, 2, [2, 9]).labels
    np.testing.assert_array_equal(along_x, np.moveaxis(result.labels, 0, 2))

    assert interpolation_problem([2, 9], 0) == ""
    assert "paint another slice" in interpolation_problem([2], 0)
    with pytest.raises(SemisegError, match="nothing to interpolate"):
        interpolate_labels(labels, 0, [2])
    with pytest.raises(SemisegError, match="non-integer"):
        interpolate_labels(labels.astype(np.float32) / 2, 0, [2, 9])
    with pytest.raises(SemisegError, match="3D"):
        interpolate_labels(labels[0], 0, [2, 9])
    with pytest.raises(SemisegError, match="axis 3"):
        interpolate_labels(labels, 3, [2, 9])


def test_training_events_yield_the_interpolation_before_training_starts(tmp_path):
    torch.set_num_threads(1)
    labels = growing_disc()
    image = np.where(labels > 0, 200.0, 100.0).astype(np.float32)
    req = TrainRequest(
        "supervised",
        TINY,
        iterations=2,
        batch_size=2,
        patch_size=32,
        device="cpu",
        preview_seconds=0,
    )
    job = TrainingJob(image, labels, 0, [2, 9], req, tmp_path, interpolate=True)
    gen = training_events(job)
    first = next(gen)
    # the interpolation comes first, while the training process starts; the labels it
    # trains on are already in the run folder
    assert isinstance(first, InterpolationPreview) and first.kind == "interpolation"
    np.testing.assert_array_equal(first.labels, interpolate_volume(labels, [2, 9], 0))
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), labels)
    # then the propagation along the image's edges, the better zero-training result
    second = next(gen)
    assert isinstance(second, InterpolationPreview) and second.kind == "propagation"
    np.testing.assert_array_equal(second.labels, propagate_volume(image, labels, [2, 9], 0, 2))
    assert second.seconds > 0
    updates, bundle = run_to_end(gen)
    assert updates and all(isinstance(u, TrainingUpdate) for u in updates)
    assert bundle.iteration == 2


def test_previews_follow_seconds_of_training_not_iterations(tmp_path, monkeypatch):
    """A fake clock drives Progress.elapsed: previews come at the first iteration past each
    interval (and at the end), however many iterations that takes; they leave the run's
    randomness alone. The training body runs in-process here, where the fakes reach it."""
    torch.set_num_threads(1)
    image, truth = synthetic_volume()
    labels = sparse(truth, [2, 6, 9])
    # seconds of training after iterations 0 (the done event of a stop) .. 10
    clock = [0.0, 0.5, 1.0, 2.9, 3.1, 3.2, 3.3, 9.0, 9.1, 9.2, 12.5]
    real_train, real_predict = run_child_module.train, run_child_module.predict_training_slice
    current: dict = {}
    predicted: list[tuple[int, bool]] = []

    def timed_train(bundle, sampler, config, out_dir, callback, control):
        def timed(progress):
            progress.elapsed = clock[progress.iteration]
            current["event"] = (progress.iteration, progress.done)
            callback(progress)

        return real_train(bundle, sampler, config, out_dir, timed, control)

    def spy_predict(bundle, volume, index):
        predicted.append(current["event"])
        return real_predict(bundle, volume, index)

    monkeypatch.setattr(run_child_module, "train", timed_train)
    monkeypatch.setattr(run_child_module, "predict_training_slice", spy_predict)

    def run(seconds: float, name: str, index=lambda: None):
        predicted.clear()
        req = TrainRequest(
            "supervised",
            TINY,
            iterations=10,
            batch_size=2,
            patch_size=32,
            device="cpu",
            preview_seconds=seconds,
        )
        job = TrainingJob(image, labels, 0, [2, 6, 9], req, tmp_path / name)
        events: list = []
        iteration = train_job(prepare_run(job), events.append, TrainingControl(), index)
        assert iteration == 10
        updates = [TrainingUpdate(e, []) for e in events if not isinstance(e, Preview)]
        previews = [e for e in events if isinstance(e, Preview)]
        if previews:
            updates[-1].preview = previews[-1]
        return list(predicted), updates, load_model(tmp_path / name)

    # every 3 s: at 3.1 s (iteration 4), 9.0 s (7: more than 3 s after 3.1), 12.5 s (10)
    # and at the end; every 3 iterations would have given 3, 6, 9
    seen, updates, timed = run(3.0, "timed")
    assert seen == [(4, False), (7, False), (10, False), (10, True)]
    shown = [u.preview for u in updates if u.preview is not None]
    assert shown and shown[-1].iteration == 10
    # a longer interval: fewer previews for the same iterations
    assert run(5.0, "five")[0] == [(7, False), (10, True)]

    # the user moves to another slice at iteration 8 (9.1 s): its preview comes at the first
    # iteration 1 s after the last preview (10, at 12.5 s), not 5 s later
    def viewed() -> int:
        return 3 if current["event"][0] < 8 else 8

    assert run(5.0, "moved", viewed)[0] == [(7, False), (10, False), (10, True)]
    moved = [e for e in run(5.0, "moved2", viewed)[1] if e.preview is not None]
    assert moved[-1].preview.index == 8
    # 0: off
    off_seen, off_updates, off = run(0.0, "off")
    assert off_seen == [] and all(u.preview is None for u in off_updates)
    # previews leave the training run unchanged (its RNG and weights)
    weights = timed.method.net.state_dict()
    for key, value in off.method.net.state_dict().items():
        assert torch.equal(weights[key], value), key


def test_training_events_continue_and_errors(tmp_path):
    torch.set_num_threads(1)
    image, truth = synthetic_volume()
    labels = sparse(truth, [2, 6])
    req = TrainRequest(
        "supervised",
        TINY,
        iterations=3,
        batch_size=2,
        patch_size=32,
        device="cpu",
        preview_seconds=0,
    )
    _, bundle = run_to_end(training_events(TrainingJob(image, labels, 0, [2, 6], req, tmp_path)))
    method = bundle.method
    more = TrainingJob(image, sparse(truth, [2, 6, 8]), 0, [2, 6, 8], req, tmp_path, bundle=bundle)
    updates, again = run_to_end(training_events(more))
    # the child continued the model from its checkpoint: a new bundle, 3 more iterations
    assert again.iteration == 6 and again.info["labeled_slices"] == [2, 6, 8]
    assert again.method.name == method.name and again.method.config == method.config
    assert [it for u in updates for it, _ in u.history] == [4, 5, 6]
    pairs = zip(again.method.net.parameters(), method.net.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    wrong_axis = TrainingJob(image, labels, 1, [2], req, tmp_path, bundle=bundle)
    with pytest.raises(SemisegError, match="axis 0"):
        run_to_end(training_events(wrong_axis))
    assert wrong_axis.finished.is_set()
    stopped = TrainingControl()
    stopped.stop()
    job = TrainingJob(image, labels, 0, [2, 6], req, tmp_path / "s", control=stopped)
    updates, fresh = run_to_end(training_events(job))
    assert fresh.iteration == 0 and updates[-1].progress.message == "stopped"


def test_training_process_leaves_the_gui_a_core_and_priority(tmp_path):
    assert TrainRequest("supervised", threads=3).thread_count() == 3
    auto = TrainRequest("supervised").thread_count()
    assert 1 <= auto <= max(1, (os.cpu_count() or 2) - 1)
    image, truth = synthetic_volume()
    req = TrainRequest(
        "supervised", TINY, iterations=1, batch_size=2, patch_size=32, device="cpu", nice=3
    )
    req.preview_seconds = 0
    job = TrainingJob(image, sparse(truth, [2, 6]), 0, [2, 6], req, tmp_path)
    run_to_end(training_events(job))
    # the child lowered its own priority (the viewer's is untouched) and kept to the threads
    expected = min(3, 19 - os.nice(0)) if hasattr(os, "nice") else 0
    started = (tmp_path / "process.log").read_text().splitlines()[0]
    assert f"process {job.pid} started: nice +{expected}, {auto} torch thread(s)" in started


def test_run_folders_go_to_the_runs_folder_and_are_pruned_to_the_last_n(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SEMISEG_RUNS", str(tmp_path / "default"))
    session = Session()
    assert session.runs_folder() == tmp_path / "default"  # platformdirs unless overridden
    session.run_root = tmp_path / "runs"
    session.keep_runs = 3
    made = []
    for i in range(3):
        made.append(session.new_run_dir())
        (made[-1] / "model.json").write_text(json.dumps({"method": "dfcps", "iteration": i}))
    (made[0] / KEEP_FILE).touch()  # saved by the user: never pruned
    later = [session.new_run_dir() for _ in range(4)]
    names = {r.path for r in list_runs(session.runs_folder())}
    # the newest 3, the kept one, and the current model's (the run before the newest)
    assert names == {made[0], *later[-3:]}
    assert all(p.name.startswith("run-") for p in names)
    runs = session.runs()
    assert runs[0].path == later[-1] and runs[0].iteration is None
    kept = next(r for r in runs if r.path == made[0])
    assert kept.kept and kept.iteration == 0 and "dfcps" in kept.label()
    # a folder of the user's in the runs folder is never touched
    (tmp_path / "runs" / "mine").mkdir()
    session.keep_runs = 1
    previous = session.run_dir
    session.new_run_dir()  # prunes to the last 1: the new run, the previous one and kept ones
    assert {r.path for r in session.runs()} == {made[0], previous, session.run_dir}
    assert (tmp_path / "runs" / "mine").is_dir() and made[0].is_dir()
    assert session.run_dir is not None and session.run_dir.is_dir()


def test_painted_0_255_masks_train_two_classes_and_predict_back_255(tmp_path):
    """Issue 19: the plugin reads label values as the CLI does (a 0/255 mask is binary, the
    prediction is written back with 255) and fuses Predict volume with the propagation."""
    torch.set_num_threads(1)
    labels = growing_disc() * 255
    image = np.where(labels > 0, 200.0, 100.0).astype(np.float32)
    image += np.random.default_rng(0).normal(0, 5, image.shape).astype(np.float32)
    assert describe_values(label_values(labels)) == "2 classes (255 -> 1)"
    req = TrainRequest(
        "supervised",
        TINY,
        iterations=3,
        batch_size=2,
        patch_size=32,
        device="cpu",
        preview_seconds=0,
    )
    sparse_labels = sparse(labels, [2, 6, 9])
    job = TrainingJob(image, sparse_labels, 0, [2, 6, 9], req, tmp_path)
    _, bundle = run_to_end(training_events(job))
    assert bundle.num_classes == 2 and bundle.info["label_values"] == [0, 255]
    alone = predict_layers(bundle, image)
    fused = predict_layers(bundle, image, labels=sparse_labels, labeled=[2, 6, 9])
    assert set(np.unique(fused.labels)) <= {0, 255} and set(np.unique(alone.labels)) <= {0, 255}
    # 3 iterations teach nothing: the fused mask is the propagation's, close to the truth
    assert (fused.labels == labels).mean() > max(0.97, (alone.labels == labels).mean())
    # an instance mask is refused up front, with the fix
    with pytest.raises(SemisegError, match="instance mask"):
        label_values(np.arange(64).reshape(4, 4, 4))
    # continuing a model refuses values it was not trained with
    with pytest.raises(SemisegError, match="not trained with"):
        label_values(np.where(labels > 0, 7, 0), model=bundle)


def test_slice_score_is_the_mean_of_each_slice_along_the_axis():
    from napari_semiseg._ranking import slice_score

    score = np.zeros((6, 4, 5), np.float32)
    score[4] = 0.5
    score[2, 0, 0] = 1.0  # one bright pixel: mean 0.05
    np.testing.assert_allclose(slice_score(score, 0), [0, 0, 0.05, 0, 0.5, 0])
    np.testing.assert_allclose(slice_score(score, 2)[0], (1.0 + 0.5 * 4) / 24)


def test_session_events_are_typed_and_continue_is_a_request():
    # issue 19: typed events instead of free strings and a stored callback
    from napari_semiseg._session import Change, ContinueTraining, Session

    session = Session()
    seen = []
    session.connect(seen.append)
    session.notify(Change.MODEL)
    assert not session.request_continue(5)  # no training dock answers: nothing runs
    assert seen == [Change.MODEL, ContinueTraining(5)]

    def trainer(event):  # what the training dock does with the request
        if isinstance(event, ContinueTraining):
            session.busy = "training"

    session.connect(trainer)
    assert session.request_continue(7)
    session.disconnect(seen.append)
    session.notify(Change.BUSY)
    assert seen[-1] == ContinueTraining(7)
