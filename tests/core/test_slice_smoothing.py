"""Smoothing of the class probabilities across slices, alone and inside predict_volume."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from src_models.data import make_volumes
from src_models.errors import SemisegError
from src_models.inference import predict_volume
from src_models.slice_smoothing import (
    DEFAULT_SMOOTHING,
    TRUNCATE,
    check_smoothing,
    smooth_across_slices,
    smoothing_for_spacing,
    smoothing_halo,
)
from src_models.training.checkpoint import create_model

TINY = {"channels": "4,8,16,32,64"}


def _probabilities(shape=(2, 9, 5, 6), seed=0):
    p = np.random.default_rng(seed).random(shape).astype(np.float32)
    return p / p.sum(0, keepdims=True)


def test_smoothing_keeps_probabilities_and_pulls_an_outlier_slice_to_its_neighbours():
    p = np.zeros((2, 9, 4, 4), np.float32)
    p[0] = 1.0
    p[:, 4] = [[[0.0]], [[1.0]]]  # slice 4 alone says class 1
    q = smooth_across_slices(p, 1, 1.0)
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-6)
    assert q[1, 4].max() < 0.5 and q[1, 4].min() > 0.3  # outvoted, not erased
    assert q[1, 3].min() > 0.2 and q[1, 0].max() == 0.0  # neighbours within the halo only
    # constant along the axis: unchanged; the edge slices repeat beyond the volume
    flat = np.repeat(p[:, :1], 9, axis=1)
    np.testing.assert_allclose(smooth_across_slices(flat, 1, 1.5), flat, atol=1e-6)
    # off, and volumes of one slice, come back as they are
    assert smooth_across_slices(p, 1, 0.0) is p
    assert smooth_across_slices(p[:, :1], 1, 1.0) is not None


def test_halo_covers_the_kernel_and_values_are_checked():
    assert smoothing_halo(0) == 0 and smoothing_halo(DEFAULT_SMOOTHING) == int(TRUNCATE + 0.5)
    assert smoothing_halo(1.5) == 3
    assert check_smoothing("1.5") == 1.5 and check_smoothing(0) == 0.0
    for bad in (-1, float("nan"), float("inf"), "x", None):
        with pytest.raises(SemisegError, match="number of slices"):
            check_smoothing(bad)


@pytest.mark.parametrize("axis, slab_size", [(0, 3), (2, 1), (0, 2)])
def test_prediction_smooths_its_final_probabilities_across_slices(tiny_volume, axis, slab_size):
    """Slab by slab (slabs smaller than the Gaussian's reach too) as the whole volume at
    once; the prior fused first; the maps stay per slice; the mask is the smoothed
    probabilities' argmax; progress reaches every slice."""
    image, labels = tiny_volume
    _, k = make_volumes([image], [labels], axis=axis)
    bundle = create_model("supervised", TINY, 1, k, seed=3, axis=axis)
    bundle.method.eval()
    prior = _probabilities((k, *image.shape), seed=1)
    common = dict(maps=["confidence"], return_probabilities=True, prior=prior)
    raw = predict_volume(bundle, image, smoothing=0, slab_size=1000, **common)
    smooth = predict_volume(
        bundle, image, smoothing=1.0, slab_size=slab_size, batch_size=2, **common
    )
    expected = gaussian_filter1d(raw.probabilities, 1.0, axis=axis + 1, mode="nearest", truncate=2)
    np.testing.assert_allclose(smooth.probabilities, expected, atol=1e-5)
    assert not np.allclose(smooth.probabilities, raw.probabilities, atol=1e-3)
    np.testing.assert_array_equal(smooth.labels, expected.argmax(0))
    np.testing.assert_allclose(smooth.maps["confidence"], raw.maps["confidence"], atol=1e-6)
    seen = []
    predict_volume(bundle, image, slab_size=slab_size, progress=lambda d, n: seen.append((d, n)))
    n = image.shape[axis]
    assert seen[-1] == (n, n) and [d for d, _ in seen] == sorted({d for d, _ in seen})
    with pytest.raises(SemisegError, match="number of slices"):
        predict_volume(bundle, image, smoothing=-1)


def test_the_default_keeps_its_physical_width_for_slices_thicker_than_their_pixels():
    assert smoothing_for_spacing((1.0, 1.0, 1.0), 0) == DEFAULT_SMOOTHING
    assert smoothing_for_spacing((5.0, 1.0, 1.0), 0) == pytest.approx(0.2 * DEFAULT_SMOOTHING)
    assert smoothing_for_spacing((0.8, 0.8, 2.0), 2) == pytest.approx(0.4)  # the finest pixel
    assert smoothing_for_spacing((0.8, 0.8, 2.0), 0) == DEFAULT_SMOOTHING  # never more
    assert smoothing_for_spacing((1.0, 0.5, 0.5), 0, sigma=2.0) == pytest.approx(1.0)
    assert smoothing_for_spacing((9.0, 4.0, 1.0, 1.0), 0) == pytest.approx(0.25)  # C, Z, Y, X
    for unknown in (None, (1.0, 1.0), (0.0, 1.0, 1.0), (float("nan"), 1.0, 1.0)):
        assert smoothing_for_spacing(unknown, 0) == DEFAULT_SMOOTHING
