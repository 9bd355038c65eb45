"""Metrics against hand-computed values, a brute-force reference, and every empty case."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from src_models.errors import SemisegError
from src_models.metrics import dice, evaluate, json_ready, surface_distances


def shifted_cubes(shape=(20, 20, 20), shift=2):
    """Two 10^3 cubes, the prediction shifted by ``shift`` voxels along axis 0."""
    truth = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    truth[7:17, 5:15, 5:15] = 1
    pred[7 - shift : 17 - shift, 5:15, 5:15] = 1
    return pred, truth


def brute_force(pred_mask, true_mask, spacing, connectivity):
    """Reference: full-array surfaces and all pairwise distances (no crop, no EDT)."""
    st = ndimage.generate_binary_structure(pred_mask.ndim, connectivity)

    def surface_points(m):
        s = m & ~ndimage.binary_erosion(m, structure=st, border_value=0)
        return np.argwhere(s) * np.asarray(spacing, float)

    a, b = surface_points(pred_mask), surface_points(true_mask)
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    return d.min(axis=1), d.min(axis=0)


def test_shifted_cubes_isotropic():
    # Hand count (see the derivation in the comments): each directed set over the 488
    # surface voxels of a 10^3 cube has 288 zeros, 64 ones and 136 twos.
    pred, truth = shifted_cubes()
    r = evaluate(pred, truth)
    c = r["per_class"][1]
    assert c["dice"] == pytest.approx(0.8)  # 2*800 / 2000
    assert c["jaccard"] == pytest.approx(800 / 1200)
    assert c["hd95"] == pytest.approx(2.0)
    assert c["asd"] == pytest.approx(336 / 488)  # (64*1 + 136*2) / 488
    assert c["pred_voxels"] == c["true_voxels"] == 1000
    assert r["mean"]["dice"] == pytest.approx(0.8)
    d_pt, d_tp = surface_distances(pred.astype(bool), truth.astype(bool))
    assert d_pt.size == d_tp.size == 10**3 - 8**3
    assert np.bincount(d_pt.astype(int)).tolist() == [288, 64, 136]


def test_shifted_cubes_anisotropic_spacing():
    # Axis 0 voxels are 2 mm: the shift becomes 4 mm; side distances stay in 1 mm steps.
    pred, truth = shifted_cubes()
    c = evaluate(pred, truth, spacing=(2.0, 1.0, 1.0))["per_class"][1]
    assert c["dice"] == pytest.approx(0.8)  # overlap does not depend on spacing
    assert c["hd95"] == pytest.approx(4.0)
    assert c["asd"] == pytest.approx(592 / 488)  # 100*4 + 36*2 + 28*1 + 20*2 + 12*3 + 4*4


def test_identical_masks_have_zero_distance():
    _, truth = shifted_cubes()
    c = evaluate(truth, truth, spacing=(0.7, 1.3, 2.0))["per_class"][1]
    assert c["dice"] == c["jaccard"] == 1.0
    assert c["hd95"] == 0.0 and c["asd"] == 0.0


def test_hand_checked_2d_example():
    # 3x3 squares, pred one column to the right; 8-pixel rings; 4 of 8 ring pixels per
    # direction are at distance 1 (or 2 mm with 2 mm columns), the rest at 0.
    truth = np.zeros((5, 5), np.int64)
    truth[1:4, 1:4] = 1
    pred = np.zeros((5, 5), np.int64)
    pred[1:4, 2:5] = 1
    c = evaluate(pred, truth)["per_class"][1]
    assert c["dice"] == pytest.approx(12 / 18)
    assert c["jaccard"] == pytest.approx(0.5)
    assert c["asd"] == pytest.approx(0.5)
    assert c["hd95"] == pytest.approx(1.0)
    c = evaluate(pred, truth, spacing=(1.0, 2.0))["per_class"][1]
    # P->T: 0,0,2,1,2,0,0,2 and T->P: 2,0,0,2,1,2,0,0 -> mean 14/16
    assert c["asd"] == pytest.approx(14 / 16)
    assert c["hd95"] == pytest.approx(2.0)


def test_hd95_pooled_versus_max_mode():
    # T = one pixel, P = that pixel plus one 10 px away: d(P->T) = [0, 10], d(T->P) = [0].
    truth = np.zeros((1, 11), np.uint8)
    truth[0, 0] = 1
    pred = truth.copy()
    pred[0, 10] = 1
    pooled = evaluate(pred, truth)["per_class"][1]
    assert pooled["hd95"] == pytest.approx(9.0)  # percentile of [0, 0, 10] at 1.9
    assert pooled["asd"] == pytest.approx(10 / 3)
    assert evaluate(pred, truth, hd_mode="max")["per_class"][1]["hd95"] == pytest.approx(9.5)


@pytest.mark.parametrize("connectivity", [1, 3])
def test_matches_brute_force_reference(connectivity):
    rng = np.random.default_rng(0)
    truth = ndimage.gaussian_filter(rng.normal(size=(14, 18, 16)), 2) > 0.05
    pred = ndimage.gaussian_filter(rng.normal(size=(14, 18, 16)), 2) > 0.05
    spacing = (2.5, 0.8, 1.1)
    d_pt, d_tp = brute_force(pred, truth, spacing, connectivity)
    pooled = np.concatenate([d_pt, d_tp])
    c = evaluate(pred, truth, spacing=spacing, connectivity=connectivity)["per_class"][1]
    assert c["asd"] == pytest.approx(pooled.mean())
    assert c["hd95"] == pytest.approx(np.percentile(pooled, 95))
    assert c["dice"] == pytest.approx(dice(pred, truth))


def test_crop_does_not_change_values_for_small_objects_in_large_volume():
    truth = np.zeros((30, 40, 40), np.uint8)
    pred = np.zeros_like(truth)
    truth[10:14, 5:12, 30:36] = 1
    pred[11:15, 6:12, 29:35] = 1
    pred[0, 0, 0] = 1  # a stray voxel at the corner, far away
    d_pt, d_tp = brute_force(pred.astype(bool), truth.astype(bool), (1, 1, 1), 3)
    c = evaluate(pred, truth)["per_class"][1]
    assert c["asd"] == pytest.approx(np.concatenate([d_pt, d_tp]).mean())
    assert c["hd95"] == pytest.approx(np.percentile(np.concatenate([d_pt, d_tp]), 95))


def test_empty_cases():
    truth = np.zeros((6, 8, 8), np.uint8)
    pred = np.zeros_like(truth)
    truth[1:4, 2:5, 2:5] = 1  # class 1 only in truth
    pred[2:5, 1:4, 1:4] = 2  # class 2 only in prediction
    # class 3 in neither
    r = evaluate(pred, truth, num_classes=4)
    one, two, three = (r["per_class"][c] for c in (1, 2, 3))
    for c in (one, two):
        assert c["dice"] == 0.0 and c["jaccard"] == 0.0
        assert math.isnan(c["hd95"]) and math.isnan(c["asd"])
    assert one["pred_voxels"] == 0 and one["true_voxels"] == 27
    assert three == {
        "pred_voxels": 0,
        "true_voxels": 0,
        "dice": 1.0,
        "jaccard": 1.0,
        "hd95": 0.0,
        "asd": 0.0,
    }
    assert r["empty"] == {"both": [3], "pred": [1], "truth": [2]}
    assert r["mean"]["dice"] == pytest.approx(1 / 3)
    assert r["mean"]["hd95"] == 0.0  # NaNs skipped: only class 3 is defined
    assert "empty in exactly one" in r["convention"]
    text = json.dumps(json_ready(r), allow_nan=False)
    assert json.loads(text)["per_class"]["1"]["hd95"] is None


def test_all_distances_undefined_gives_nan_mean():
    truth = np.zeros((4, 4), np.uint8)
    truth[1, 1] = 1
    r = evaluate(np.zeros_like(truth), truth)
    assert math.isnan(r["mean"]["hd95"]) and math.isnan(r["mean"]["asd"])
    assert r["mean"]["dice"] == 0.0
    assert dice(np.zeros(3), np.zeros(3)) == 1.0


def test_classes_argument_and_multiclass():
    pred, truth = shifted_cubes()
    truth2 = truth * 2
    pred2 = pred * 2
    r = evaluate(np.maximum(pred, pred2), np.maximum(truth, truth2), classes=[2])
    assert list(r["per_class"]) == [2]
    assert r["per_class"][2]["dice"] == pytest.approx(0.8)


def test_bad_input():
    a = np.zeros((4, 5, 6), np.uint8)
    with pytest.raises(SemisegError, match="different shapes"):
        evaluate(a, np.zeros((4, 5, 7), np.uint8))
    with pytest.raises(SemisegError, match="different shapes"):
        dice(a, a[0])
    with pytest.raises(SemisegError, match="exceeds the class count"):
        evaluate(a + 3, a, num_classes=3)
    with pytest.raises(SemisegError, match="non-integer"):
        evaluate(a + 0.5, a)
    with pytest.raises(SemisegError, match="spacing"):
        evaluate(a, a, spacing=(1.0, 2.0))
    with pytest.raises(SemisegError, match="positive"):
        evaluate(a, a, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(SemisegError, match="hd_mode"):
        evaluate(a, a, hd_mode="mean")
