"""The random-walker propagation: the zero-training result, the training prior and the fusion
of a prediction with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src_models.data import SliceSampler, make_volumes
from src_models.data.label_values import IGNORE
from src_models.inference import (
    DEFAULT_PRIOR_WEIGHT,
    FIT_PIVOT,
    PRIOR_WEIGHT_RANGE,
    predict_volume,
    prior_weight_for_fit,
)
from src_models.interpolation import interpolate_slices
from src_models.metrics import dice
from src_models.propagation import (
    BETA_PER_GAP2,
    DEFAULT_BETA,
    DEFAULT_EXTEND,
    EXTEND_SHARE,
    MAX_VOXELS,
    MIN_BETA,
    affordable,
    propagate,
    propagate_volume,
    propagation_prior,
    propagation_voxels,
    walk_beta,
    walk_extend,
)
from src_models.recipe import RunRecipe, build_run
from src_models.training.checkpoint import create_model
from src_models.training.fit import MIN_FIT


def wobbly_blob(n: int = 15, size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image (N, 1, H, W) of a bright blob whose centre moves along a curve (not linearly
    between slices 0, 7 and 14), with noise, and its labels (N, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((n, size, size), np.int64)
    for s in range(n):
        cy = size / 2 + 8 * np.sin(np.pi * s / (n - 1) * 2)  # a full sine period
        cx = size / 2
        labels[s] = (yy - cy) ** 2 + (xx - cx) ** 2 <= 9**2
    image = labels.astype(np.float32) + rng.normal(0, 0.15, labels.shape).astype(np.float32)
    return image[:, None], labels


def slice_dice(pred: np.ndarray, truth: np.ndarray, skip: list[int]) -> float:
    keep = np.ones(len(truth), bool)
    keep[skip] = False
    return dice(pred[keep] == 1, truth[keep] == 1)


def test_propagation_follows_the_image_where_interpolation_cannot():
    image, truth = wobbly_blob()
    labeled = [0, 7, 14]
    sparse = np.where(np.isin(np.arange(15), labeled)[:, None, None], truth, 0)
    result = propagate(image, sparse, labeled, 2, extend=0)
    interp = interpolate_slices(sparse, labeled, 2).labels
    ours, theirs = slice_dice(result.labels, truth, labeled), slice_dice(interp, truth, labeled)
    assert ours > 0.9 and ours > theirs + 0.1, (ours, theirs)
    # probabilities: a distribution per voxel; the labeled slices keep their labels
    assert result.probabilities.shape == (2, 15, 48, 48)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-3)
    np.testing.assert_array_equal(result.labels[labeled], truth[labeled])
    assert result.covered.all()


def test_nothing_beyond_the_labeled_range_but_extend_slices():
    image, truth = wobbly_blob()
    labeled = [5, 9]
    sparse = np.where(np.isin(np.arange(15), labeled)[:, None, None], truth, 0)
    strict = propagate(image, sparse, labeled, 2, extend=0)
    assert strict.covered.tolist() == [5 <= s <= 9 for s in range(15)]
    assert not strict.labels[~strict.covered].any()
    wide = propagate(image, sparse, labeled, 2, extend=2)
    assert wide.covered.tolist() == [3 <= s <= 11 for s in range(15)]
    # the walk carries the blob into the 2 extra slices on each side (the image goes on)
    for s in (3, 4, 10, 11):
        assert dice(wide.labels[s] == 1, truth[s] == 1) > 0.8, s
    assert not wide.labels[:3].any() and not wide.labels[12:].any()


def test_unannotated_voxels_of_a_labeled_slice_are_decided_and_one_class_fills_all():
    image, truth = wobbly_blob()
    sparse = np.where(np.isin(np.arange(15), [0, 7, 14])[:, None, None], truth, 0)
    sparse[7, :, 24:] = IGNORE  # half of slice 7 unannotated
    result = propagate(image, sparse, [0, 7, 14], 2)
    assert dice(result.labels[7] == 1, truth[7] == 1) > 0.9
    # only background seeded: nothing to decide, all background, no solver call
    empty = propagate(image, np.zeros_like(truth), [3, 6], 2)
    assert not empty.labels.any() and (empty.probabilities[0] == 1).all()
    nothing = propagate(image, truth, [], 2)
    assert not nothing.covered.any() and not nothing.labels.any()
    # every slice labeled (``predict --labels`` with a full mask): the labels themselves,
    # once skimage's random_walker had nothing to solve and returned another layout
    three = np.where(truth == 1, 1 + (np.arange(48) >= 24)[None, None, :], 0)
    full = propagate(image, three, list(range(15)), 3)
    np.testing.assert_array_equal(full.labels, three)
    assert full.covered.all() and full.probabilities.shape == (3,) + three.shape
    np.testing.assert_array_equal(full.probabilities.sum(0), 1.0)


def test_volume_helpers_put_the_slicing_axis_back():
    image, truth = wobbly_blob()
    labeled = [0, 7, 14]
    sparse = np.where(np.isin(np.arange(15), labeled)[:, None, None], truth, 0)
    # the same volume with slices along axis 2
    image_x, sparse_x = np.moveaxis(image[:, 0], 0, 2), np.moveaxis(sparse, 0, 2)
    along_x = propagate_volume(image_x, sparse_x, labeled, axis=2, num_classes=2)
    np.testing.assert_array_equal(
        np.moveaxis(along_x, 2, 0), propagate(image, sparse, labeled, 2).labels
    )
    prior = propagation_prior(image_x, sparse_x, labeled, 2, 2)
    assert prior.shape == (2, *image_x.shape)
    # the walk's own class ids (its mask leans towards the labeled areas: test_area_profile)
    walk = propagate_volume(image_x, sparse_x, labeled, axis=2, num_classes=2, match_areas=False)
    np.testing.assert_array_equal(prior.argmax(0), walk)


def test_affordable_bounds_the_walk_by_the_labeled_range():
    assert affordable((40, 100, 100), [10, 20])
    assert not affordable((40, 100, 100), [])
    side = int(np.sqrt(MAX_VOXELS / 10)) + 10
    assert not affordable((200, side, side), [0, 199])
    assert affordable((200, side, side), [100, 102])  # 9 slices of the range


def test_the_walk_is_held_less_by_edges_between_close_labeled_slices():
    # the square of the mean spacing, bounded: 4 slices apart -> 16 * BETA_PER_GAP2
    assert walk_beta([0, 4, 8, 12]) == pytest.approx(16 * BETA_PER_GAP2)
    assert walk_beta([12, 0, 8, 4, 4]) == walk_beta([0, 4, 8, 12])  # order, repeats
    assert walk_beta([0, 1, 2]) == MIN_BETA
    assert walk_beta([0, 40]) == DEFAULT_BETA
    assert walk_beta([5]) == walk_beta([]) == DEFAULT_BETA
    spacings = [walk_beta([0, g, 2 * g]) for g in range(1, 20)]
    assert spacings == sorted(spacings)
    # the propagation walks with it unless told otherwise
    image, labels = wobbly_blob()
    image = image + np.random.default_rng(1).normal(0, 0.3, image.shape).astype(np.float32)
    close = [0, 3, 7, 10, 14]
    default = propagate(image, labels, close, 2).probabilities
    ruled = propagate(image, labels, close, 2, beta=walk_beta(close)).probabilities
    sharp = propagate(image, labels, close, 2, beta=DEFAULT_BETA).probabilities
    np.testing.assert_array_equal(default, ruled)
    assert np.abs(default - sharp).max() > 0.05


def test_sampler_trains_on_the_propagation_where_it_is_sure():
    image, truth = wobbly_blob()
    labeled = [0, 7, 14]
    sparse = np.where(np.isin(np.arange(15), labeled)[:, None, None], truth, 0)
    volumes, k = make_volumes([image[:, 0]], [sparse], 0, [labeled])
    sampler = SliceSampler(volumes, patch_size=48, batch_size=8, prior_fraction=0.5)
    targets, weights = sampler.prior_targets[0]
    assert set(sampler.prior_index) <= {(0, s) for s in range(15) if s not in labeled}
    assert len(sampler.prior_index) == 12
    assert weights.min() >= 0 and weights.max() == 1.0 and not weights[labeled].any()
    # sure voxels carry the propagation's labels, and these are right
    sure = weights > 0.5
    assert (targets[sure] == truth[sure]).mean() > 0.97
    assert 0 < sure.mean() < 1  # the boundary band is left to the image
    batch = sampler.labeled(augment=False)
    assert batch.mask is not None and batch.mask.shape == (8, 48, 48)
    assert (batch.mask[:4] == 1).all() and batch.mask[4:].min() >= 0  # 4 labeled + 4 prior
    # the shape interpolation is the other prior
    interp = SliceSampler(volumes, patch_size=48, prior_fraction=0.5, prior="interpolation")
    assert not np.array_equal(interp.prior_targets[0][1], weights)
    with pytest.raises(Exception, match="prior must be one of"):
        SliceSampler(volumes, patch_size=48, prior_fraction=0.5, prior="magic")


def test_the_unpainted_voxels_of_a_region_correction_train_on_the_propagation():
    image, truth = wobbly_blob()
    labeled = [0, 4, 7, 14]
    sparse = np.where(np.isin(np.arange(15), labeled)[:, None, None], truth, 0)
    # slice 4 is a region correction: a band across the blob's edge painted, the rest not
    painted = np.zeros(truth.shape[1:], bool)
    painted[:, 18:30] = True
    sparse[4][~painted] = IGNORE
    volumes, _ = make_volumes([image[:, 0]], [sparse], 0, [labeled])
    sampler = SliceSampler(volumes, patch_size=48, batch_size=8, prior_fraction=0.5)
    targets, weights = sampler.prior_targets[0]
    assert (0, 4) in sampler.prior_index and not {(0, 0), (0, 7), (0, 14)} & set(
        sampler.prior_index
    )
    assert not weights[4][painted].any()  # painted voxels train as labeled, once
    assert not weights[[0, 7, 14]].any()
    sure = weights[4] > 0.5
    assert sure.sum() > 0.5 * (~painted).sum()  # most of the unpainted rest is a target
    assert (targets[4][sure] == truth[4][sure]).mean() > 0.97
    # a held-out slice (12 labeled slices are enough for a hold-out) is never a target,
    # painted or not
    many = list(range(12))
    sparse_many = np.where(np.isin(np.arange(15), many)[:, None, None], truth, 0)
    sparse_many[5][~painted] = IGNORE
    vols, _ = make_volumes([image[:, 0]], [sparse_many], 0, [many])
    held = SliceSampler(vols, patch_size=48, prior_fraction=0.5, holdout_fraction=0.2)
    assert held.holdout
    _, held_weights = held.prior_targets[0]
    for _, s in held.holdout:
        assert not held_weights[s].any()
        assert (0, s) not in held.prior_index


def test_fused_prediction_blends_the_model_with_the_prior():
    image, truth = wobbly_blob(n=6, size=32)
    vol = image[:, 0]
    bundle = create_model(
        "supervised", {"channels": "4,8,16,32,64"}, 1, 2, seed=0, axis=0, patch_size=32
    )
    prior = np.stack([1.0 - truth, truth]).astype(np.float32)  # a certain, right prior
    # the blend itself (the smoothing across slices after it: tests/core/test_slice_smoothing)
    plain = dict(maps=(), return_probabilities=True, smoothing=0)
    alone = predict_volume(bundle, vol, **plain)
    fused = predict_volume(bundle, vol, prior=prior, **plain)
    np.testing.assert_allclose(
        fused.probabilities, 0.5 * alone.probabilities + 0.5 * prior, atol=1e-5
    )
    only_prior = predict_volume(bundle, vol, prior=prior, prior_weight=1.0, **plain)
    np.testing.assert_array_equal(only_prior.labels, truth)
    # the prior's share follows the model's fit on its labeled slices (recorded by the
    # trainer): a model that fits them badly weighs less
    for fit, weight in ((0.98, 0.5), (0.88, 0.6), (0.73, 0.9)):
        bundle.info["labeled_fit"] = fit
        blend = predict_volume(bundle, vol, prior=prior, **plain).probabilities
        np.testing.assert_allclose(
            blend, (1 - weight) * alone.probabilities + weight * prior, atol=1e-5
        )
    bundle.info["labeled_fit"] = None
    with pytest.raises(Exception, match="the prior has shape"):
        predict_volume(bundle, vol, maps=(), prior=prior[:, :3])
    assert torch.get_num_threads() >= 1


def test_the_prior_weight_rises_as_the_model_fits_its_labeled_slices_worse():
    assert prior_weight_for_fit(None) == DEFAULT_PRIOR_WEIGHT == 0.5
    assert prior_weight_for_fit(float("nan")) == DEFAULT_PRIOR_WEIGHT
    assert prior_weight_for_fit(FIT_PIVOT) == pytest.approx(DEFAULT_PRIOR_WEIGHT)
    assert prior_weight_for_fit(MIN_FIT - 0.01) == 1.0  # not learned: the prior alone
    fits = np.linspace(MIN_FIT, 1.0, 51)
    weights = np.array([prior_weight_for_fit(f) for f in fits])
    assert (np.diff(weights) <= 0).all() and weights[0] > weights[-1]
    low, high = PRIOR_WEIGHT_RANGE
    assert weights.min() >= low and weights.max() <= high
    assert prior_weight_for_fit(1.0) == DEFAULT_PRIOR_WEIGHT == low
    assert prior_weight_for_fit(0.83) == pytest.approx(0.5 + 2.0 * 0.10)  # 0.7


def test_the_walk_reaches_beyond_the_outer_slices_by_a_share_of_their_spacing():
    assert walk_extend([10, 30]) == round(EXTEND_SHARE * 20)
    assert walk_extend([10, 20, 30]) == round(EXTEND_SHARE * 10)
    assert walk_extend([30, 10, 20, 20]) == walk_extend([10, 20, 30])  # order, repeats
    assert walk_extend([4, 5, 6]) == 1  # at least one slice
    assert walk_extend([7]) == walk_extend([]) == DEFAULT_EXTEND
    assert walk_extend([10, 30], ends_labeled=True) == 0
    # the propagation reaches that far and no further
    image, truth = wobbly_blob(n=40)
    labeled = [14, 20, 26]
    sparse = np.where(np.isin(np.arange(40), labeled)[:, None, None], truth, 0)
    result = propagate(image, sparse, labeled, 2)
    beyond = walk_extend(labeled)
    assert beyond == 4 and np.flatnonzero(result.covered).tolist() == list(range(10, 31))
    np.testing.assert_array_equal(
        result.probabilities, propagate(image, sparse, labeled, 2, extend=beyond).probabilities
    )


def test_ends_labeled_stops_the_walk_the_targets_and_the_fused_prediction_at_the_ends():
    image, truth = wobbly_blob()
    labeled = [5, 9]
    sparse = np.where(np.isin(np.arange(15), labeled)[:, None, None], truth, 0)
    reach = walk_extend(labeled)
    assert walk_extend(labeled, ends_labeled=True) == 0 and reach == 3  # 0.7 of 4 slices
    # the walk's size (what decides whether it is affordable) follows the range it solves
    assert propagation_voxels((15, 48, 48), labeled, ends_labeled=True) == 5 * 48 * 48
    assert propagation_voxels((15, 48, 48), labeled) == (5 + 2 * reach) * 48 * 48
    ends = propagation_prior(image[:, 0], sparse, labeled, 0, 2, ends_labeled=True)
    wide = propagation_prior(image[:, 0], sparse, labeled, 0, 2)
    outside = np.ones(15, bool)
    outside[5:10] = False
    assert (ends[0][outside] == 1).all()  # background, certain, beyond the ends
    assert wide[1][4].max() > 0.5  # the default reaches on: the blob goes on there
    np.testing.assert_allclose(ends[:, 5:10], wide[:, 5:10], atol=0.05)
    # a fused prediction is background wherever the prior is certain background, whatever
    # the network says (the prior's weight is 0.5 and ties go to background)
    bundle = create_model(
        "supervised", {"channels": "4,8,16,32,64"}, 1, 2, seed=0, axis=0, patch_size=48
    )
    fused = predict_volume(bundle, image[:, 0], maps=(), prior=ends)
    assert not fused.labels[outside].any()
    # the training targets: no prior slice beyond the ends
    volumes, _ = make_volumes([image[:, 0]], [sparse], 0, [labeled])
    stopped = SliceSampler(volumes, patch_size=48, prior_fraction=0.5, ends_labeled=True)
    reaching = SliceSampler(volumes, patch_size=48, prior_fraction=0.5)
    assert sorted(s for _, s in stopped.prior_index) == [6, 7, 8]
    assert {s for _, s in reaching.prior_index} > {6, 7, 8}


def test_the_recipe_records_ends_labeled_in_the_model():
    image, truth = wobbly_blob()
    labeled = [5, 9]
    sparse = np.where(np.isin(np.arange(15), labeled)[:, None, None], truth, 0)
    params = {"channels": "4,8,16,32,64"}
    for ends in (True, False):
        recipe = RunRecipe(method="supervised", params=params, iterations=1, ends_labeled=ends)
        run = build_run(recipe, [image[:, 0]], [sparse], [labeled])
        assert run.bundle.info["ends_labeled"] is ends
        trained = {s for v, s in run.sampler.prior_index if v == 0}  # (0: the volume itself)
        # with the ends: the walk's slices between them, and every slice beyond as background
        beyond = walk_extend(labeled)
        reach = range(15) if ends else range(5 - beyond, 10 + beyond)
        assert trained == set(reach) - {5, 9}
        targets, weights = run.sampler.prior_targets[0]
        if ends:
            assert not targets[:5].any() and (weights[:5] == 1).all()
    off = RunRecipe(method="supervised", params=params, iterations=1, ends_labeled=True,
                    background_beyond_ends=False)  # fmt: skip
    run = build_run(off, [image[:, 0]], [sparse], [labeled])
    assert max(s for v, s in run.sampler.prior_index if v == 0) == 8


@pytest.mark.parametrize("prior", ["propagation", "interpolation"])
def test_background_beyond_the_ends_trains_those_slices_as_background(prior):
    image, truth = wobbly_blob()
    labeled = [5, 9]
    sparse = np.where(np.isin(np.arange(15), labeled)[:, None, None], truth, 0)
    volumes, _ = make_volumes([image[:, 0]], [sparse], 0, [labeled])
    on = SliceSampler(volumes, patch_size=48, prior_fraction=0.5, prior=prior,
                      ends_labeled=True, background_beyond_ends=True)  # fmt: skip
    beyond = [s for s in range(15) if not 5 <= s <= 9]
    assert sorted(s for _, s in on.prior_index) == sorted(beyond + [6, 7, 8])
    targets, weights = on.prior_targets[0]
    assert not targets[beyond].any() and (weights[beyond] == 1).all()
    # inside the ends the prior's own targets and weights are untouched
    off = SliceSampler(volumes, patch_size=48, prior_fraction=0.5, prior=prior, ends_labeled=True)
    np.testing.assert_array_equal(targets[5:10], off.prior_targets[0][0][5:10])
    np.testing.assert_array_equal(weights[5:10], off.prior_targets[0][1][5:10])
    # without the ends labeled the option changes nothing (the structure may go on there)
    loose = SliceSampler(volumes, patch_size=48, prior_fraction=0.5, prior=prior,
                         background_beyond_ends=True)  # fmt: skip
    plain = SliceSampler(volumes, patch_size=48, prior_fraction=0.5, prior=prior)
    assert loose.prior_index == plain.prior_index


def test_flow_interpolation_carries_the_outline_along_the_image():
    from src_models.flow_interpolation import flow_interpolate
    from src_models.interpolation import interpolate_slices

    image, truth = wobbly_blob(n=9, size=48, seed=1)
    labeled = [0, 8]  # the blob goes up and comes back between them: interpolation
    sparse = np.where(np.isin(np.arange(9), labeled)[:, None, None], truth, 0)
    flow = flow_interpolate(image[:, 0], sparse, labeled, 2)
    assert flow.probabilities.shape == (2, 9, 48, 48)
    assert flow.covered.tolist() == [0 < s < 8 for s in range(9)]
    np.testing.assert_allclose(flow.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(flow.probabilities[1, labeled], truth[labeled])
    ours = slice_dice(flow.probabilities.argmax(0), truth, labeled)
    straight = slice_dice(interpolate_slices(sparse, labeled, 2).labels, truth, labeled)
    assert ours > 0.85 and ours > straight + 0.15, (ours, straight)
    # a partly annotated labeled slice is no anchor: the gap runs across it
    partial = sparse.copy()
    partial[4] = np.where(np.arange(48)[None, :] < 24, truth[4], IGNORE)
    across = flow_interpolate(image[:, 0], partial, [0, 4, 8], 2)
    assert across.covered[4]
    np.testing.assert_allclose(across.probabilities, flow.probabilities, atol=1e-6)


def test_the_propagation_blends_the_walk_with_the_flow_between_labeled_slices():
    from src_models.flow_interpolation import DEFAULT_WEIGHT, flow_interpolate
    from src_models.propagation import _scaled

    image, truth = wobbly_blob(size=64)
    labeled = [3, 7, 11]
    sparse = np.where(np.isin(np.arange(15), labeled)[:, None, None], truth, 0)
    walk = propagate(image, sparse, labeled, 2, flow_share=0.0)
    both = propagate(image, sparse, labeled, 2)
    assert not np.array_equal(both.probabilities, walk.probabilities)
    flow = flow_interpolate(_scaled(image)[..., 0], sparse, labeled, 2)
    between = [s for s in range(4, 11) if s != 7]
    np.testing.assert_allclose(
        both.probabilities[:, between],
        (1 - DEFAULT_WEIGHT) * walk.probabilities[:, between]
        + DEFAULT_WEIGHT * flow.probabilities[:, between],
        atol=1e-5,
    )
    # the labeled slices and the walk's extension beyond them: the walk's alone
    outside = [0, 1, 2, 3, 7, 11, 12, 13, 14]
    np.testing.assert_array_equal(both.probabilities[:, outside], walk.probabilities[:, outside])
    assert slice_dice(both.labels, truth, labeled) > 0.9
    # slices under MIN_SIDE pixels on a side (the hippocampus's): the walk alone
    small_image, small_truth = wobbly_blob(size=48)
    small = np.where(np.isin(np.arange(15), labeled)[:, None, None], small_truth, 0)
    np.testing.assert_array_equal(
        propagate(small_image, small, labeled, 2).probabilities,
        propagate(small_image, small, labeled, 2, flow_share=0.0).probabilities,
    )
