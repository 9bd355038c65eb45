"""Labeled-slice detection/override, normalisation, sampling and input validation."""

import numpy as np
import pytest
import torch

from src_models.data import SliceSampler, fit_normalization, make_volumes
from src_models.data.volumes import from_slices, to_slices
from src_models.errors import SemisegError


def sparse_labels(labels: np.ndarray, keep: list[int], axis: int = 0) -> np.ndarray:
    out = np.zeros_like(labels)
    idx = [slice(None)] * 3
    for k in keep:
        idx[axis] = k
        out[tuple(idx)] = labels[tuple(idx)]
    return out


def test_labeled_slices_detected_from_nonzero_labels(tiny_volume):
    image, labels = tiny_volume
    vols, k = make_volumes([image], [sparse_labels(labels, [2, 7])])
    assert k == 3
    assert vols[0].labeled == [2, 7]
    assert vols[0].unlabeled == [i for i in range(12) if i not in (2, 7)]


def test_explicit_labeled_slices_override_and_allow_background_slice(tiny_volume):
    image, labels = tiny_volume
    sparse = sparse_labels(labels, [2, 7])
    sparse[5] = 0  # an all-background slice the user labeled on purpose
    vols, _ = make_volumes([image], [sparse], labeled_slices=[[5, 2]])
    assert vols[0].labeled == [2, 5]
    assert 7 in vols[0].unlabeled


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slicing_round_trip_along_any_axis(tiny_volume, axis):
    image, labels = tiny_volume
    vols, _ = make_volumes([image], [labels], axis=axis)
    assert vols[0].slices.shape[0] == image.shape[axis]
    back = from_slices(vols[0].labels, axis)
    np.testing.assert_array_equal(back, labels)
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(from_slices(to_slices(x, axis), axis), x)


def test_normalisation_round_trip_and_statistics(tiny_volume):
    image, _ = tiny_volume
    norm = fit_normalization(image[None])
    z = norm.apply(image[None])
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-3
    back = norm.invert(z)[0]
    np.testing.assert_allclose(
        back, np.clip(image, norm.low[0], norm.high[0]), rtol=1e-4, atol=1e-3
    )
    assert norm.from_dict(norm.to_dict()) == norm


def test_multichannel_volume(tiny_volume):
    image, labels = tiny_volume
    vols, _ = make_volumes([np.stack([image, -image])], [labels])
    assert vols[0].slices.shape == (12, 2, 40, 36)


def test_sampler_batches_shapes_pad_and_holdout(tiny_volume):
    image, labels = tiny_volume
    few = [1, 4, 6, 9]
    vols, _ = make_volumes([image], [sparse_labels(labels, few)])
    s = SliceSampler(vols, patch_size=48, batch_size=5, seed=1, holdout_fraction=0.25)
    assert s.holdout == [] and len(s.labeled_index) == 4  # too few to hold one out
    eight = [0, 1, 2, 4, 5, 6, 8, 9]  # fewer than MIN_HOLDOUT_LABELED (10): all trained on
    vols, _ = make_volumes([image], [sparse_labels(labels, eight)])
    s = SliceSampler(vols, patch_size=48, batch_size=5, seed=1, holdout_fraction=0.25)
    assert s.holdout == [] and len(s.labeled_index) == 8
    many = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10]
    vols, _ = make_volumes([image], [sparse_labels(labels, many)])
    s = SliceSampler(vols, patch_size=48, batch_size=5, seed=1, holdout_fraction=0.25)
    assert len(s.holdout) == 2 and len(s.labeled_index) == 8, s.holdout
    b = s.labeled()
    assert b.image.shape == (5, 1, 48, 48) and b.label.shape == (5, 48, 48)
    assert b.label.dtype == torch.int64 and set(b.label.unique().tolist()) <= {0, 1, 2}
    u = s.unlabeled(3)
    assert u.image.shape == (3, 1, 48, 48) and u.label is None
    hb = s.holdout_batch()
    assert hb.image.shape[0] == 2
    # same seed -> same batches (reproducible)
    s2 = SliceSampler(vols, patch_size=48, batch_size=5, seed=1, holdout_fraction=0.25)
    torch.testing.assert_close(
        s2.labeled().image,
        SliceSampler(vols, patch_size=48, batch_size=5, seed=1, holdout_fraction=0.25)
        .labeled()
        .image,
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda im, lb: ([im], [lb[:-1]]), "must match"),
        (lambda im, lb: ([im], [np.zeros_like(lb)]), "no labeled slice"),
        (lambda im, lb: ([im], [lb + 0.5]), "non-integer"),
        (lambda im, lb: ([im], [lb.astype(int) - 2]), "negative"),
        (lambda im, lb: ([im], [lb.astype(int) * 40]), "instance mask"),  # -1 is IGNORE
        (lambda im, lb: ([np.where(lb > 0, np.nan, im)], [lb]), "NaN"),
        (lambda im, lb: ([np.full_like(im, 3.0)], [lb]), "constant"),
        (lambda im, lb: ([im[:, :4, :]], [lb[:, :4, :]]), "smaller than the minimum"),
        (lambda im, lb: ([im[0]], [lb[0]]), "expected a 3D image"),
    ],
)
def test_bad_input_gives_clear_error(tiny_volume, make, message):
    image, labels = tiny_volume
    images, lbls = make(image, labels)
    with pytest.raises(SemisegError, match=message):
        make_volumes(images, lbls)


def test_bad_axis_class_count_and_slice_index(tiny_volume):
    image, labels = tiny_volume
    with pytest.raises(SemisegError, match="axis 3"):
        make_volumes([image], [labels], axis=3)
    with pytest.raises(SemisegError, match="classes"):
        make_volumes([image], [labels], num_classes=2)
    with pytest.raises(SemisegError, match="out of range"):
        make_volumes([image], [labels], labeled_slices=[[40]])


def test_a_constant_channel_of_a_colour_image_is_kept_not_refused():
    # issue 21, item 13: a two-colour RGB image (its blue channel empty)
    rng = np.random.default_rng(0)
    image = np.stack([rng.random((4, 8, 8)), rng.random((4, 8, 8)), np.zeros((4, 8, 8))])
    norm = fit_normalization(image.astype(np.float32))
    out = norm.apply(image.astype(np.float32))
    assert np.all(out[2] == 0) and np.all(np.isfinite(out))
    assert abs(float(out[0].mean())) < 1e-3 and abs(float(out[0].std()) - 1) < 1e-2
    with pytest.raises(SemisegError, match="every channel of the image is constant"):
        fit_normalization(np.zeros((2, 4, 8, 8), np.float32))
    with pytest.raises(SemisegError, match="beyond what float32 holds"):
        fit_normalization(np.full((1, 2, 4, 4), 1e39) * np.arange(32).reshape(1, 2, 4, 4))
