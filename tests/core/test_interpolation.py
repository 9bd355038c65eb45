"""Shape-based interpolation and the prior weights it gives training."""

from __future__ import annotations

import numpy as np
import pytest

from src_models.interpolation import (
    interpolate_slices,
    interpolate_volume,
    prior_weights,
    signed_distance,
)


def disc(radius: float, shape=(64, 64), centre=(32.0, 32.0)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_signed_distance_sign_and_scale():
    m = np.zeros((9, 9), bool)
    m[2:7, 2:7] = True
    d = signed_distance(m)
    assert d[4, 4] == pytest.approx(-2.5) and d[0, 4] == pytest.approx(1.5)
    assert (d[m] < 0).all() and (d[~m] > 0).all()
    assert (signed_distance(np.zeros((4, 5), bool)) == 9).all()


def test_disc_growing_linearly_between_two_slices_is_recovered():
    n = 11
    radii = np.linspace(6, 20, n)  # radius grows linearly from slice 0 to slice 10
    truth = np.stack([disc(r) for r in radii]).astype(np.int64)
    sparse = np.zeros_like(truth)
    sparse[[0, 10]] = truth[[0, 10]]
    result = interpolate_slices(sparse, [0, 10])
    for s in range(1, 10):
        got = result.labels[s] == 1
        inter = (got & (truth[s] == 1)).sum()
        assert 2 * inter / (got.sum() + truth[s].sum()) > 0.97, s
        # the area grows monotonically, as the true one does
        assert got.sum() >= (result.labels[s - 1] == 1).sum()
    assert result.slice_distance.tolist() == [0, 1, 2, 3, 4, 5, 4, 3, 2, 1, 0]


def test_slices_outside_the_labeled_range_stay_empty():
    truth = np.stack([disc(10) for _ in range(12)]).astype(np.int64)
    sparse = np.zeros_like(truth)
    sparse[[3, 8]] = truth[[3, 8]]
    result = interpolate_slices(sparse, [3, 8])
    assert not result.labels[:3].any() and not result.labels[9:].any()
    assert result.labels[3:9].all(axis=0).sum() > 0
    assert np.isinf(result.slice_distance[:3]).all() and not result.covered[9:].any()
    w = prior_weights(result)
    assert not w[:4].any() and not w[8:].any()  # labeled and outside slices: no prior


def test_several_classes_do_not_overlap_and_keep_their_ids():
    a = np.zeros((5, 40, 40), np.int64)
    for s in (0, 4):
        a[s][disc(8, (40, 40), (12, 12))] = 1
        a[s][disc(8, (40, 40), (12, 26))] = 2  # touching neighbour
        a[s][disc(5, (40, 40), (30, 30))] = 5  # a non-contiguous id
    result = interpolate_slices(a, [0, 4], num_classes=6)
    assert set(np.unique(result.labels)) == {0, 1, 2, 5}
    for s in range(1, 4):  # identical ends: the middle slices equal them
        assert (result.labels[s] == a[0]).mean() > 0.99


def test_class_absent_from_one_side_shrinks_away():
    a = np.zeros((9, 40, 40), np.int64)
    a[0][disc(12, (40, 40), (20, 20))] = 1
    result = interpolate_slices(a, [0, 8])
    areas = [(result.labels[s] == 1).sum() for s in range(9)]
    assert areas[0] > areas[1] >= areas[2] and areas[8] == 0


def test_interpolate_volume_along_another_axis_matches_slices_first():
    vol = np.zeros((30, 7, 30), np.int64)
    vol[:, 0][disc(6, (30, 30))] = 1
    vol[:, 6][disc(12, (30, 30))] = 1
    out = interpolate_volume(vol, [0, 6], axis=1)
    ref = interpolate_slices(np.moveaxis(vol, 1, 0), [0, 6]).labels
    assert out.shape == vol.shape and np.array_equal(np.moveaxis(out, 1, 0), ref)


def test_prior_weights_fall_with_slice_distance_and_ignore_the_boundary_band():
    truth = np.stack([disc(r) for r in np.linspace(8, 18, 9)]).astype(np.int64)
    sparse = np.zeros_like(truth)
    sparse[[0, 8]] = truth[[0, 8]]
    result = interpolate_slices(sparse, [0, 8])
    w = prior_weights(result, band_per_slice=1.0, min_band=1.0)
    # slice weight 1 - d / (gap/2 + 1): d = 1 -> 0.8, d = 4 -> 0.2, far from any boundary
    assert w[1, 32, 32] == pytest.approx(0.8) and w[4, 32, 32] == pytest.approx(0.2)
    assert w[1, 0, 0] == pytest.approx(0.8)  # sure background far outside
    # pixels within min_band + d pixels of the interpolated boundary get 0
    near = (result.margin[4] < 5.0) & (result.margin[4] > 0)
    assert near.any() and not w[4][near].any()
    assert (w[1][result.margin[1] >= 2.0] > 0).all()
