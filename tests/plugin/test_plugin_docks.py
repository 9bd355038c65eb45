"""The training and review docks in a real napari viewer (pytest-qt, run under xvfb).

Tiny settings everywhere: U-Net widths 4..64 through the parameter form, patch 32, batch 2,
a handful of iterations, on a 12x40x36 synthetic volume with three labeled slices. Training
runs in a child process: faults and probes reach it through ``plugin_child_hooks``.
"""

from __future__ import annotations

import os
import signal
from functools import partial

import numpy as np
import plugin_child_hooks as hooks
import pytest
import torch
from helpers import growing_disc, synthetic_volume

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.notifications import notification_manager  # noqa: E402

from napari_semiseg._jobs import TrainingUpdate  # noqa: E402
from napari_semiseg._qt.review_dock import ReviewDock  # noqa: E402
from napari_semiseg._qt.training_dock import NO_TRAINING_LAYER, TrainingDock  # noqa: E402
from src_models.errors import SemisegError  # noqa: E402
from src_models.methods.base import (  # noqa: E402
    config_params,
    get_method,
    make_config,
    method_names,
)
from src_models.propagation import propagate_volume  # noqa: E402
from src_models.training.checkpoint import create_model, load_model  # noqa: E402

LABELED = (2, 6, 9)
TINY = (4, 8, 16, 32, 64)
TIMEOUT = 60_000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def errors():
    """Error notifications shown during the test."""
    seen: list[str] = []

    def record(notification):
        if str(notification.severity).lower().endswith("error"):
            seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def notes():
    """Every notification shown during the test: (severity, message)."""
    seen: list[tuple[str, str]] = []

    def record(notification):
        seen.append((str(notification.severity).lower(), str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def docks(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    image, truth = synthetic_volume()
    labels = np.zeros_like(truth)
    labels[list(LABELED)] = truth[list(LABELED)]
    viewer.add_image(image, name="vol")
    viewer.add_labels(labels, name="labels")
    train, review = TrainingDock(viewer), ReviewDock(viewer)
    train.session.run_root = tmp_path / "runs"
    viewer.window.add_dock_widget(train, name="Training")
    viewer.window.add_dock_widget(review, name="Review")
    yield viewer, train, review, truth
    train.shutdown()
    review.shutdown()


def tiny(
    dock: TrainingDock,
    method: str = "supervised",
    iterations: int = 4,
    preview_seconds: float = 0.1,
) -> None:
    dock.method_combo.setCurrentText(method)
    if "channels" in dock.params.names:
        dock.params.set_values({"channels": TINY})
    dock.iterations.setValue(iterations)
    dock.batch_size.setValue(2)
    dock.patch_size.setValue(32)
    dock.preview_seconds.setValue(preview_seconds)
    dock.device_combo.setCurrentText("cpu")


def in_child(dock: TrainingDock, setup, **request) -> None:
    """Make the dock's next runs call ``setup`` in their training process and override
    fields of their request."""
    make_job = dock._make_job

    def with_setup(*args, **kw):
        job = make_job(*args, **kw)
        job.child_setup = setup
        for name, value in request.items():
            setattr(job.request, name, value)
        return job

    dock._make_job = with_setup


def wait_idle(qtbot, *docks_) -> None:
    qtbot.waitUntil(
        lambda: all(d.worker is None for d in docks_) and not docks_[0].session.busy,
        timeout=TIMEOUT,
    )


def train_now(qtbot, dock: TrainingDock, **kw) -> None:
    tiny(dock, **kw)
    assert dock.start_training()
    assert not dock.train_button.isEnabled() and dock.stop_button.isEnabled()
    # at once, never the previous run's "n / m · ETA"
    assert dock.progress.format() == "starting…"
    wait_idle(qtbot, dock)


def test_dock_builds_for_every_method_round_trips_params_and_rejects_bad_input(
    docks, qtbot, errors, monkeypatch
):
    """One viewer for the checks that need no successful training run."""
    check_dock_builds_for_every_registered_method(docks)
    check_parameters_round_trip_to_the_trainer_config(docks)
    check_bad_input_notifies_and_starts_no_thread(docks, errors)
    check_training_error_is_notified_and_controls_come_back(docks, qtbot, errors, monkeypatch)


def check_dock_builds_for_every_registered_method(docks):
    _, train, review, _ = docks
    # nothing to predict, review, continue, export or save before a model exists
    for button in (
        review.predict_button,
        review.next_button,
        review.accept_button,
        review.continue_button,
        review.export_button,
        train.save_button,
    ):
        assert not button.isEnabled(), button.text()
    assert train.train_button.isEnabled() and train.load_button.isEnabled()
    assert "No model yet" in review.model_info.text()
    check_auto_follows_the_budget(train)
    for name in method_names():
        train.method_combo.setCurrentText(name)
        cls = get_method(name)
        shown = train.method_description.text()
        assert shown.startswith(cls.description)
        # a semi-supervised method says when it pays off against the default
        assert (cls.budget_note in shown) if cls.budget_note else shown == cls.description
        assert train.params.names == [p.name for p in config_params(cls.Config)]
        # the untouched form gives the method's defaults
        assert make_config(cls.Config, train.params.values()) == cls.Config()


def check_auto_follows_the_budget(train):
    """The default entry trains the method measured best at the budget set, with its
    defaults, and stays the choice after a model of either method is shown."""
    assert train.method_combo.currentText() == "auto" == train.method_combo.itemText(0)
    assert train.method_description.text().startswith("Auto (the default): supervised")
    assert not train.method_tab.advanced.isVisibleTo(train.method_tab)  # no parameters
    train.budget_unit.setCurrentIndex(0)
    train.ends_labeled.setChecked(True)
    assert (train.request().method, train.request().params) == ("supervised", {})
    train.budget_unit.setCurrentIndex(1)
    train.minutes.setValue(2.0)
    assert train.request().method == "supervised"
    train.minutes.setValue(5.0)
    assert (train.request().method, train.request().params) == ("sdcl", {})
    train.ends_labeled.setChecked(False)  # slices strictly inside: supervised measured better
    assert train.request().method == "supervised"
    train.ends_labeled.setChecked(True)
    train._show_model(create_model("supervised", {"channels": TINY}, 1, 2))
    assert train.method_combo.currentText() == "auto" and train.request().method == "sdcl"
    train.ends_labeled.setChecked(False)
    train.budget_unit.setCurrentIndex(0)
    train.method_combo.setCurrentText("dfcps")
    assert train.method_tab.advanced.isVisibleTo(train.method_tab)
    assert train.request().method == "dfcps"


def check_parameters_round_trip_to_the_trainer_config(docks):
    _, train, _, _ = docks
    tiny(train, iterations=7)
    train.params.set_values({"lr": 0.02, "channels": (8, 16, 32, 64, 128)})
    train.seed.setValue(3)
    train.preview_seconds.setValue(2.5)
    req = train.request()
    assert req.preview_seconds == 2.5
    config = make_config(get_method("supervised").Config, req.params)
    assert config.lr == 0.02 and config.channels == (8, 16, 32, 64, 128)
    assert config.momentum == 0.9  # untouched default
    tc = req.train_config()
    assert (tc.iterations, tc.batch_size, tc.patch_size, tc.seed, tc.device) == (7, 2, 32, 3, "cpu")
    train.budget_unit.setCurrentIndex(1)
    train.minutes.setValue(0.5)
    assert train.request().minutes == 0.5
    # a loaded model's config shows up in the form
    train.params.reset()
    assert train.params.changed_values() == {}
    # rows in words, the identifier and help in the tooltip; 0 = the default says so
    label = train.params._labels["lr"]
    assert label.text() == "Learning rate" and label.toolTip().startswith("lr: ")
    lr = train.params.editor("lr")
    assert lr.text() == "" and lr.placeholderText().startswith("auto: 3e-3 adamw")
    assert train.params.values()["lr"] == "0"
    # an edit survives switching to another method and back
    train.params.set_values({"lr": 0.05})
    train.method_combo.setCurrentText("crossmatch")
    assert train.params.editor("lr").text() == "0.01"  # crossmatch's own default
    train.method_combo.setCurrentText("supervised")
    assert train.params.changed_values() == {"lr": "0.05"}
    train.params.reset()
    tiny(train)


def check_bad_input_notifies_and_starts_no_thread(docks, errors):
    viewer, train, review, _ = docks
    tiny(train)
    viewer.layers["labels"].data[:] = 0
    assert not train.start_training()
    assert train.worker is None and not train.session.busy
    assert errors and "no labeled slice" in errors[-1]
    viewer.add_labels(np.zeros((3, 4, 5), np.uint8), name="small")
    train.labels_combo.set_layer("small")
    assert not train.start_training()
    assert "shape" in errors[-1] and train.worker is None
    train.labels_combo.set_layer("labels")
    viewer.layers["labels"].data[4, 5, 5] = 1
    train.params.set_values({"channels": "four"})
    assert not train.start_training()
    assert "channels" in errors[-1] and train.worker is None
    assert not review.predict() and "no model" in errors[-1]
    assert train.train_button.isEnabled()
    train.params.reset()
    tiny(train)


def test_train_preview_predict_review_continue_export(docks, qtbot, tmp_path):
    """The whole user flow in one viewer: train, preview, predict, review, accept, continue
    training, export, save the model and predict with it on the CLI."""
    check_end_to_end_train_preview_predict(docks, qtbot)
    check_review_next_accept_continue(docks, qtbot)
    check_export_save_and_cli_parity(docks, qtbot, tmp_path)


def check_end_to_end_train_preview_predict(docks, qtbot):
    viewer, train, review, truth = docks
    train_now(qtbot, train, iterations=6, preview_seconds=0.1)
    bundle = train.session.bundle
    assert bundle is not None and bundle.iteration == 6
    assert bundle.method.config.channels == TINY
    assert train.progress.value() == 6 and train.progress.maximum() == 6
    assert train.session.history.series["loss"][0] == [1, 2, 3, 4, 5, 6]
    assert train.train_button.isEnabled() and not train.stop_button.isEnabled()
    preview = viewer.layers["vol preview"]
    index = preview.metadata["preview_index"]
    assert preview.data.shape == (1, 40, 36) and preview.data.dtype == np.uint8
    assert preview.translate[0] == index and preview.metadata["preview_iteration"] == 6

    n_layers = len(viewer.layers)
    for _ in range(2):  # re-running updates the layers in place
        assert review.predict()
        wait_idle(qtbot, review)
    pred, conf = viewer.layers["vol prediction"], viewer.layers["vol confidence"]
    assert len(viewer.layers) == n_layers + 2
    assert pred.data.shape == truth.shape and pred.data.dtype == np.uint8
    assert pred.data.max() < bundle.num_classes
    assert conf.data.dtype == np.float32 and conf.data.shape == truth.shape
    assert conf.data.min() >= 1 / bundle.num_classes - 1e-6 and conf.data.max() <= 1 + 1e-6
    assert tuple(conf.contrast_limits) == (0.0, 1.0)
    assert pred.metadata["semiseg_output"]
    # shown on top, in the prediction colours, with its model and meaning in the metadata
    assert pred.visible and viewer.layers[-1] is pred
    assert pred.metadata["semiseg_model"]["iteration"] == 6 and not pred.metadata["stale"]
    assert "probability of the predicted class" in conf.metadata["description"]
    assert "confidence" in review.legend.text() and "prediction" in review.legend.text()
    # status tells the truth after the run: no "training…" left in the review dock
    assert "finished" in train.status.text() and "done" in train.progress.format()
    assert review.status.text().startswith("predicted with supervised at iteration 6")
    assert review.next_button.isEnabled() and review.export_button.isEnabled()


def test_pause_resume_stop_then_close_the_dock_mid_run(docks, qtbot):
    check_pause_resume_stop_mid_run(docks, qtbot)
    check_closing_the_dock_stops_the_worker(docks, qtbot)


def check_pause_resume_stop_mid_run(docks, qtbot):
    viewer, train, _, _ = docks
    tiny(train, iterations=100_000, preview_seconds=0)
    assert train.start_training()
    qtbot.waitUntil(lambda: len(train.session.history) >= 2, timeout=TIMEOUT)
    train.toggle_pause()
    assert train.pause_button.text() == "Resume" and train.job.control.paused
    qtbot.wait(300)
    seen = len(train.session.history)
    qtbot.wait(300)
    assert len(train.session.history) <= seen + 1  # at most the iteration in flight
    train.toggle_pause()
    qtbot.waitUntil(lambda: len(train.session.history) > seen + 1, timeout=TIMEOUT)
    train.stop()
    wait_idle(qtbot, train)
    bundle = train.session.bundle
    assert 0 < bundle.iteration < 100_000
    assert "stopped" in train.status.text() and "stopped" in train.progress.format()
    review = next(w for w in viewer.window._qt_window.findChildren(ReviewDock))
    assert review.status.text().startswith("stopped: supervised at iteration")
    saved = load_model(train.session.run_dir)  # a valid checkpoint at the stop
    assert saved.iteration == bundle.iteration
    assert train.train_button.isEnabled()
    viewer.add_points([[1, 2, 3]], name="still usable")
    viewer.dims.set_point(0, 5)
    assert "still usable" in viewer.layers


def check_training_error_is_notified_and_controls_come_back(docks, qtbot, errors, monkeypatch):
    _, train, _, _ = docks
    monkeypatch.setattr(train, "_make_job", train._make_job)  # undone after the test
    in_child(train, hooks.nan_loss)
    tiny(train)
    assert train.start_training()
    wait_idle(qtbot, train)
    assert errors and "NaN" in errors[-1]
    assert train.train_button.isEnabled() and train.status.text().startswith("error")
    _, _, review, _ = docks
    assert review.status.text().startswith("training failed: training diverged")
    assert "failed" in train.progress.format()

    in_child(train, hooks.fail_step)
    assert train.start_training()
    wait_idle(qtbot, train)
    assert errors[-1].startswith("unexpected ValueError: synthetic failure")
    assert train.train_button.isEnabled()


def check_closing_the_dock_stops_the_worker(docks, qtbot):
    viewer, train, _, _ = docks
    tiny(train, iterations=100_000, preview_seconds=0)
    assert train.start_training()
    job = train.job
    qtbot.waitUntil(lambda: len(train.session.history) >= 1, timeout=TIMEOUT)
    viewer.window.remove_dock_widget(train)
    assert job.finished.is_set() and job.control.stop_requested
    assert load_model(train.session.run_dir).iteration > 0
    assert train.session.busy == ""


def check_review_next_accept_continue(docks, qtbot):
    viewer, train, review, _ = docks
    # the measured default (stop 38): evenly spaced picks while fewer than 5 slices are labeled
    assert review.strategy_combo.currentText() == "strided-then-uncertainty-distance"
    review.strategy_combo.setCurrentText("strided")
    # strided: the middle of the largest gap (9 -> the predicted structure's last slice, or
    # 2 -> 6 -> 9), never a labeled slice
    ranking, source = review.review_ranking()
    assert source == "the predicted structure" and not set(LABELED) & set(ranking)
    assert len(ranking) == len(set(ranking)) == 12 - len(LABELED)
    review.strategy_combo.setCurrentText("uncertainty")
    # every slice ties (a model that predicts only background): no "highest" claimed
    flat = viewer.add_image(np.zeros((12, 40, 36), np.float32), name="vol discrepancy")
    assert review.next_slice() is not None
    assert "has not learned enough yet after 6 iterations" in review.review_info.text()
    assert "highest" not in review.review_info.text()
    viewer.layers.remove(flat)
    review._visited = set()
    # A known discrepancy: slice 2 is labeled (skipped), then 7, then 4.
    disc = np.zeros((12, 40, 36), np.float32)
    disc[2], disc[7], disc[4] = 0.9, 0.6, 0.3
    viewer.add_image(disc, name="vol discrepancy")
    assert review.next_slice() == 7
    assert train.session.preview_index == 7  # the viewer moved there
    assert review.next_slice() == 4
    labels = viewer.layers["labels"]
    before = labels.data.copy()
    pred = viewer.layers["vol prediction"]
    pred.data[4] = 0
    pred.data[4, 10:20, 10:20] = 2  # the "correction"
    assert review.accept_slice() == 4
    np.testing.assert_array_equal(labels.data[4], pred.data[4])
    changed = np.flatnonzero(np.any(labels.data != before, axis=(1, 2)))
    assert changed.tolist() == [4]
    assert train.session.labeled(labels.data, 0) == [2, 4, 6, 9]
    assert "4 labeled" in train.data_info.text()
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
    labels.redo()

    bundle = train.session.bundle
    done = bundle.iteration
    start = {k: v.clone() for k, v in bundle.method.net.state_dict().items()}
    record = train.session.run_dir / "first_step.pt"
    make_job = train._make_job
    in_child(train, partial(hooks.record_first_step, str(record)))
    review.continue_iterations.setValue(2)
    try:
        assert review.continue_training()
        wait_idle(qtbot, train)
    finally:
        train._make_job = make_job
    again = train.session.bundle
    assert again.iteration == done + 2 and again.method.config == bundle.method.config
    # issue 22: the continued model is a new run that records its parent; the model from
    # before the correction is still there, untouched
    parent_dir = record.parent
    assert train.session.run_dir != parent_dir
    assert again.info["parent_run"] == str(parent_dir)
    assert load_model(parent_dir).iteration == done
    labels_text = [train.runs_list.item(i).text() for i in range(train.runs_list.count())]
    assert any("continued from" in t for t in labels_text)
    first_step = torch.load(record, weights_only=True)
    assert first_step["it"] == done and first_step["labeled"] == [2, 4, 6, 9]
    for k, v in start.items():
        assert torch.equal(first_step["weights"][k], v), k  # started from the current weights
    check_layers_stale_after_continue_and_train_keeps_the_previous_model(docks, qtbot)


def check_layers_stale_after_continue_and_train_keeps_the_previous_model(docks, qtbot):
    viewer, train, review, _ = docks
    pred = viewer.layers["vol prediction"]
    tuned = train.session.bundle
    # the prediction layers still show the iteration before "Continue training": said so
    assert pred.metadata["stale"] and viewer.layers["vol confidence"].metadata["stale"]
    assert "out of date" in review.review_info.text()
    assert f"now supervised at iteration {tuned.iteration}" in review.review_info.text()
    tuned_dir = train.session.run_dir
    weights = {k: v.clone() for k, v in tuned.method.net.state_dict().items()}
    # Train (from scratch) after the review: the fine-tuned model stays retrievable
    train_now(qtbot, train, iterations=2, preview_seconds=0)
    assert train.session.run_dir != tuned_dir and train.session.bundle.iteration == 2
    runs = {r.path: r for r in train.session.runs()}
    assert runs[tuned_dir].iteration == tuned.iteration and runs[tuned_dir].method == "supervised"
    labels = [train.runs_list.item(i).text() for i in range(train.runs_list.count())]
    assert any(f"{tuned.iteration} iterations" in t for t in labels)
    assert any("(current)" in t and "2 iterations" in t for t in labels)
    back = train.use_selected_run(tuned_dir)
    assert back is not None and train.session.bundle is back
    assert back.iteration == tuned.iteration and train.session.run_dir == tuned_dir
    for k, v in weights.items():
        assert torch.equal(back.method.net.state_dict()[k], v), k


def test_two_network_method_discrepancy(docks, qtbot):
    two = [m for m in ("crossmatch", "dfcps", "sdcl") if m in method_names()]
    if not two:
        pytest.skip("no two-network method registered yet")
    viewer, train, review, truth = docks
    name = two[0]
    train_now(qtbot, train, method=name, iterations=2, preview_seconds=0)
    assert review.predict()
    wait_idle(qtbot, review)
    disc = viewer.layers["vol discrepancy"]
    assert disc.data.dtype == np.float32 and disc.data.shape == truth.shape
    assert disc.data.min() >= 0 and np.isfinite(disc.data).all()
    if "pseudo" in get_method(name).map_names:
        pseudo = viewer.layers["vol pseudo-labels"]
        assert (
            pseudo.data.dtype == np.uint8 and pseudo.data.max() < train.session.bundle.num_classes
        )
    means = disc.data.mean(axis=(1, 2))
    means[list(LABELED)] = -1
    review.strategy_combo.setCurrentText("uncertainty")
    assert review.next_slice() == int(np.argmax(means))
    assert "discrepancy" in review.review_info.text()


def test_next_slice_ranks_as_semiseg_suggest_for_every_strategy(docks, qtbot, tmp_path, capsys):
    """Issue 20: the dock's Next slice and ``semiseg suggest`` (same model, image and
    labels) give the same ranking, whichever strategy the box beside Next slice says."""
    import json

    import nibabel as nib

    from napari_semiseg.cli import main
    from src_models.suggest import STRATEGIES

    viewer, train, review, _ = docks
    train_now(qtbot, train, iterations=6, preview_seconds=0)
    assert review.predict()
    wait_idle(qtbot, review)
    paths = {}
    for name in ("vol", "labels"):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(viewer.layers[name].data), np.eye(4)), paths[name])
    for strategy in STRATEGIES:
        review.strategy_combo.setCurrentText(strategy)
        ranking, _ = review.review_ranking()
        capsys.readouterr()
        args = ["suggest", "--model", train.session.run_dir, "--image", paths["vol"], "-n", 12,
                "--labels", paths["labels"], "--strategy", strategy, "--json"]  # fmt: skip
        assert main([str(a) for a in args]) == 0
        cli = [r["slice"] for r in json.loads(capsys.readouterr().out)["suggestions"]]
        assert ranking == cli, strategy
        assert len(ranking) == 12 - len(LABELED) and not set(LABELED) & set(ranking)
        # Next slice goes to the first of them and says why, in the strategy's words
        review._visited = set()
        assert review.next_slice() == ranking[0]
        assert review.review_info.text().startswith(f"slice {ranking[0]}")
        text = review.review_info.text()
        if strategy.startswith("strided"):  # fewer than 5 labeled: an evenly spaced first pick
            assert strategy in text and "visited so far" in text, text


def test_a_new_models_prediction_removes_the_old_models_maps(docks, qtbot):
    """Issue 22: DFCPS's discrepancy must not steer the review of a supervised model."""
    viewer, train, review, _ = docks
    train_now(qtbot, train, method="dfcps", iterations=2, preview_seconds=0)
    assert review.predict()
    wait_idle(qtbot, review)
    assert "vol discrepancy" in viewer.layers and "vol pseudo-labels" in viewer.layers
    train_now(qtbot, train, method="supervised", iterations=2, preview_seconds=0)
    for strategy in ("strided", "uncertainty"):  # the old prediction and map: another model
        review.strategy_combo.setCurrentText(strategy)
        with pytest.raises(SemisegError, match="Predict volume"):
            review.review_ranking()
    assert review.predict()
    wait_idle(qtbot, review)
    assert "vol discrepancy" not in viewer.layers and "vol pseudo-labels" not in viewer.layers
    assert "vol confidence" in viewer.layers and "vol prediction" in viewer.layers
    assert "discrepancy" not in review.legend.text()
    _, source = review.review_ranking()
    assert source == "1 - confidence"


def test_predict_volume_smooths_across_slices_by_the_layers_scale(docks, qtbot, monkeypatch):
    """Slices 3x as thick as their pixels: a third of a slice, as ``semiseg predict``."""
    import napari_semiseg._qt.review_dock as review_dock

    viewer, train, review, _ = docks
    train_now(qtbot, train, iterations=2, preview_seconds=0)
    seen = []

    def recording(*args, **options):
        seen.append(options["smoothing"])
        return original(*args, **options)

    original = review_dock.predict_for_display
    monkeypatch.setattr(review_dock, "predict_for_display", recording)
    for scale, sigma in (((1.0, 1.0, 1.0), 1.0), ((3.0, 1.0, 1.0), 1 / 3)):
        viewer.layers["vol"].scale = scale
        assert review.predict()
        wait_idle(qtbot, review)
        assert seen[-1] == pytest.approx(sigma)
    assert "vol prediction" in viewer.layers


def test_region_correction_labels_only_the_painted_voxels_and_trains_on_them(docks, qtbot, errors):
    """Issue 20: with 'only what I painted', Accept slice copies the repainted voxels and
    leaves the rest of the slice unannotated (255, the ignore label the training reads)."""
    from napari_semiseg._qt.review_dock import REGION_IGNORE

    viewer, train, review, _ = docks
    train_now(qtbot, train, iterations=2, preview_seconds=0)
    assert review.predict()
    wait_idle(qtbot, review)
    labels, pred = viewer.layers["labels"], viewer.layers["vol prediction"]
    before = labels.data.copy()
    review.region_check.setChecked(True)
    # nothing repainted yet: refused, nothing changes
    assert review.accept_slice(4) is None and "nothing repainted" in errors[-1]
    np.testing.assert_array_equal(labels.data, before)
    model = pred.data[4].copy()
    pred.data[4, 10:14, 10:15] = np.where(model[10:14, 10:15] == 1, 2, 1)  # 20 voxels repainted
    assert review.accept_slice(4) == 4
    painted = labels.data[4] != REGION_IGNORE
    assert painted.sum() == 20 and painted[10:14, 10:15].all()
    np.testing.assert_array_equal(labels.data[4][painted], pred.data[4][painted])
    assert "20 painted voxels of slice 4" in review.review_info.text()
    assert train.session.ignore_label == REGION_IGNORE
    assert train.session.labeled(labels.data, 0) == [2, 4, 6, 9]
    assert "255 = unannotated" in train.data_info.text()
    # continuing trains on them: the training process reads 255 as unannotated
    done = train.session.bundle.iteration
    assert train.continue_training(2)
    wait_idle(qtbot, train)
    again = train.session.bundle
    assert again.iteration == done + 2 and again.info["ignore_label"] == REGION_IGNORE
    assert again.info["label_values"] == [0, 1, 2] and not errors[1:]


def check_export_save_and_cli_parity(docks, qtbot, tmp_path):
    import nibabel as nib

    from napari_semiseg.io import read_volume, write_volume

    viewer, train, review, _ = docks
    image = viewer.layers["vol"]
    assert review.predict()
    wait_idle(qtbot, review)
    pred = viewer.layers["vol prediction"].data.copy()
    assert review.export_to(tmp_path / "out", ".nii.gz", maps=True)
    qtbot.waitUntil(lambda: review.export_worker is None, timeout=TIMEOUT)
    mask, meta = read_volume(tmp_path / "out" / "vol_prediction.nii.gz")
    np.testing.assert_array_equal(mask, pred)
    conf = nib.load(tmp_path / "out" / "vol_prediction_confidence.nii.gz")
    np.testing.assert_allclose(np.asarray(conf.dataobj), viewer.layers["vol confidence"].data)
    assert np.allclose(meta.affine, np.eye(4))

    model_dir = train.save_model_to(tmp_path / "model")
    assert model_dir is not None
    loaded = load_model(model_dir)
    # Predict volume fuses the model with the propagation of the labels, as the CLI's --labels
    from napari_semiseg._predict import predict_layers

    sparse_labels = np.asarray(viewer.layers["labels"].data)
    labeled = train.session.labeled(sparse_labels, 0)
    fused = predict_layers(loaded, image.data, labels=sparse_labels, labeled=labeled).labels
    np.testing.assert_array_equal(fused, pred)
    cli = pytest.importorskip("napari_semiseg.cli")
    vol = write_volume(tmp_path / "vol.nii.gz", image.data)
    lbl = write_volume(tmp_path / "lbl.nii.gz", sparse_labels)
    out = tmp_path / "cli_pred.nii.gz"
    assert cli.main(
        [
            "predict",
            "--model",
            str(model_dir),
            "--image",
            str(vol),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--labels",
            str(lbl),
        ]
    ) in (0, None)
    np.testing.assert_array_equal(read_volume(out)[0], pred)

    # loading the model back into the dock shows its method and parameters
    train.method_combo.setCurrentText(method_names()[-1])
    assert train.load_model_from(model_dir) is not None
    assert train.method_combo.currentText() == "supervised"
    assert train.params.values()["channels"].replace(" ", "") == "4,8,16,32,64"
    with pytest.raises(SemisegError):
        load_model(tmp_path / "nowhere")


def test_closing_the_viewer_mid_run_stops_the_worker(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    image, truth = synthetic_volume()
    labels = np.zeros_like(truth)
    labels[list(LABELED)] = truth[list(LABELED)]
    viewer.add_image(image, name="vol")
    viewer.add_labels(labels, name="labels")
    train = TrainingDock(viewer)
    train.session.run_root = tmp_path
    viewer.window.add_dock_widget(train, name="Training")
    tiny(train, iterations=100_000, preview_seconds=0)
    assert train.start_training()
    job = train.job
    qtbot.waitUntil(lambda: len(train.session.history) >= 1, timeout=TIMEOUT)
    assert train._window_filtered is not None  # the dock watches the main window
    viewer.close()
    assert job.control.stop_requested and job.finished.is_set()
    assert 0 < load_model(train.session.run_dir).iteration < 100_000


def test_the_live_preview_lands_on_the_viewed_slice_in_its_own_colours(
    make_napari_viewer, qtbot, tmp_path
):
    """An image whose world coordinates are shifted (a NIfTI origin, as the sample's): the
    preview predicts and shows the slice on screen from the first preview on."""
    from napari_semiseg._qt.layers import go_to_slice
    from napari_semiseg._qt.widgets import PREDICTION_COLORS

    viewer = make_napari_viewer()
    image, truth = synthetic_volume()
    labels = np.zeros_like(truth)
    labels[list(LABELED)] = truth[list(LABELED)]
    viewer.add_image(image, name="vol", translate=(1, 2, 3))
    viewer.add_labels(labels, name="labels", translate=(1, 2, 3))
    go_to_slice(viewer, viewer.layers["vol"], 0, 3)  # not the middle slice (6)
    train = TrainingDock(viewer)
    train.session.run_root = tmp_path / "runs"
    viewer.window.add_dock_widget(train, name="Training")
    try:
        assert train.session.preview_index == 3  # known before any slider move
        train_now(qtbot, train, iterations=2, preview_seconds=0.1)
        preview = viewer.layers["vol preview"]
        assert preview.metadata["preview_index"] == 3
        assert preview.metadata["preview_iteration"] == 2
        assert preview.translate[0] == 1 + 3  # drawn on the slice on screen
        assert viewer.dims.current_step[0] == 3
        color = preview.colormap.color_dict[1]
        assert np.allclose(color[:3], np.array(_rgb(PREDICTION_COLORS[0])))
        assert not np.allclose(viewer.layers["labels"].get_color(1)[:3], color[:3])
    finally:
        train.shutdown()


def _rgb(hex_color: str) -> list[float]:
    return [int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)]


def use_growing_disc(viewer, train: TrainingDock) -> np.ndarray:
    """Replace the sparse labels by a disc labeled on slices 2 and 9 only."""
    labels = growing_disc()
    viewer.layers["labels"].data = labels.copy()
    train.refresh_data_info()
    assert train.session.labeled(labels, train.axis_combo.currentIndex()) == [2, 9]
    return labels


def test_train_shows_the_interpolation_before_the_first_training_event(docks, qtbot, tmp_path):
    """The first training step (in the child) blocks until the test has seen the
    interpolation layer, and the dock's first training update already finds it there."""
    viewer, train, _, _ = docks
    labels = use_growing_disc(viewer, train)
    # the interpolation at once, then the propagation over the image (both before training)
    expected = propagate_volume(viewer.layers["vol"].data, labels, [2, 9], 0, 2)
    gate, reached = tmp_path / "gate", tmp_path / "reached"
    in_child(train, partial(hooks.gate_first_step, str(reached), str(gate)))
    at_first_update: list[np.ndarray | None] = []
    on_update = train._on_update

    def spy(update):
        if isinstance(update, TrainingUpdate) and not at_first_update:
            layer = viewer.layers[NO_TRAINING_LAYER] if NO_TRAINING_LAYER in viewer.layers else None
            at_first_update.append(None if layer is None else np.array(layer.data))
        on_update(update)

    train._on_update = spy  # connected by start_training
    tiny(train, iterations=2, preview_seconds=0)
    try:
        assert train.start_training()
        qtbot.waitUntil(lambda: NO_TRAINING_LAYER in viewer.layers, timeout=TIMEOUT)
        qtbot.waitUntil(reached.exists, timeout=TIMEOUT)
        qtbot.wait(200)  # let any queued event reach the GUI
        # training is held in its first step: no training event can have been shown
        assert not at_first_update and len(train.session.history) == 0
        assert train.progress.value() <= 0
        layer = viewer.layers[NO_TRAINING_LAYER]
        qtbot.waitUntil(lambda: layer.metadata.get("kind") == "propagation", timeout=TIMEOUT)
        np.testing.assert_array_equal(layer.data, expected)
        assert layer.opacity == pytest.approx(0.5) and layer.metadata["semiseg_output"]
        assert "propagated 2 labeled slices" in train.status.text()
        assert "starting the training process" in train.status.text()
    finally:
        gate.touch()
    wait_idle(qtbot, train)
    assert train.session.bundle is not None and train.session.bundle.iteration == 2
    assert len(at_first_update) == 1 and at_first_update[0] is not None
    np.testing.assert_array_equal(at_first_update[0], expected)
    np.testing.assert_array_equal(viewer.layers["labels"].data, labels)  # never overwritten


def test_interpolate_button_fills_between_slices_without_training(docks, qtbot, notes, errors):
    viewer, train, _, _ = docks
    labels = use_growing_disc(viewer, train)
    user_layer = viewer.layers["labels"]
    n_layers = len(viewer.layers)

    def click() -> None:
        train.interpolate_button.click()
        qtbot.waitUntil(lambda: train.interpolation_worker is None, timeout=TIMEOUT)

    click()
    layer = viewer.layers[NO_TRAINING_LAYER]
    # the interpolation came first; the propagation over the image replaced it
    image = viewer.layers["vol"].data
    np.testing.assert_array_equal(layer.data, propagate_volume(image, labels, [2, 9], 0, 2))
    assert layer.metadata["kind"] == "propagation" and "along the image" in train.status.text()
    assert layer.opacity == pytest.approx(0.5) and len(viewer.layers) == n_layers + 1
    # no training: no worker, model, loss history, preview or run folder
    assert train.worker is None and train.session.bundle is None
    assert len(train.session.history) == 0 and train.session.run_dir is None
    assert "vol preview" not in viewer.layers
    assert viewer.layers["labels"] is user_layer
    np.testing.assert_array_equal(user_layer.data, labels)
    assert train.labels_combo.currentText() == "labels"  # the output did not take the picker
    assert train.interpolate_button.isEnabled()

    # a third labeled slice: the same layer is updated in place
    painted = labels.copy()
    painted[5] = growing_disc(first=5, last=5)[5]
    user_layer.data = painted.copy()
    click()
    assert viewer.layers[NO_TRAINING_LAYER] is layer and len(viewer.layers) == n_layers + 1
    np.testing.assert_array_equal(layer.data, propagate_volume(image, painted, [2, 5, 9], 0, 2))

    # one labeled slice: a message instead of a layer of the labeled slice alone
    before = np.array(layer.data)
    one = np.zeros_like(labels)
    one[2] = labels[2]
    user_layer.data = one
    assert not train.interpolate()
    assert train.interpolation_worker is None
    assert any("nothing to interpolate" in m for _, m in notes)
    assert "paint another slice" in train.status.text()
    np.testing.assert_array_equal(layer.data, before)
    assert not errors

    # a labels layer of the user's named "interpolation" is never overwritten
    user_layer.data = labels.copy()
    viewer.layers.remove(NO_TRAINING_LAYER)
    mine = viewer.add_labels(np.zeros_like(labels), name=NO_TRAINING_LAYER)
    click()
    assert viewer.layers[NO_TRAINING_LAYER] is mine and not mine.data.any()
    assert any("holds your labels" in m for _, m in notes)

    # bad input: a notification, no traceback, no thread
    viewer.add_labels(np.zeros((40, 36), np.uint8), name="flat")
    train.labels_combo.set_layer("flat")
    assert not train.interpolate()
    assert errors and "3D" in errors[-1] and train.interpolation_worker is None


def test_ends_labeled_box_stops_the_preview_and_the_run_at_the_outer_slices(docks, qtbot):
    viewer, train, _, _ = docks
    labels = use_growing_disc(viewer, train)
    image = viewer.layers["vol"].data
    assert not train.ends_labeled.isChecked() and not train.session.ends_labeled
    train.ends_labeled.setChecked(True)
    assert train.session.ends_labeled and train.request().ends_labeled
    train.interpolate_button.click()
    qtbot.waitUntil(lambda: train.interpolation_worker is None, timeout=TIMEOUT)
    shown = viewer.layers[NO_TRAINING_LAYER].data
    np.testing.assert_array_equal(shown, propagate_volume(image, labels, [2, 9], 0, 2, extend=0))
    assert not shown[:2].any() and not shown[10:].any()
    # the run trains with it and the model keeps it (a later fused prediction stops there too)
    train_now(qtbot, train)
    assert train.session.bundle.info["ends_labeled"] is True
    train.ends_labeled.setChecked(False)
    train._show_model(train.session.bundle)  # a model loaded again: the box follows it
    assert train.ends_labeled.isChecked() and train.session.ends_labeled


def test_thick_slices_walk_with_the_gaps_counted_in_the_layers_pixels(docks, qtbot):
    """A volume whose slices are 4 of its pixels apart (the layers' scale): the preview and
    the training run count the gaps between labeled slices in pixels, as the CLI does with
    the file's spacing."""
    viewer, train, _, _ = docks
    labels = use_growing_disc(viewer, train)
    for name in ("vol", "labels"):
        viewer.layers[name].scale = (4.0, 1.0, 1.0)
    image = viewer.layers["vol"].data
    train.interpolate_button.click()
    qtbot.waitUntil(lambda: train.interpolation_worker is None, timeout=TIMEOUT)
    shown = viewer.layers[NO_TRAINING_LAYER].data
    thick = propagate_volume(image, labels, [2, 9], 0, 2, spacing=(4.0, 1.0, 1.0))
    np.testing.assert_array_equal(shown, thick)
    assert not np.array_equal(thick, propagate_volume(image, labels, [2, 9], 0, 2))
    job = train._make_job(resume=False, iterations=None)
    assert job.info["spacing"] == [4.0, 1.0, 1.0]  # the training process's volume's ratio


def test_a_killed_training_process_leaves_the_viewer_and_its_labels_working(docks, qtbot, errors):
    """SIGKILL the training process mid-run (what the out-of-memory killer does; a native
    crash ends it the same way): the viewer lives on, the error names the signal, the
    controls come back, the last checkpoint becomes the model and the painted labels are in
    the run folder."""
    viewer, train, review, truth = docks
    painted = np.array(viewer.layers["labels"].data)
    tiny(train, iterations=100_000, preview_seconds=0)
    in_child(train, partial(hooks.slow_steps, 0.05), checkpoint_every=2)
    assert train.start_training()
    job = train.job
    qtbot.waitUntil(lambda: len(train.session.history) >= 3, timeout=TIMEOUT)
    os.kill(job.pid, signal.SIGKILL)
    wait_idle(qtbot, train)
    assert job.finished.is_set()
    assert errors and "the training process died (signal 9 SIGKILL" in errors[-1]
    assert train.status.text().startswith("error: the training process died")
    assert train.train_button.isEnabled() and train.load_button.isEnabled()
    assert not train.stop_button.isEnabled() and not train.pause_button.isEnabled()
    viewer.add_points([[1, 2, 3]], name="still usable")
    viewer.dims.set_point(0, 5)
    assert "still usable" in viewer.layers
    run_dir = train.session.run_dir
    saved = load_model(run_dir)
    # the notification is one short line; the dock's status line keeps the whole message
    assert saved.iteration >= 2 and f"iteration {saved.iteration}" in train.status.text()
    kept = train.session.bundle
    assert kept is not None and kept.iteration == saved.iteration
    for key, value in saved.method.net.state_dict().items():
        assert torch.equal(kept.method.net.state_dict()[key], value), key
    np.testing.assert_array_equal(np.load(run_dir / "labels.npy"), painted)
    # the controls work: predict with the kept model, then continue training it
    assert review.predict()
    wait_idle(qtbot, review)
    assert viewer.layers["vol prediction"].data.shape == truth.shape
    assert train.continue_training(2)
    wait_idle(qtbot, train)
    assert train.session.bundle.iteration == saved.iteration + 2
    assert "finished" in train.status.text()


# -- issue 22, items 5-8 --------------------------------------------------------------------
def test_labels_of_another_shape_are_named_in_the_data_tab(docks, qtbot):
    # item 5: said as the pair is picked, not seconds after Train
    viewer, train, _, _ = docks
    viewer.add_labels(np.zeros((4, 10, 10), np.uint8), name="other")
    train.labels_combo.set_layer("other")
    train.refresh_data_info()
    assert "has shape (4, 10, 10)" in train.data_info.text()
    assert "pick the labels painted on this image" in train.data_info.text()
    train.labels_combo.set_layer("labels")
    train.refresh_data_info()
    assert train.data_info.text().startswith(f"{len(LABELED)} labeled slices of")


def test_texts_say_what_is_true(docks, qtbot):
    # item 6: one labeled slice; a status cut at a word, never mid-line; the legend of a
    # two-network method's discrepancy says it holds 0 or 1
    from napari_semiseg._qt.review_dock import map_meaning
    from napari_semiseg._qt.widgets import StatusLine

    viewer, train, _, truth = docks
    one = np.zeros_like(truth)
    one[3] = truth[3]
    viewer.layers["labels"].data = one
    train.refresh_data_info()
    assert train.data_info.text().startswith("1 labeled slice of")
    line = StatusLine()
    line.resize(120, line.height())
    text = " ".join(f"word{i}" for i in range(80))
    line.setText(text)
    assert line.text() == text and line.toolTip() == text
    assert line.text_shown().endswith(" …") and len(line.text_shown()) < len(text)
    assert "1 where the two networks predict different classes" in map_meaning(
        "discrepancy", "dfcps", 3
    )
    assert "0 (agree) to 1" in map_meaning("discrepancy", "diffusion", 3)
    assert map_meaning("confidence", "supervised", 4).startswith(
        "probability of the predicted class: 0.25"
    )


def test_a_new_training_leaves_no_result_of_other_labels_or_models_in_sight(docks, qtbot):
    # item 7: the previous labels' no-training result goes; the previous model's
    # prediction is hidden and said to be from before the training
    viewer, train, review, truth = docks
    train_now(qtbot, train)
    assert review.predict()
    wait_idle(qtbot, review)
    assert viewer.layers["vol prediction"].visible
    assert "no-training result" in viewer.layers
    other = np.zeros_like(truth)
    other[[2, 9]] = truth[[2, 9]]
    viewer.add_labels(other, name="other labels")
    train.labels_combo.set_layer("other labels")
    tiny(train, iterations=200)
    assert train.start_training()
    assert not train.settings_toggle.isChecked()  # Train folds the settings
    qtbot.waitUntil(
        lambda: "from before this training" in review.review_info.text(), timeout=TIMEOUT
    )
    assert not viewer.layers["vol prediction"].visible
    layer = viewer.layers["no-training result"] if "no-training result" in viewer.layers else None
    assert layer is None or layer.metadata.get("source_labels") == "other labels"
    train.stop()
    wait_idle(qtbot, train)


def test_disabled_buttons_say_why(docks, qtbot):
    # item 8
    _, _, review, _ = docks
    assert not review.next_button.isEnabled()
    assert "Disabled: Predict volume first" in review.next_button.toolTip()
    assert "Disabled: train or load a model first" in review.predict_button.toolTip()
    assert "Disabled: Predict volume first" in review.export_button.toolTip()
