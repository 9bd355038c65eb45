"""Image layers larger than memory in the plugin (issue 13): a dask / zarr image layer is never
converted to numpy whole; training reads it slab by slab in the child process, predictions go
to zarr stores in the run folder and are shown as lazy layers. ``io.LAZY_VOXELS`` is lowered
so tiny synthetic volumes take that path."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import zarr
from helpers import synthetic_volume

from napari_semiseg import io
from napari_semiseg._jobs import TrainingJob, TrainRequest
from napari_semiseg._layer_data import lazy_image, sampled_percentile
from napari_semiseg._predict import display_maps, predict_layers
from napari_semiseg._ranking import slice_score
from napari_semiseg._run_parent import training_events
from napari_semiseg._runs import PROCESS_LOG
from src_models.errors import SemisegError
from src_models.inference import VolumePrediction, predict_volume

TINY = {"channels": "4, 8, 16, 32, 64"}
LABELED = [2, 6, 9]


class NoWholeRead:
    """A zarr array that refuses to be converted whole (``np.asarray``) and counts reads."""

    def __init__(self, array, strict: bool = True) -> None:
        self.array, self.strict = array, strict
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, len(array.shape)
        self.chunks = array.chunks

    def __getitem__(self, index):
        part = np.asarray(self.array[index])
        whole = part.size >= int(np.prod(self.shape))
        assert not (self.strict and whole), "the whole image was read at once"
        return part

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("np.asarray of the whole image layer")


@pytest.fixture(autouse=True)
def _lazy(monkeypatch):
    monkeypatch.setattr(io, "LAZY_VOXELS", 1000)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def volume(tmp_path):
    image, truth = synthetic_volume()
    labels = np.zeros_like(truth)
    labels[LABELED] = truth[LABELED]
    store = zarr.open_array(
        str(tmp_path / "image.zarr"), mode="w", shape=image.shape, chunks=(4, 40, 36),
        dtype=image.dtype,
    )  # fmt: skip
    store[...] = image
    return image, labels, truth, zarr.open_array(str(tmp_path / "image.zarr"), mode="r")


def request(**kw) -> TrainRequest:
    kw = dict(iterations=4, batch_size=2, patch_size=32, device="cpu", preview_seconds=0) | kw
    return TrainRequest("supervised", TINY, **kw)


def run(job):
    gen, updates = training_events(job), []
    while True:
        try:
            updates.append(next(gen))
        except StopIteration as stop:
            return updates, stop.value


def test_lazy_image_only_for_large_non_numpy_data(volume, monkeypatch):
    image, _, _, arr = volume
    assert lazy_image(image) is None  # numpy: as before
    assert lazy_image(np.asarray(arr)) is None
    view = lazy_image(arr)
    assert view.shape == (1, *image.shape)
    np.testing.assert_array_equal(view[0, 3], image[3])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(view))[:, 2:5], image[None, 2:5])
    rgb = np.stack([image, image + 1, image + 2], axis=-1)
    rview = lazy_image(zarr.array(rgb, chunks=(4, 40, 36, 3)), rgb=True)
    assert rview.shape == (3, *image.shape)
    np.testing.assert_array_equal(rview[1, 4], image[4] + 1)
    np.testing.assert_array_equal(rview[:, :, 5], np.moveaxis(rgb[:, 5], -1, 0))
    monkeypatch.setattr(io, "LAZY_VOXELS", 10**9)
    assert lazy_image(arr) is None  # small lazy layers are converted as before


def test_lazy_maps_stay_lazy_and_are_scored_slab_by_slab(monkeypatch):
    rng = np.random.default_rng(0)
    conf = rng.random((12, 40, 36)).astype(np.float32)
    pseudo = rng.integers(-1, 3, (12, 40, 36)).astype(np.float32)
    lazy = VolumePrediction(zarr.array(pseudo[0] > 0), None, {})
    lazy.maps = {"confidence": zarr.array(conf, chunks=(4, 40, 36)), "pseudo": zarr.array(pseudo)}
    shown = display_maps(lazy)
    assert shown["confidence"][0] is lazy.maps["confidence"]
    ids, kind = shown["pseudo-labels"]
    assert kind == "labels" and not isinstance(ids, np.ndarray)
    np.testing.assert_array_equal(np.asarray(ids), np.where(pseudo < 0, 0, pseudo).astype(np.uint8))
    # slice_score (_ranking) and sampled_percentile (_layer_data) each look it up at home
    monkeypatch.setattr("napari_semiseg._ranking._plane_step", lambda shape, most: 5)
    monkeypatch.setattr("napari_semiseg._layer_data._plane_step", lambda shape, most: 5)
    for axis in range(3):
        np.testing.assert_allclose(
            slice_score(lazy.maps["confidence"], axis), slice_score(conf, axis), rtol=1e-6
        )
    assert 0.9 < sampled_percentile(lazy.maps["confidence"], 99.9) <= 1.0


def test_memmap_layer_pickles_by_its_file(tmp_path, volume):
    image = volume[0]
    np.save(tmp_path / "image.npy", image)
    mm = np.load(tmp_path / "image.npy", mmap_mode="r")
    data = pickle.dumps(lazy_image(mm))
    assert len(data) < image.nbytes  # the file name travels, not the voxels
    np.testing.assert_array_equal(pickle.loads(data)[0, 7], image[7])


def test_unpicklable_lazy_layer_fails_with_a_clear_message(tmp_path, volume):
    image, labels, _, arr = volume

    class Local(NoWholeRead):  # a local class cannot be pickled
        pass

    job = TrainingJob(Local(arr), labels, 0, LABELED, request(), tmp_path / "run")
    with pytest.raises(SemisegError, match="cannot be handed to the training process"):
        run(job)


def test_zarr_layer_trains_in_the_child_slab_by_slab_like_in_memory(tmp_path, volume):
    image, labels, _, arr = volume
    # (no propagation prior: a volume larger than memory trains without it)
    no_prior = request(prior_fraction=0.0)
    lazy_job = TrainingJob(NoWholeRead(arr), labels, 0, LABELED, no_prior, tmp_path / "lazy")
    _, lazy = run(lazy_job)
    assert "read slab by slab" in (tmp_path / "lazy" / PROCESS_LOG).read_text()
    eager_job = TrainingJob(image, labels, 0, LABELED, no_prior, tmp_path / "eager")
    _, eager = run(eager_job)
    assert lazy.iteration == eager.iteration == 4
    assert lazy.info["labeled_slices"] == eager.info["labeled_slices"] == LABELED
    assert lazy.num_classes == eager.num_classes
    # same labeled crops and normalisation: the supervised method trains the same weights
    weights = eager.method.net.state_dict()
    for key, value in lazy.method.net.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=1e-4, atol=1e-5, msg=key)

    # prediction streams into zarr arrays of a store in the run folder (its normalisation
    # reads a volume this small whole, like `semiseg predict`: not strict)
    store = tmp_path / "lazy" / "predictions" / "vol.zarr"
    pred = predict_layers(lazy, NoWholeRead(arr, strict=False), store=store)
    assert isinstance(pred.labels, zarr.Array) and store.is_dir()
    assert all(isinstance(m, zarr.Array) for m in pred.maps.values())
    full = predict_volume(lazy, image, maps=tuple(lazy.method.map_names))
    np.testing.assert_array_equal(pred.labels[...], full.labels)
    for name, array in full.maps.items():
        np.testing.assert_allclose(pred.maps[name][...], array, atol=1e-5)
    again = zarr.open_group(str(store), mode="r")
    np.testing.assert_array_equal(again["labels"][...], full.labels)


def test_multiscale_dask_layer_in_the_docks_trains_predicts_to_zarr_and_exports(
    make_napari_viewer, qtbot, tmp_path, volume, monkeypatch
):
    pytest.importorskip("pytestqt")
    da = pytest.importorskip("dask.array")
    from napari.utils.notifications import notification_manager
    from test_plugin_docks import tiny, wait_idle

    import napari_semiseg._predict as predict_module
    import napari_semiseg._previews as previews_module
    import napari_semiseg._run_parent as run_parent_module
    from napari_semiseg._qt.review_dock import ReviewDock
    from napari_semiseg._qt.training_dock import TrainingDock

    def no_conversion(*args, **kwargs):
        raise AssertionError("the lazy image layer was converted to numpy")

    # every module that converts a layer's data (training, propagation, prediction)
    for module in (run_parent_module, previews_module, predict_module):
        monkeypatch.setattr(module, "image_channels_first", no_conversion)
    image, labels, truth, arr = volume
    level0 = da.from_zarr(arr)
    viewer = make_napari_viewer()
    viewer.add_image([level0, level0[:, ::2, ::2]], name="vol", multiscale=True)
    viewer.add_labels(labels, name="labels")
    train, review = TrainingDock(viewer), ReviewDock(viewer)
    train.session.run_root = tmp_path / "runs"
    seen: list[str] = []
    record = lambda n: seen.append(str(n.message))  # noqa: E731
    notification_manager.notification_ready.connect(record)
    try:
        tiny(train, iterations=4, preview_seconds=0.1)
        assert train.start_training()
        assert "full-resolution level" in train.status.text()
        wait_idle(qtbot, train)
        bundle = train.session.bundle
        assert bundle is not None and bundle.iteration == 4, train.status.text()
        run_dir = train.session.run_dir
        assert "read slab by slab" in (run_dir / PROCESS_LOG).read_text()
        assert viewer.layers["vol preview"].data.shape == (1, 40, 36)

        assert review.predict()
        wait_idle(qtbot, review)
        pred, conf = viewer.layers["vol prediction"], viewer.layers["vol confidence"]
        assert isinstance(pred.data, zarr.Array) and isinstance(conf.data, zarr.Array)
        stores = list((run_dir / "predictions").glob("vol-*.zarr"))
        assert len(stores) == 1 and pred.data.shape == truth.shape
        expected = predict_volume(bundle, image, maps=("confidence",))
        np.testing.assert_array_equal(pred.data[...], expected.labels)
        np.testing.assert_allclose(conf.data[...], expected.maps["confidence"], atol=1e-5)
        assert "full-resolution level" in review.status.text()
        assert any("full-resolution level" in m for m in seen)
        assert any("slab by slab" in m for m in seen)

        # review ranks from the zarr map; export streams into zarr outputs
        assert review.next_slice() is not None
        out = tmp_path / "export"
        assert review.export_to(out, ".zarr", maps=True)
        qtbot.waitUntil(lambda: review.export_worker is None, timeout=60_000)
        written, _ = io.read_labels(out / "vol_prediction.zarr")
        np.testing.assert_array_equal(written, expected.labels)
        conf_out, _ = io.read_volume(io.map_path(out / "vol_prediction.zarr", "confidence"))
        np.testing.assert_allclose(conf_out, expected.maps["confidence"], atol=1e-5)
    finally:
        notification_manager.notification_ready.disconnect(record)
        train.shutdown()
        review.shutdown()
