"""The plugin's Qt-free state and background work (napari_semiseg._session): no viewer needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synthetic_volume

from napari_semiseg._session import (
    LossHistory,
    Preview,
    TrainingJob,
    TrainingUpdate,
    TrainRequest,
    class_count,
    detect_axis,
    display_maps,
    format_seconds,
    labeled_slices,
    rank_slices,
    training_events,
)
from src_models.errors import SemisegError
from src_models.inference import VolumePrediction, predict_volume
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
    assert class_count(labels) == 3
    assert detect_axis(np.zeros((4, 5, 6))) == 0
    assert class_count(np.zeros((2, 2, 2), np.uint8)) == 2


def test_rank_slices_orders_by_mean_and_skips_labeled():
    score = np.zeros((6, 4, 5), np.float32)
    score[1] = 0.9  # labeled: must be skipped
    score[4] = 0.5
    score[2, 0, 0] = 1.0  # one bright pixel: mean 0.05
    assert rank_slices(score, 0, exclude={1}) == [4, 2, 0, 3, 5]
    # along another axis
    assert rank_slices(score, 2, exclude=set())[0] == 0


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
        "supervised", TINY, iterations=6, batch_size=2, patch_size=32, device="cpu", preview_every=3
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
    # the preview is the model's prediction of that slice
    full = predict_volume(bundle, image)
    np.testing.assert_array_equal(last.labels, full.labels[4])
    assert bundle.iteration == 6 and bundle.info["labeled_slices"] == [2, 6, 9]
    assert load_model(tmp_path).iteration == 6


def test_training_events_continue_and_errors(tmp_path):
    torch.set_num_threads(1)
    image, truth = synthetic_volume()
    labels = sparse(truth, [2, 6])
    req = TrainRequest(
        "supervised", TINY, iterations=3, batch_size=2, patch_size=32, device="cpu", preview_every=0
    )
    _, bundle = run_to_end(training_events(TrainingJob(image, labels, 0, [2, 6], req, tmp_path)))
    method = bundle.method
    more = TrainingJob(image, sparse(truth, [2, 6, 8]), 0, [2, 6, 8], req, tmp_path, bundle=bundle)
    updates, again = run_to_end(training_events(more))
    assert again is bundle and again.method is method and again.iteration == 6
    assert [it for u in updates for it, _ in u.history] == [4, 5, 6]
    wrong_axis = TrainingJob(image, labels, 1, [2], req, tmp_path, bundle=bundle)
    with pytest.raises(SemisegError, match="axis 0"):
        run_to_end(training_events(wrong_axis))
    assert wrong_axis.finished.is_set()
    stopped = TrainingControl()
    stopped.stop()
    job = TrainingJob(image, labels, 0, [2, 6], req, tmp_path / "s", control=stopped)
    updates, fresh = run_to_end(training_events(job))
    assert fresh.iteration == 0 and updates[-1].progress.message == "stopped"


def test_training_thread_leaves_the_gui_a_core_and_priority():
    import os
    import sys
    import threading

    from napari_semiseg._session import lower_thread_priority

    assert TrainRequest("supervised", threads=3).thread_count() == 3
    auto = TrainRequest("supervised").thread_count()
    assert 1 <= auto <= max(1, (os.cpu_count() or 2) - 1)
    assert not lower_thread_priority(0)
    seen = {}

    def worker():
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        seen["applied"] = lower_thread_priority(3)
        seen["delta"] = os.getpriority(os.PRIO_PROCESS, tid) - before

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread priorities are a Linux feature")
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["applied"] and seen["delta"] == min(3, 19 - main_before)
    # only the worker thread was lowered
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before
