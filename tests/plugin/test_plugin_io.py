"""Manifest, discovery, reader, writer and sample data of the napari plugin."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import npe2  # noqa: E402
from helpers import ROOT  # noqa: E402

from napari_semiseg._reader import napari_get_reader  # noqa: E402
from napari_semiseg._sample_data import ANNOTATED_SLICES, make_sample_data  # noqa: E402
from napari_semiseg._writer import write_image, write_labels  # noqa: E402
from napari_semiseg.io import read_volume  # noqa: E402
from src_models.methods.base import method_names  # noqa: E402

MANIFEST = ROOT / "napari_semiseg" / "napari.yaml"
AFFINE = np.array(
    [[0.5, 0, 0, 10.0], [0, 0.8, 0, -5.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1]], dtype=np.float64
)


def test_manifest_validates_and_is_discovered():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()
    pm = npe2.PluginManager.instance()
    pm.discover()
    found = pm.get_manifest("napari-semiseg")
    contrib = found.contributions
    assert {w.display_name for w in contrib.widgets} == {"Training", "Review and correct"}
    assert {"*.nii", "*.nii.gz", "*.zarr"} <= set(contrib.readers[0].filename_patterns)
    label_writer = next(w for w in contrib.writers if "labels" in w.layer_types)
    assert {".nii.gz", ".zarr", ".tif"} <= set(label_writer.filename_extensions)
    assert [s.key for s in contrib.sample_data] == ["hippocampus"]


def test_sample_data_and_docks_from_the_plugins_menu(make_napari_viewer):
    from napari_semiseg._qt.review_dock import ReviewDock
    from napari_semiseg._qt.training_dock import TrainingDock

    viewer = make_napari_viewer()
    check_sample_data_has_three_annotated_slices(viewer)
    _, train = viewer.window.add_plugin_dock_widget("napari-semiseg", "Training")
    _, review = viewer.window.add_plugin_dock_widget("napari-semiseg", "Review and correct")
    assert isinstance(train, TrainingDock) and isinstance(review, ReviewDock)
    assert train.session is review.session
    assert [train.method_combo.itemText(i) for i in range(train.method_combo.count())] == [
        "auto",  # the default: the method measured best at the budget
        *method_names(),
    ]
    # the docks pick the sample's image and its sparse labels, and see the 3 slices
    assert train.image_combo.layer().name == "hippocampus_003"
    train.labels_combo.set_layer("labels")
    assert train.axis_combo.currentIndex() == 0
    assert train.data_info.text().startswith("3 labeled slices of 34 (axis 0)")
    # nothing forces a dock wider than napari's dock column (content was ~404 px wide)
    for dock in (train, review):
        assert dock.minimumSizeHint().width() <= 300, type(dock).__name__
    assert review.minimumSizeHint().height() < 150  # it scrolls: the training dock keeps
    # its Run section (buttons, progress, loss curve) in sight
    assert "3 classes" in train.data_info.text()
    train.shutdown()
    review.shutdown()


def check_sample_data_has_three_annotated_slices(viewer):
    viewer.open_sample("napari-semiseg", "hippocampus")
    names = [layer.name for layer in viewer.layers]
    assert names == ["hippocampus_003", "ground truth", "labels"]
    image, truth, labels = (viewer.layers[n] for n in names)
    assert image.data.shape == truth.data.shape == labels.data.shape == (34, 52, 35)
    assert labels.data.dtype.kind in "iu" and set(np.unique(truth.data)) == {0, 1, 2}
    labeled = [int(s) for s in np.flatnonzero(labels.data.any(axis=(1, 2)))]
    assert labeled == list(ANNOTATED_SLICES)
    np.testing.assert_array_equal(labels.data[list(labeled)], truth.data[list(labeled)])
    assert image.metadata["affine"].shape == (4, 4)
    assert len(make_sample_data()) == 3


@pytest.fixture
def nifti_pair(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (12, 20, 16)).astype(np.float32)
    labels = np.zeros((12, 20, 16), np.uint8)
    labels[3:7, 4:10, 2:8] = 1
    labels[8, 12:18, 9:14] = 2
    labels[0, 0, 0] = 7
    img_path = tmp_path / "vol.nii.gz"
    lbl_path = tmp_path / "vol_labels.nii.gz"
    nib.Nifti1Image(image, AFFINE).to_filename(img_path)
    nib.Nifti1Image(labels, AFFINE).to_filename(lbl_path)
    return img_path, lbl_path, image, labels


def test_reader_gives_scale_translate_and_keeps_affine(nifti_pair):
    img_path, lbl_path, image, labels = nifti_pair
    reader = napari_get_reader(str(img_path))
    assert reader is not None
    ((data, kwargs, kind),) = reader(str(img_path))
    assert kind == "image" and data.shape == image.shape
    np.testing.assert_allclose(kwargs["scale"], (0.5, 0.8, 2.0))
    np.testing.assert_allclose(kwargs["translate"], (10.0, -5.0, 3.0))
    np.testing.assert_allclose(kwargs["metadata"]["affine"], AFFINE)
    ((ldata, lkwargs, lkind),) = napari_get_reader(str(lbl_path))(str(lbl_path))
    assert lkind == "labels" and ldata.dtype.kind in "iu"
    np.testing.assert_array_equal(ldata, labels)
    assert napari_get_reader("volume.png") is None
    assert napari_get_reader(str(img_path.parent / "foreign.zarr")) is None


@pytest.mark.parametrize("suffix", [".nii.gz", ".zarr", ".tif"])
def test_reader_writer_round_trip_keeps_affine_and_labels(nifti_pair, tmp_path, suffix):
    _, lbl_path, _, labels = nifti_pair
    ((data, kwargs, _),) = napari_get_reader(str(lbl_path))(str(lbl_path))
    meta = {k: v for k, v in kwargs.items() if k != "name"}
    out = tmp_path / f"out{suffix}"
    written = write_labels(str(out), data, meta)
    assert written == [str(out)]
    back, back_meta = read_volume(out)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(back_meta.affine, AFFINE)
    if suffix == ".nii.gz":
        assert np.allclose(nib.load(out).affine, AFFINE)
    if suffix == ".zarr":  # our zarr stores open again as labels, affine in the metadata
        ((zdata, zkwargs, zkind),) = napari_get_reader(str(out))(str(out))
        assert zkind == "labels"
        np.testing.assert_array_equal(zdata, labels)
        np.testing.assert_allclose(zkwargs["metadata"]["affine"], AFFINE)
        np.testing.assert_allclose(zkwargs["scale"], (0.5, 0.8, 2.0))


def test_writer_without_source_affine_uses_scale_and_translate(tmp_path):
    conf = np.linspace(0, 1, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    out = tmp_path / "conf.nii.gz"
    write_image(
        str(out), conf, {"scale": (2.0, 1.0, 0.5), "translate": (1.0, 2.0, 3.0), "metadata": {}}
    )
    img = nib.load(out)
    np.testing.assert_allclose(np.diag(img.affine)[:3], (2.0, 1.0, 0.5))
    np.testing.assert_allclose(img.affine[:3, 3], (1.0, 2.0, 3.0))
    np.testing.assert_allclose(np.asarray(img.dataobj), conf)


def _entirely_visible(widget) -> bool:
    seen = widget.visibleRegion().boundingRect()
    return (seen.width(), seen.height()) == (widget.width(), widget.height())


def test_both_docks_work_at_napari_default_window(make_napari_viewer, qtbot):
    """napari's default window on a 1280x800 screen (1089x639, issue 22), both docks
    opened as the Plugins menu does: the Run controls, the progress bar and the loss curve
    are entirely visible; with the settings folded (as Train does) every control of the
    review loop is too, no scrolling."""
    from napari_semiseg._qt.training_dock import LOSS_PLOT_MIN_HEIGHT

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1089, 639)
    viewer.open_sample("napari-semiseg", "hippocampus")
    _, train = viewer.window.add_plugin_dock_widget("napari-semiseg", "Training")
    _, review = viewer.window.add_plugin_dock_widget("napari-semiseg", "Review and correct")
    qtbot.waitUntil(lambda: train.session.docks_balanced, timeout=5000)
    qtbot.wait(100)
    run = (train.train_button, train.stop_button, train.progress, train.loss_plot)
    for widget in run:  # (the review dock shows its first lines until Train folds them)
        assert _entirely_visible(widget), widget.__class__.__name__
    train.show_settings(False)
    assert not train.tabs.isVisible() and not train.settings_toggle.isChecked()
    loop = (
        review.predict_button,
        review.next_button,
        review.accept_button,
        review.region_check,
        review.continue_button,
        review.continue_iterations,
        review.export_button,
        review.format_combo,
        review.review_info,
    )
    qtbot.waitUntil(lambda: all(_entirely_visible(w) for w in loop), timeout=5000)
    for widget in run:
        assert _entirely_visible(widget), widget
    assert train.loss_plot.height() >= LOSS_PLOT_MIN_HEIGHT
    train.settings_toggle.click()  # the user unfolds them again
    assert train.tabs.isVisible()
    train.shutdown()
    review.shutdown()
