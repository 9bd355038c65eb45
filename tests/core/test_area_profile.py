"""The structure's area between labeled slices (src_models.area_profile) and the masks of
the propagation and the fused prediction that lean towards it."""

from __future__ import annotations

import numpy as np
import pytest

from src_models.area_profile import (
    MAX_GAP,
    SHARE,
    area_profile,
    match_area,
    match_areas,
    volume_area_profile,
)
from src_models.data.label_values import IGNORE
from src_models.inference import predict_volume
from src_models.propagation import propagate
from src_models.training.checkpoint import create_model


def dome(n: int = 13, size: int = 40) -> np.ndarray:
    """Labels (N, H, W) of a half ellipsoid: a disc of radius 14 on slice 0 tapering to a
    point on slice n - 1 (a rounded end: its area falls slowly, then fast)."""
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size), np.int64)
    for s in range(n):
        r = 14 * np.sqrt(max(0.0, 1 - (s / (n - 1)) ** 2))
        out[s] = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= max(r, 0.6) ** 2
    return out


def test_the_profile_passes_through_the_labeled_areas_and_stays_between_them():
    labels = dome()
    labeled = [0, 6, 12]
    areas = (labels > 0).sum(axis=(1, 2)).astype(float)
    profile = area_profile(labels, labeled)
    assert np.isnan(profile[labeled]).all()  # the labeled slices keep their labels
    between = [s for s in range(13) if s not in labeled]
    assert np.isfinite(profile[between]).all()
    # monotone between monotone anchors (PCHIP: no overshoot), within their areas
    assert (np.diff(profile[1:6]) <= 0).all() and (np.diff(profile[7:12]) <= 0).all()
    assert areas[6] <= profile[1:6].min() and profile[1:6].max() <= areas[0]
    assert areas[12] <= profile[7:12].min() and profile[7:12].max() <= areas[6]
    # closer to the dome's true areas than shape interpolation's constant-speed outline,
    # whose area falls with the square of the distance (here: linear in sqrt(area))
    sqrt_lin = np.interp(between, labeled, np.sqrt(areas[labeled])) ** 2
    err_profile = np.abs(profile[between] - areas[between]).mean()
    err_shape = np.abs(sqrt_lin - areas[between]).mean()
    assert err_profile < 0.6 * err_shape
    # one value per slice along the axis of a volume
    vol = np.moveaxis(labels, 0, 2)
    np.testing.assert_allclose(volume_area_profile(vol, labeled, 2), profile)


def test_no_profile_over_long_gaps_partly_labeled_slices_or_beyond_the_outer_slices():
    labels = np.zeros((40, 8, 8), np.int64)
    labels[:, 2:6, 2:6] = 1
    labels[5:, 3:5, 3:5] = 0  # some variation
    wide = area_profile(labels, [0, MAX_GAP + 1, MAX_GAP + 3])
    assert np.isnan(wide[: MAX_GAP + 1]).all()  # a gap longer than MAX_GAP
    assert np.isfinite(wide[MAX_GAP + 2])
    assert np.isnan(wide[MAX_GAP + 4 :]).all()  # beyond the outer labeled slice
    partial = labels.copy()
    partial[10, :, :4] = IGNORE  # a region correction: its area is unknown
    profile = area_profile(partial, [4, 10, 16])
    assert np.isnan(profile).all()  # both gaps it bounds are left as predicted
    assert np.isnan(area_profile(labels, [5])).all()  # one labeled slice: no profile


def test_match_area_moves_halfway_to_the_target_with_the_surest_voxels():
    rng = np.random.default_rng(0)
    fg = rng.random((10, 10))
    probs = np.stack([1 - fg, 0.6 * fg, 0.4 * fg])  # class 1 wins wherever fg > 0
    probs[1, :5], probs[2, :5] = probs[2, :5], probs[1, :5].copy()  # class 2 on the top half
    ids = np.where(fg > 0.5, probs[1:].argmax(0) + 1, 0)
    current = np.count_nonzero(ids)
    grown = match_area(probs, ids, current + 40)
    assert np.count_nonzero(grown) == current + round(SHARE * 40)
    # the voxels added are the next most likely foreground, none removed
    assert (grown[ids > 0] > 0).all()
    assert fg[grown > 0].min() >= fg[(grown == 0)].max()
    # each foreground voxel takes its most likely foreground class
    fgc = probs[1:].argmax(0) + 1
    np.testing.assert_array_equal(grown[grown > 0], fgc[grown > 0])
    shrunk = match_area(probs, ids, current - 20)
    assert np.count_nonzero(shrunk) == current - round(SHARE * 20)
    assert (ids[shrunk > 0] > 0).all()
    np.testing.assert_array_equal(match_area(probs, ids, float("nan")), ids)
    np.testing.assert_array_equal(match_area(probs, ids, current), ids)
    assert np.count_nonzero(match_area(probs, ids, 10_000, share=1.0)) == ids.size
    # on a stack, only the slices with a finite target change
    stack = match_areas(np.stack([probs, probs]), np.stack([ids, ids]), np.array([np.nan, 0.0]))
    np.testing.assert_array_equal(stack[0], ids)
    assert np.count_nonzero(stack[1]) == current - round(SHARE * current)


def test_the_propagation_mask_leans_towards_the_profile_and_its_probabilities_do_not():
    labels = dome(n=13)
    rng = np.random.default_rng(1)
    image = (labels + rng.normal(0, 0.8, labels.shape)).astype(np.float32)[:, None]
    labeled = [0, 6, 12]
    sparse = np.zeros_like(labels)
    sparse[labeled] = labels[labeled]
    plain = propagate(image, sparse, labeled, 2, match_areas=False)
    leaning = propagate(image, sparse, labeled, 2)
    np.testing.assert_array_equal(plain.probabilities, leaning.probabilities)
    profile = area_profile(sparse, labeled)
    for s in range(13):
        before, after = np.count_nonzero(plain.labels[s]), np.count_nonzero(leaning.labels[s])
        if np.isfinite(profile[s]):
            assert after == round(before + SHARE * (profile[s] - before))
        else:
            np.testing.assert_array_equal(leaning.labels[s], plain.labels[s])


def test_the_fused_prediction_leans_towards_the_areas_given():
    labels = dome(n=6, size=32)
    vol = labels.astype(np.float32)
    bundle = create_model(
        "supervised", {"channels": "4,8,16,32,64"}, 1, 2, seed=0, axis=0, patch_size=32
    )
    prior = np.stack([1.0 - labels, labels]).astype(np.float32)
    plain = dict(maps=(), return_probabilities=True, smoothing=0, prior=prior)
    base = predict_volume(bundle, vol, **plain)
    areas = np.full(6, np.nan)
    areas[2] = np.count_nonzero(base.labels[2]) + 100
    leaning = predict_volume(bundle, vol, areas=areas, **plain)
    np.testing.assert_array_equal(leaning.probabilities, base.probabilities)
    for s in (0, 1, 3, 4, 5):
        np.testing.assert_array_equal(leaning.labels[s], base.labels[s])
    assert np.count_nonzero(leaning.labels[2]) == np.count_nonzero(base.labels[2]) + 50
    with pytest.raises(Exception, match="area profile has shape"):
        predict_volume(bundle, vol, areas=np.zeros(5), **plain)
