"""2.5D inputs: each slice with its neighbours as channels, alike in training and prediction."""

import json

import numpy as np
import pytest
import torch

from src_models.data import SliceSampler, make_volumes
from src_models.data.context import (
    check_context,
    context_channels,
    context_of,
    slice_with_context,
    stack_context,
)
from src_models.errors import SemisegError
from src_models.inference import predict_training_slice, predict_volume
from src_models.recipe import RunRecipe, build_run
from src_models.training import TrainConfig, load_model, save_model, train
from src_models.training.checkpoint import read_metadata

TINY = {"channels": "4,8,16,32,64"}


def _numbered(n=6, c=2, h=3, w=4):
    """(n, c, h, w) slices whose every value is the slice index times 10 plus the channel."""
    return (np.arange(n)[:, None, None, None] * 10 + np.arange(c)[None, :, None, None]) * (
        np.ones((1, 1, h, w))
    )


def test_a_slice_comes_with_its_neighbours_and_the_edges_repeat():
    slices = _numbered()
    middle = slice_with_context(slices, 3, 1)
    assert middle.shape == (6, 3, 4)
    assert middle[:, 0, 0].tolist() == [20, 21, 30, 31, 40, 41]  # s-1, s, s+1, per channel
    first = slice_with_context(slices, 0, 2)
    assert first[:, 0, 0].tolist() == [0, 1, 0, 1, 0, 1, 10, 11, 20, 21]
    last = slice_with_context(slices, 5, 1)
    assert last[:, 0, 0].tolist() == [40, 41, 50, 51, 50, 51]
    np.testing.assert_array_equal(slice_with_context(slices, 2, 0), slices[2])


@pytest.mark.parametrize("context", [1, 2])
def test_a_slab_with_its_halo_stacks_like_single_slices(context):
    slices = _numbered(n=9)
    want = np.stack([slice_with_context(slices, s, context) for s in range(9)])
    for s0, s1 in ((0, 3), (3, 6), (6, 9), (0, 9)):
        h0, h1 = max(0, s0 - context), min(9, s1 + context)
        got = stack_context(slices[h0:h1], context, s0 - h0, h1 - s1)
        np.testing.assert_array_equal(got, want[s0:s1])


def test_context_values_are_checked_and_channels_follow():
    assert check_context(2) == 2 and check_context(np.int64(1)) == 1
    for bad in (-1, 4, 1.5, True, "1"):
        with pytest.raises(SemisegError, match="context slices"):
            check_context(bad)
    with pytest.raises(SemisegError, match="--context-slices must be between 0 and 3"):
        check_context(9, "--context-slices")
    assert context_channels(2, 1) == 6 and context_of(6, 2) == 1 and context_of(5, 1) == 2
    with pytest.raises(SemisegError, match="cannot take"):
        context_of(4, 1)


def test_the_sampler_feeds_the_middle_slice_between_its_neighbours(tiny_volume):
    image, labels = tiny_volume
    vols, _ = make_volumes([image], [labels])
    plain = SliceSampler(vols, patch_size=32, batch_size=4, seed=3, augment=False)
    wide = SliceSampler(vols, patch_size=32, batch_size=4, seed=3, augment=False, context=1)
    assert (plain.in_channels, wide.in_channels) == (1, 3)
    a, b = plain.labeled(), wide.labeled()
    assert b.image.shape == (4, 3, 32, 32)
    torch.testing.assert_close(b.image[:, 1:2], a.image)  # same crops, the slice in the middle
    torch.testing.assert_close(b.label, a.label)
    assert not torch.equal(b.image[:, 0], b.image[:, 1])  # the neighbours differ from it


def test_a_context_run_trains_saves_and_predicts_as_it_trained(tiny_volume, tmp_path):
    image, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[[2, 6, 9]] = labels[[2, 6, 9]]
    recipe = RunRecipe(
        method="supervised", params={**TINY, "lr": 0.01}, iterations=60, patch_size=32,
        batch_size=4, context_slices=1, prior_fraction=0.0,
    )  # fmt: skip
    run = build_run(recipe, [image], [sparse])
    assert run.bundle.method.in_channels == 3 and run.bundle.image_channels == 1
    train(run.bundle, run.sampler, TrainConfig(iterations=60, checkpoint_every=0))
    save_model(run.bundle, tmp_path)
    assert read_metadata(tmp_path)["info"]["context_slices"] == 1
    bundle = load_model(tmp_path)
    assert bundle.context_slices == 1
    # the halo around each slab makes slab-by-slab prediction equal to the whole volume's
    whole = predict_volume(bundle, image, slab_size=1000, return_probabilities=True)
    slabs = predict_volume(bundle, image, slab_size=4, batch_size=3, return_probabilities=True)
    np.testing.assert_allclose(whole.probabilities, slabs.probabilities, atol=1e-5)
    fg = labels > 0
    dice = 2 * (fg & (whole.labels > 0)).sum() / (fg.sum() + (whole.labels > 0).sum())
    assert dice > 0.7  # it learned from 3 slices with their neighbours
    # the trainer's look at a training slice stacks the neighbours the same way
    seen = predict_training_slice(bundle.method, run.volumes[0], 5)
    assert seen.shape == whole.labels[5].shape
    assert (seen == whole.labels[5]).mean() > 0.99  # (batch sizes differ: ties may flip)
    with pytest.raises(SemisegError, match="expects 1 channel"):
        predict_volume(bundle, np.stack([image, image]))
    # a model.json whose context does not fit its channels is refused, not mis-stacked
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["info"]["context_slices"] = 2
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(SemisegError, match="context_slices 2"):
        load_model(tmp_path)


def test_a_continued_run_keeps_its_models_context(tiny_volume, tmp_path):
    image, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[[2, 9]] = labels[[2, 9]]
    first = RunRecipe(method="supervised", params=TINY, iterations=2, patch_size=32,
                      context_slices=2, prior_fraction=0.0)  # fmt: skip
    run = build_run(first, [image], [sparse])
    train(run.bundle, run.sampler, TrainConfig(iterations=2, checkpoint_every=0))
    again = RunRecipe(method="supervised", params=TINY, iterations=4, patch_size=32,
                      prior_fraction=0.0)  # fmt: skip
    resumed = build_run(again, [image], [sparse], resume=run.bundle)
    assert resumed.sampler.in_channels == 5 and resumed.bundle.context_slices == 2
    train(resumed.bundle, resumed.sampler, TrainConfig(iterations=4, checkpoint_every=0))
    assert resumed.bundle.iteration == 4
