"""Volumes larger than memory: read lazily slab by slab, trained on and predicted into zarr
with the same results as in memory (the lazy threshold is lowered so tiny volumes take it)."""

import numpy as np
import pytest
import torch

from napari_semiseg import io
from napari_semiseg.cli import main
from src_models.data import SliceSampler, make_volumes
from src_models.data.lazy import ChannelsFirst, LazySlices, make_lazy_volume
from src_models.data.normalization import fit_normalization, sample_normalization


@pytest.fixture
def lazy_everything(monkeypatch):
    monkeypatch.setattr(io, "LAZY_VOXELS", 1000)


@pytest.fixture
def zarr_pair(tmp_path, tiny_volume):
    image, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[[3, 8]] = labels[[3, 8]]
    io.write_volume(tmp_path / "image.zarr", image)
    io.write_volume(tmp_path / "labels.zarr", sparse, labels=True)
    return tmp_path, image, sparse


def test_lazy_slices_equal_the_in_memory_ones_within_a_bounded_cache(zarr_pair, lazy_everything):
    root, image, sparse = zarr_pair
    arr, meta = io.open_volume(root / "image.zarr")
    assert not isinstance(arr, np.ndarray) and meta.layout == "ZYX"
    view = ChannelsFirst(arr, False)
    norm = fit_normalization(image[None])
    slices = LazySlices(view, 1, norm, cache_bytes=1)  # two slabs at most
    eager = np.moveaxis(norm.apply(image[None]), 2, 0)
    for i in range(slices.shape[0]):
        np.testing.assert_array_equal(slices[i], eager[i])
        assert len(slices._cache) <= 2
    assert slices.shape == eager.shape


def test_sampled_statistics_are_close_to_the_exact_ones(tiny_volume):
    image = tiny_volume[0][None].astype(np.float32)
    exact, sampled = fit_normalization(image), sample_normalization(image, max_voxels=4 * 40 * 36)
    assert sampled.mean[0] == pytest.approx(exact.mean[0], abs=0.3 * exact.std[0])
    assert sampled.std[0] == pytest.approx(exact.std[0], rel=0.3)


def test_lazy_sampler_is_reproducible_and_resumes(zarr_pair, lazy_everything):
    root, image, sparse = zarr_pair
    arr, _ = io.open_volume(root / "image.zarr")
    labeled = {3: sparse[3].astype(np.int64), 8: sparse[8].astype(np.int64)}

    def sampler():
        volume = make_lazy_volume(ChannelsFirst(arr, False), labeled, 0, 3)
        return SliceSampler([volume], patch_size=32, batch_size=4, seed=3)

    a, b = sampler(), sampler()
    assert a.window is not None
    for _ in range(10):
        torch.testing.assert_close(a.unlabeled().image, b.unlabeled().image)
    torch.testing.assert_close(a.labeled().image, b.labeled().image)
    state = a.state_dict()
    expected = a.unlabeled().image
    c = sampler()
    c.load_state_dict(state)
    torch.testing.assert_close(c.unlabeled().image, expected)
    # labeled crops carry the labeled slices' labels, like the in-memory volume
    vols, _ = make_volumes([image], [sparse], num_classes=3)
    assert vols[0].labeled == [3, 8] and c.volumes[0].labeled == [3, 8]


def test_cli_trains_and_predicts_a_lazy_volume_like_an_in_memory_one(
    zarr_pair, monkeypatch, capsys
):
    root, image, sparse = zarr_pair
    train = ["train", "--image", str(root / "image.zarr"), "--labels", str(root / "labels.zarr")]
    train += ["--iterations", "8", "--patch", "32", "--batch-size", "2"]
    train += ["--set", "channels=4,8,16,32,64", "--method", "dfcps"]
    monkeypatch.setattr(io, "LAZY_VOXELS", 1000)
    assert main([*train, "--out", str(root / "lazy_run")]) == 0
    assert "slab by slab" in capsys.readouterr().out
    predict = ["predict", "--model", str(root / "lazy_run"), "--image", str(root / "image.zarr")]
    assert main([*predict, "--out", str(root / "lazy.zarr"), "--maps", "confidence"]) == 0
    monkeypatch.setattr(io, "LAZY_VOXELS", 10**12)
    assert main([*predict, "--out", str(root / "eager.zarr"), "--maps", "confidence"]) == 0
    lazy, _ = io.read_labels(root / "lazy.zarr")
    eager, _ = io.read_labels(root / "eager.zarr")
    np.testing.assert_array_equal(lazy, eager)
    conf_l, _ = io.read_volume(root / "lazy_confidence.zarr")
    conf_e, _ = io.read_volume(root / "eager_confidence.zarr")
    np.testing.assert_allclose(conf_l, conf_e, atol=1e-5)
    assert lazy.shape == image.shape and (lazy > 0).any()
