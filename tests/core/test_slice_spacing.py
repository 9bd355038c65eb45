"""Gaps between labeled slices counted in pixels on slices thicker than their pixels
(src_models.slice_spacing): the walk's edge weight, the areas' longest gap, the training
prior, from the CLI's reader to the plugin's layer scale."""

from __future__ import annotations

import numpy as np
import pytest

from src_models.area_profile import MAX_GAP, area_profile, volume_area_profile
from src_models.data import make_volumes
from src_models.data.sampler import propagation_targets
from src_models.errors import SemisegError
from src_models.flow_interpolation import DEFAULT_WEIGHT, THICK_WEIGHT, flow_weight
from src_models.propagation import (
    DEFAULT_BETA,
    MIN_BETA,
    propagate,
    propagate_volume,
    propagation_prior,
    walk_beta,
)
from src_models.slice_spacing import slice_ratio


def test_the_ratio_is_the_slice_spacing_over_the_finest_pixel():
    assert slice_ratio((1.0, 1.0, 1.0), 0) == 1.0
    assert slice_ratio((2.5, 0.625, 0.625), 0) == pytest.approx(4.0)
    assert slice_ratio((0.5, 0.8, 3.0), 2) == pytest.approx(6.0)  # the finest in-plane pixel
    assert slice_ratio((0.5, 2.0, 2.0), 0) == pytest.approx(0.25)  # thinner than the pixels
    assert slice_ratio((7.0, 3.0, 1.0, 1.0), 0) == pytest.approx(3.0)  # C, Z, Y, X
    for unknown in (None, (), (1.0, 1.0), (0.0, 1.0, 1.0), (float("nan"), 1.0, 1.0)):
        assert slice_ratio(unknown, 0) == 1.0


def test_the_walk_counts_the_gaps_in_pixels():
    # every 4th slice of an isotropic volume: 3 slices apart = 12 pixels apart
    assert walk_beta([0, 3, 6], ratio=4.0) == walk_beta([0, 12, 24])
    assert walk_beta([0, 3, 6]) == MIN_BETA < walk_beta([0, 3, 6], ratio=4.0)
    assert walk_beta([0, 5, 10], ratio=4.0) == DEFAULT_BETA
    assert walk_beta([0, 12, 24], ratio=0.25) == walk_beta([0, 3, 6])


def test_the_areas_longest_gap_is_counted_in_pixels():
    labels = np.zeros((30, 8, 8), np.int64)
    for s in range(30):
        labels[s, : 1 + s // 4, :4] = 1  # the area grows along the slices
    labeled = [0, 6, 12]
    assert np.isfinite(area_profile(labels, labeled)[[3, 9]]).all()  # 6 slices: under MAX_GAP
    thick = area_profile(labels, labeled, ratio=MAX_GAP / 6 + 0.1)
    assert np.isnan(thick).all()  # 6 thick slices are more than MAX_GAP pixels
    at_limit = area_profile(labels, labeled, ratio=MAX_GAP / 6)
    np.testing.assert_array_equal(at_limit, area_profile(labels, labeled))
    volume = np.moveaxis(labels, 0, 2)  # the same slices along X
    np.testing.assert_array_equal(
        volume_area_profile(volume, labeled, 2, spacing=(1.0, 1.0, 3.0)),
        area_profile(labels, labeled, ratio=3.0),
    )
    assert np.isnan(volume_area_profile(volume, labeled, 2, spacing=(1.0, 1.0, 3.0))).all()
    # spacing along the other axes does not count
    np.testing.assert_array_equal(
        volume_area_profile(volume, labeled, 2, spacing=(5.0, 1.0, 1.0)),
        area_profile(labels, labeled),
    )


def noisy_tube(n: int = 12, size: int = 40, seed: int = 0):
    """A (N, 1, H, W) image of a noisy bright disc whose radius changes along the slices and
    its (N, H, W) labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.stack(
        [((yy - 20) ** 2 + (xx - 20) ** 2 <= (6 + 4 * np.sin(s / 3)) ** 2) for s in range(n)]
    ).astype(np.int64)
    image = labels + rng.normal(0, 0.4, labels.shape)
    return image[:, None].astype(np.float32), labels


def test_the_propagation_walks_with_the_spacing_it_is_given():
    image, labels = noisy_tube()
    labeled = [0, 4, 8, 11]
    sparse = np.where(np.isin(np.arange(12), labeled)[:, None, None], labels, 0)
    thick = propagate(image, sparse, labeled, 2, ratio=4.0)
    ruled = propagate(image, sparse, labeled, 2, beta=walk_beta(labeled, 4.0), ratio=4.0)
    np.testing.assert_array_equal(thick.probabilities, ruled.probabilities)
    np.testing.assert_array_equal(thick.labels, ruled.labels)
    slices = propagate(image, sparse, labeled, 2)
    assert np.abs(thick.probabilities - slices.probabilities).max() > 0.05
    # the volume functions take the voxel spacing along their axis: slices along Y here
    vol_image, vol_sparse = np.moveaxis(image[:, 0], 0, 1), np.moveaxis(sparse, 0, 1)
    spacing = (1.0, 4.0, 1.0)
    ids = propagate_volume(vol_image, vol_sparse, labeled, 1, 2, spacing=spacing)
    np.testing.assert_array_equal(np.moveaxis(ids, 1, 0), thick.labels)
    prior = propagation_prior(vol_image, vol_sparse, labeled, 1, 2, spacing=spacing)
    np.testing.assert_array_equal(np.moveaxis(prior, 2, 1), thick.probabilities)
    isotropic = propagate_volume(vol_image, vol_sparse, labeled, 1, 2, spacing=(4.0, 1.0, 1.0))
    np.testing.assert_array_equal(np.moveaxis(isotropic, 1, 0), slices.labels)


def test_volumes_carry_their_ratio_to_the_training_prior():
    image, labels = noisy_tube()
    labeled = [0, 4, 8, 11]
    sparse = np.where(np.isin(np.arange(12), labeled)[:, None, None], labels, 0)
    volumes, k = make_volumes(
        [image[:, 0], image[:, 0]],
        [sparse, sparse],
        0,
        [labeled, labeled],
        spacings=[(4.0, 1.0, 1.0), None],
    )
    assert [v.slice_ratio for v in volumes] == [4.0, 1.0]
    targets, _, walk = propagation_targets(volumes[0], labeled, k)
    expected = propagate(volumes[0].slices, sparse, labeled, k, match_areas=False, ratio=4.0)
    np.testing.assert_array_equal(walk.probabilities, expected.probabilities)
    _, _, plain = propagation_targets(volumes[1], labeled, k)
    assert np.abs(walk.probabilities - plain.probabilities).max() > 0.05
    with pytest.raises(SemisegError, match="voxel spacing"):
        make_volumes([image[:, 0]], [sparse], 0, [labeled], spacings=[None, None])


def test_the_flow_takes_a_larger_share_between_thick_slices():
    assert flow_weight(1.0) == DEFAULT_WEIGHT and flow_weight(0.25) == DEFAULT_WEIGHT
    assert flow_weight(2.0) == pytest.approx(THICK_WEIGHT) == flow_weight(6.0)
    assert DEFAULT_WEIGHT < flow_weight(1.5) < THICK_WEIGHT
    image, labels = noisy_tube(size=64)  # slices large enough for the flow
    labeled = [0, 4, 8, 11]
    sparse = np.where(np.isin(np.arange(12), labeled)[:, None, None], labels, 0)
    walk = propagate(image, sparse, labeled, 2, ratio=4.0, flow_share=0.0)
    flow = propagate(image, sparse, labeled, 2, ratio=4.0, flow_share=1.0)
    thick = propagate(image, sparse, labeled, 2, ratio=4.0)
    between = [1, 2, 3, 5, 6, 7, 9, 10]
    np.testing.assert_allclose(
        thick.probabilities[:, between],
        (1 - THICK_WEIGHT) * walk.probabilities[:, between]
        + THICK_WEIGHT * flow.probabilities[:, between],
        atol=1e-5,
    )
