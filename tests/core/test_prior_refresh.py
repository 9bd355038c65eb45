"""The prior's targets refreshed mid-run with the fused, smoothed prediction
(:mod:`src_models.training.prior_refresh`), and the whole-volume training prediction it uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_propagation import wobbly_blob

from src_models.data import SliceSampler, make_volumes
from src_models.data.label_values import IGNORE
from src_models.inference import (
    predict_training_slice,
    predict_training_volume,
    prior_weight_for_fit,
)
from src_models.metrics import dice
from src_models.propagation import walk_extend
from src_models.recipe import RunRecipe, build_run
from src_models.slice_smoothing import smooth_across_slices
from src_models.training import TrainConfig, train
from src_models.training import prior_refresh as refresh_module
from src_models.training.checkpoint import create_model

TINY = {"channels": "4,8,16,32,64"}
LABELED = [0, 7, 14]


def _blob_sampler(labels=None, **kwargs):
    image, truth = wobbly_blob()
    sparse = np.zeros_like(truth) if labels is None else labels
    if labels is None:
        sparse[LABELED] = truth[LABELED]
    vols, k = make_volumes([image[:, 0]], [sparse], labeled_slices=[LABELED])
    data = SliceSampler(vols, patch_size=48, batch_size=4, seed=0, prior_fraction=0.5, **kwargs)
    return data, k, truth


def _perfect_network(truth, monkeypatch):
    """A network whose probabilities are the truth's (90 % sure)."""
    probs = np.stack([truth == 0, truth == 1]).astype(np.float32) * 0.8 + 0.1
    # a copy per call, as the real one: the refresh blends into what it gets, in place
    monkeypatch.setattr(
        "src_models.inference.predict_training_volume", lambda method, volume: probs.copy()
    )
    return probs


def test_the_targets_become_the_fused_smoothed_prediction(monkeypatch):
    data, k, truth = _blob_sampler(keep_prior_probabilities=True)
    walk = data.prior_probabilities[0].astype(np.float32)
    assert walk.shape == (2, 15, 48, 48)
    before = data.prior_targets[0][0].copy()
    data._foreground_pixels("prior", 0, 3)  # cached before the refresh: must not survive it
    network = _perfect_network(truth, monkeypatch)
    monkeypatch.setattr(refresh_module, "labeled_fit", lambda method, data: 0.9)
    bundle = create_model("supervised", TINY, 1, k, seed=0)
    assert refresh_module.refresh_prior(bundle.method, data) == 1
    targets, weights = data.prior_targets[0]
    w = prior_weight_for_fit(0.9)  # the product's weight for that fit (0.56)
    expected = smooth_across_slices((1 - w) * network + w * walk, 1, 1.0)
    np.testing.assert_array_equal(targets, expected.argmax(0))
    # a better network makes better targets than the walk's alone
    unlabeled = [s for s in range(15) if s not in LABELED]
    assert dice(targets[unlabeled] == 1, truth[unlabeled] == 1) > dice(
        before[unlabeled] == 1, truth[unlabeled] == 1
    )
    # the annotated voxels train as labeled (weight 0 here); sure voxels weigh 1
    assert not weights[LABELED].any()
    assert weights.max() == 1.0 and weights.min() == 0.0
    assert sorted(s for _, s in data.prior_index) == unlabeled
    cached = data._foreground_pixels("prior", 0, 3)
    np.testing.assert_array_equal(cached, np.argwhere(targets[3] > 0))


def test_no_refresh_before_the_network_fits_its_labeled_slices(monkeypatch):
    data, k, truth = _blob_sampler(keep_prior_probabilities=True)
    before = [a.copy() for a in data.prior_targets[0]]
    index = list(data.prior_index)
    _perfect_network(truth, monkeypatch)
    monkeypatch.setattr(refresh_module, "labeled_fit", lambda method, data: 0.3)
    bundle = create_model("supervised", TINY, 1, k, seed=0)
    assert refresh_module.refresh_prior(bundle.method, data) == 0
    for kept, now in zip(before, data.prior_targets[0], strict=True):
        np.testing.assert_array_equal(kept, now)
    assert data.prior_index == index
    # nor without the walk's probabilities (the sampler was not asked to keep them)
    plain, _, _ = _blob_sampler()
    assert plain.prior_probabilities == {}
    assert refresh_module.refresh_prior(bundle.method, plain) == 0


def test_a_region_correction_keeps_its_painted_voxels_out_of_the_refreshed_prior(monkeypatch):
    image, truth = wobbly_blob()
    labels = np.zeros_like(truth)
    labels[LABELED] = truth[LABELED]
    labels[7, :, 24:] = IGNORE  # slice 7: only its left half painted
    data, k, _ = _blob_sampler(labels=labels, keep_prior_probabilities=True)
    _perfect_network(truth, monkeypatch)
    monkeypatch.setattr(refresh_module, "labeled_fit", lambda method, data: 0.9)
    bundle = create_model("supervised", TINY, 1, k, seed=0)
    assert refresh_module.refresh_prior(bundle.method, data) == 1
    targets, weights = data.prior_targets[0]
    assert not weights[7, :, :24].any()  # painted: trains as labeled
    assert weights[7, :, 24:].mean() > 0.9  # unpainted: the refreshed prior's
    assert (0, 7) in data.prior_index
    assert dice(targets[7, :, 24:] == 1, truth[7, :, 24:] == 1) > 0.95


@pytest.mark.parametrize("ends", [False, True])
def test_beyond_the_walks_reach_only_when_the_ends_are_labeled(monkeypatch, ends):
    image, truth = wobbly_blob()
    sparse = np.zeros_like(truth)
    sparse[[5, 9]] = truth[[5, 9]]
    vols, k = make_volumes([image[:, 0]], [sparse], labeled_slices=[[5, 9]])
    data = SliceSampler(vols, patch_size=48, prior_fraction=0.5, ends_labeled=ends,
                        keep_prior_probabilities=True)  # fmt: skip
    lo, hi = 5 - walk_extend([5, 9]), 9 + walk_extend([5, 9])
    reach = [lo <= s <= hi for s in range(15)] if not ends else [True] * 15
    assert data.prior_reach[0].tolist() == reach
    _perfect_network(truth, monkeypatch)
    monkeypatch.setattr(refresh_module, "labeled_fit", lambda method, data: 0.9)
    bundle = create_model("supervised", TINY, 1, k, seed=0)
    assert refresh_module.refresh_prior(bundle.method, data) == 1
    _, weights = data.prior_targets[0]
    trained = weights.reshape(15, -1).max(1) > 0
    # without the ends the walk reaches walk_extend slices beyond the labeled ones: the
    # fused output is background beyond them by construction, so nothing is taught there;
    # with the ends the user said there is nothing beyond them: background is taught there
    assert trained.tolist() == [r and s not in (5, 9) for s, r in enumerate(reach)]


@pytest.mark.parametrize("context", [0, 1])
def test_the_whole_volume_training_prediction_is_the_slice_one(context):
    image, truth = wobbly_blob(n=9, size=40)
    vols, k = make_volumes([image[:, 0]], [truth], labeled_slices=[[0, 4, 8]])
    bundle = create_model("supervised", TINY, 1 + 2 * context, k, seed=0)
    method = bundle.method
    method.train()
    rng = torch.get_rng_state()
    probs = predict_training_volume(method, vols[0], batch_size=4)  # slabs of 4 slices
    assert probs.shape == (k, 9, 40, 40)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    for s in range(9):
        np.testing.assert_array_equal(
            probs[:, s].argmax(0), predict_training_slice(method, vols[0], s)
        )
    assert method.networks["net"].training  # left as it was
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_trainer_refreshes_once_at_its_share_of_the_budget(monkeypatch):
    calls = []

    def record(method, data):
        calls.append(len(calls))
        return 1

    monkeypatch.setattr("src_models.training.trainer.refresh_prior", record)
    image, truth = wobbly_blob()
    sparse = np.zeros_like(truth)
    sparse[LABELED] = truth[LABELED]
    recipe = RunRecipe(
        method="supervised", params=TINY, iterations=10, checkpoint_every=0, prior_refresh=0.5
    )
    assert RunRecipe().prior_refresh == RunRecipe(ends_labeled=True).prior_refresh == 0.0
    assert RunRecipe(prior_refresh=0.3).prior_refresh == 0.3  # an option
    run = build_run(recipe, [image[:, 0]], [sparse], [LABELED])
    assert run.sampler.prior_probabilities  # kept for it
    train(run.bundle, run.sampler, run.config)
    assert calls == [0] and run.bundle.info["prior_refreshed_at"] == 5
    # 0 turns it off: the walk's probabilities are not even kept
    off = build_run(RunRecipe(method="supervised", params=TINY, iterations=10, prior_refresh=0),
                    [image[:, 0]], [sparse], [LABELED])  # fmt: skip
    assert off.sampler.prior_probabilities == {}
    train(off.bundle, off.sampler, off.config)
    assert calls == [0] and "prior_refreshed_at" not in off.bundle.info
    with pytest.raises(Exception, match="prior refresh must be a number in"):
        RunRecipe(prior_refresh=1.5).check()
    with pytest.raises(Exception, match="prior_refresh must be a number in"):
        train(off.bundle, off.sampler, TrainConfig(iterations=11, prior_refresh=-1))
