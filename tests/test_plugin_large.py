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
from conftest import synthetic_volume

from napari_semiseg import io
from napari_semiseg._session import (
    PROCESS_LOG,
    TrainingJob,
    TrainRequest,
    lazy_image,
    predict_layers,
    training_events,
)
from src_models.errors import SemisegError
from src_models.inference import predict_volume

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
    lazy_job = TrainingJob(NoWholeRead(arr), labels, 0, LABELED, request(), tmp_path / "lazy")
    _, lazy = run(lazy_job)
    assert "read slab by slab" in (tmp_path / "lazy" / PROCESS_LOG).read_text()
    eager_job = TrainingJob(image, labels, 0, LABELED, request(), tmp_path / "eager")
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
