"""Multi-planar training and prediction: the volume cut along all three axes."""

import numpy as np
import pytest
import torch

from src_models.data import SliceSampler, make_volumes
from src_models.data.label_values import IGNORE
from src_models.data.planes import (
    averaged_axes,
    check_planes,
    cross_axes,
    cross_sections,
    describe_planes,
)
from src_models.errors import SemisegError
from src_models.inference import predict_volume
from src_models.recipe import RunRecipe, build_run, default_planes
from src_models.training import TrainConfig, load_model, save_model, train
from src_models.training.checkpoint import read_metadata
from src_models.training.fit import FIT_MARGIN, mean_slice_dice, plane_fits

TINY = {"channels": "4,8,16,32,64"}


def _sparse(labels, keep):
    sparse = np.zeros(labels.shape, np.int64)
    sparse[keep] = labels[keep]
    return sparse


def test_planes_are_checked_and_small_axes_left_out():
    assert check_planes(1) == 1 and check_planes(np.int64(3)) == 3
    for bad in (0, 2, 4, 3.0, True, "3"):
        with pytest.raises(SemisegError, match="--planes must be 1 .* or 3"):
            check_planes(bad, "--planes")
    assert cross_axes(0, (12, 40, 36)) == [1, 2]
    # cut along Y, a slice is 12 x 36; a volume of 5 slices has no cross-section of 8 pixels
    assert cross_axes(0, (5, 40, 36)) == []
    assert cross_axes(1, (12, 40, 6)) == [2]  # cut along Z a slice would be 40 x 6


def test_cross_sections_train_on_the_labeled_voxels_and_the_prior_elsewhere(tiny_volume):
    image, labels = tiny_volume
    sparse = _sparse(labels, [2, 6, 9])
    sparse[6, :, :10] = IGNORE  # a region correction: the left part of slice 6 not painted
    (volume,), _ = make_volumes([image], [sparse], labeled_slices=[[2, 6, 9]])
    n, h, w = volume.labels.shape
    targets = np.full((n, h, w), 7, np.int64)  # a prior that says 7 everywhere...
    weights = np.full((n, h, w), 0.25, np.float32)  # ...with weight 0.25
    # held out: slice 9 (its labels must not reach the cross-sections)
    crosses = cross_sections(volume, targets, weights, trained=[2, 6])
    assert [c.volume.axis for c in crosses] == [1, 2]
    along_y, along_x = crosses
    assert along_y.volume.slices.shape == (h, 1, n, w)
    assert along_x.volume.slices.shape == (w, 1, n, h)
    assert along_y.volume.labels is None and along_y.volume.labeled == []
    # the slices are views of the volume, not copies
    assert np.shares_memory(along_y.volume.slices, volume.slices)
    np.testing.assert_array_equal(along_y.volume.slices[5][0], volume.slices[:, 0, 5, :])
    # row s of cross-section y is slice s's row y: labels at full weight where annotated
    t, wt = along_y.targets[5], along_y.weights[5]
    np.testing.assert_array_equal(t[2], labels[2, 5])
    assert (wt[2] == 1).all()
    np.testing.assert_array_equal(t[6, 10:], labels[6, 5, 10:])
    assert (wt[6, 10:] == 1).all()
    assert (t[6, :10] == 7).all() and (wt[6, :10] == 0.25).all()  # unpainted: the prior
    assert (t[9] == 7).all() and (wt[9] == 0.25).all()  # held out: the prior's only
    assert (t[4] == 7).all() and (wt[4] == 0.25).all()
    np.testing.assert_array_equal(along_x.targets[3][:, 12], along_y.targets[12][:, 3])
    # the caller's prior is left as it was
    assert (targets == 7).all() and (weights == 0.25).all()


def test_the_sampler_adds_cross_sections_as_prior_crops(tiny_volume):
    image, labels = tiny_volume
    vols, _ = make_volumes([image], [_sparse(labels, [2, 6, 9])])
    plain = SliceSampler(vols, patch_size=32, batch_size=8, seed=1, prior_fraction=0.5)
    multi = SliceSampler(vols, patch_size=32, batch_size=8, seed=1, prior_fraction=0.5, planes=3)
    assert plain.cross_volumes == 0 and len(plain.volumes) == 1
    assert multi.cross_volumes == 2 and len(multi.volumes) == 3 and len(vols) == 1
    assert multi.labeled_index == plain.labeled_index  # the labeled half: labeled slices only
    cross = {v for v, _ in multi.prior_index} - {0}
    assert cross == {1, 2}
    n_y, n_x = labels.shape[1], labels.shape[2]
    assert len(multi.unlabeled_index) == len(plain.unlabeled_index) + n_y + n_x
    # a cross-section's crop carries the labeled rows as targets
    _, t, w = multi._crop([(1, 20)], 1, True, random=False, source="prior")
    assert t.shape == (1, 32, 32) and float(w.max()) == 1.0
    batch = multi.labeled()
    assert batch.image.shape == (8, 1, 32, 32) and batch.mask is not None
    # without a prior (or with one labeled slice) there is nothing to cut
    none = SliceSampler(vols, patch_size=32, prior_fraction=0.0, planes=3)
    assert none.cross_volumes == 0
    with pytest.raises(SemisegError, match="planes must be 1"):
        SliceSampler(vols, patch_size=32, planes=2)


def test_the_recipe_defaults_and_records_the_planes(tiny_volume, tmp_path):
    image, labels = tiny_volume
    sparse = _sparse(labels, [2, 6, 9])
    assert default_planes("supervised", ends_labeled=True) == 3
    assert default_planes("supervised", ends_labeled=False) == 1
    assert default_planes("sdcl", ends_labeled=True) == 1
    assert RunRecipe(method="supervised", ends_labeled=True).planes == 3
    assert RunRecipe(method="supervised").planes == 1
    assert RunRecipe(method="dfcps", ends_labeled=True).planes == 1
    assert RunRecipe(method="supervised", planes=1).planes == 1
    with pytest.raises(SemisegError, match="--planes must be 1"):
        RunRecipe(planes=2).check({"planes": "--planes"})
    recipe = RunRecipe(method="supervised", params=TINY, iterations=3, patch_size=32, planes=3)
    run = build_run(recipe, [image], [sparse])
    assert run.sampler.cross_volumes == 2 and run.bundle.planes == 3
    assert len(run.volumes) == 1  # the run's own volumes are not extended
    train(run.bundle, run.sampler, TrainConfig(iterations=3, checkpoint_every=0))
    save_model(run.bundle, tmp_path)
    assert read_metadata(tmp_path)["info"]["planes"] == 3
    assert load_model(tmp_path).planes == 3
    # a continued run keeps its model's planes whatever the new recipe says
    again = RunRecipe(method="supervised", params=TINY, iterations=5, patch_size=32, planes=1)
    resumed = build_run(again, [image], [sparse], resume=load_model(tmp_path))
    assert resumed.sampler.cross_volumes == 2 and resumed.bundle.planes == 3
    single = build_run(RunRecipe(method="supervised", params=TINY, planes=1), [image], [sparse])
    assert single.sampler.cross_volumes == 0 and single.bundle.planes == 1


def test_a_multi_planar_model_predicts_the_mean_of_the_three_axes(tiny_volume, tmp_path):
    image, labels = tiny_volume
    recipe = RunRecipe(method="supervised", params=TINY, iterations=40, patch_size=32, planes=3)
    run = build_run(recipe, [image], [_sparse(labels, [2, 6, 9])])
    train(run.bundle, run.sampler, TrainConfig(iterations=40, checkpoint_every=0))
    bundle = run.bundle
    assert set(bundle.info["plane_fits"]) == {"1", "2"}  # the trainer scored both
    views = []
    bundle.info["planes"] = 1
    for axis in (0, 1, 2):  # the same network along each axis alone
        bundle.axis = axis
        p = predict_volume(bundle, image, (), return_probabilities=True, smoothing=0)
        views.append(p.probabilities)
    bundle.axis, bundle.info["planes"] = 0, 3
    # only the axes it fits its labeled slices along join the prediction
    bundle.info["plane_fits"] = {"1": 0.9, "2": 0.3}
    two = predict_volume(bundle, image, return_probabilities=True, smoothing=0)
    np.testing.assert_allclose(two.probabilities, (views[0] + views[1]) / 2, atol=1e-5)
    bundle.info["plane_fits"] = {"1": 0.9, "2": 0.6}
    multi = predict_volume(bundle, image, return_probabilities=True, smoothing=0, slab_size=5)
    np.testing.assert_allclose(multi.probabilities, np.mean(views, axis=0), atol=1e-5)
    assert not np.allclose(views[0], views[1], atol=1e-3)  # the axes do see different slices
    np.testing.assert_array_equal(multi.labels, multi.probabilities.argmax(0))
    # the fused prediction blends the mean of the axes with the prior
    prior = np.zeros_like(multi.probabilities)
    prior[0] = 1.0
    bundle.info["labeled_fit"] = 0.95  # (a model that has not learned gets the prior alone)
    fused = predict_volume(
        bundle, image, return_probabilities=True, smoothing=0, prior=prior, prior_weight=0.25
    )
    np.testing.assert_allclose(
        fused.probabilities, 0.75 * np.mean(views, axis=0) + 0.25 * prior, atol=1e-5
    )
    # a lazy image (read slab by slab) is predicted along the model's axis only
    np.save(tmp_path / "image.npy", image)
    lazy = np.load(tmp_path / "image.npy", mmap_mode="r")
    lazy = predict_volume(bundle, lazy, return_probabilities=True, smoothing=0)
    np.testing.assert_allclose(lazy.probabilities, views[0], atol=1e-5)


def test_semi_supervised_methods_take_unlabeled_crops_from_every_axis(tiny_volume):
    image, labels = tiny_volume
    recipe = RunRecipe(method="dfcps", params=TINY, iterations=2, patch_size=32, planes=3)
    run = build_run(recipe, [image], [_sparse(labels, [2, 6, 9])])
    assert run.sampler.cross_volumes == 2
    torch.manual_seed(0)
    train(run.bundle, run.sampler, TrainConfig(iterations=2, checkpoint_every=0))
    assert run.bundle.iteration == 2 and run.bundle.planes == 3


def test_the_fit_along_a_cross_axis_scores_its_rows_on_the_labeled_slices(tiny_volume):
    image, labels = tiny_volume
    keep = [2, 6, 9]
    recipe = RunRecipe(method="supervised", params=TINY, iterations=30, patch_size=32, planes=3)
    run = build_run(recipe, [image], [_sparse(labels, keep)])
    train(run.bundle, run.sampler, TrainConfig(iterations=30, checkpoint_every=0))
    fits = plane_fits(run.bundle.method, run.sampler)
    assert set(fits) == {1, 2}
    bundle = run.bundle
    bundle.info["planes"] = 1
    for axis, fit in fits.items():  # the same score from the volume predicted along it
        bundle.axis = axis
        ids = predict_volume(bundle, image, (), smoothing=0).labels.astype(int)
        fg = (labels[keep] > 0).any(axis=tuple(b for b in (0, 1, 2) if b != axis))
        lo, hi = np.flatnonzero(fg)[[0, -1]]
        band = [slice(None)] * 3
        band[axis] = slice(max(0, lo - FIT_MARGIN), hi + FIT_MARGIN + 1)
        want = mean_slice_dice((ids[s][tuple(band[1:])], labels[s][tuple(band[1:])]) for s in keep)
        assert fit == pytest.approx(want, abs=0.02)
    # a network that has not learned the cross axes is not averaged with them
    assert averaged_axes(0, labels.shape, {"1": 0.59, "2": 0.61}) == [2]
    assert averaged_axes(0, labels.shape, None) == []
    said = describe_planes(0, {"1": 0.59, "2": 0.61})
    assert "Dice 0.59 along axis 1 and 0.61 along axis 2" in said
    assert "average axis 0 with axis 2" in said
    assert describe_planes(0, {"1": 0.3}).endswith(
        "predictions use axis 0 only (a cross axis joins from 0.6)"
    )
