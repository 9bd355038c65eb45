"""Image-aware propagation of the labeled slices, no training: a random walker.

Shape-based interpolation (:mod:`src_models.interpolation`) morphs one labeled outline into
the next without looking at the image. A random walker (Grady 2006) seeded by the labeled
slices follows the image's edges instead: each voxel takes the class whose seeds a random
walk, held back by intensity edges (edge weight ``exp(-beta * d_intensity^2)``), is most
likely to reach first. That is the idea behind Biomedisa's "smart interpolation", and it is
the best zero-training result the product computes: on the development volumes it beats
interpolation by 1-15 Dice points (docs/benchmarks.md, "annotation effort"), in seconds.

Choices, measured on 5 left-atrium and 5 hippocampus volumes, both sparse-slice protocols
(``benchmarks/annotation_effort.py``):

- ``beta`` 400 on intensities scaled to [0, 1] (0.5-99.5 percentiles) across long gaps:
  sharper edges than skimage's 130 (left atrium, 4 slices with the ends: 0.884 against
  0.868; 50: 0.852). Between labeled slices closer than 9.4 slices on average it falls with
  the square of their spacing (:func:`walk_beta`): hippocampus, 10 volumes, 5 / 6 / 8
  slices with the ends 0.872 / 0.890 / 0.903 at 400, 0.881 / 0.902 / 0.919 with the rule
  (10/10 volumes better each), 3 / 4 / 6 strictly inside +0.8 / +1.1 / +1.5 points.
- ``extend``: the walk may carry the structure beyond the outer labeled slices
  (interpolation stops there), 0.7 of their mean spacing (:func:`walk_extend`; 3 slices
  until stop 40). When the user labeled slices strictly inside the structure this recovers
  its ends (hippocampus, 3 slices: 0.852 at 3 slices against 0.709 at 0); when the
  outer labeled slices are the structure's ends it costs about half a point, so a user who
  labeled the structure's first and last slices says so (``ends_labeled``: the CLI's
  ``--ends-labeled``, the dock's "Labeled slices include the first and last"), and the walk
  stops at them (:func:`walk_extend`); the product's fused prediction then stops there too,
  and training takes the slices beyond them as background
  (:attr:`src_models.recipe.RunRecipe.background_beyond_ends`).
- Between labeled slices the walk's probabilities are blended (weight
  :data:`~src_models.flow_interpolation.DEFAULT_WEIGHT`, 0.2; 0.4 on slices twice their
  pixels apart or more, :func:`~src_models.flow_interpolation.flow_weight`) with the
  registration-guided interpolation (:mod:`src_models.flow_interpolation`: the labeled
  outlines carried along the optical flow between neighbouring slices): the walk follows
  edges voxel by voxel, the flow keeps the labeled shape, and they fail on different
  volumes (left atrium, 4 / 5 / 6 slices with the ends: 0.881 / 0.888 / 0.913 walk alone,
  0.896 / 0.898 / 0.919 blended); not on slices with a side under 64 pixels (the
  hippocampus: −2.1 to +0.6 per volume).
- The mask (not the probabilities) of each slice between two labeled ones moves halfway
  towards the area a curve through the labeled slices' areas gives there
  (:mod:`src_models.area_profile`): the walk, like shape interpolation, shrinks a structure
  too fast towards a small end slice (hippocampus, 4 slices with the ends, 10 volumes:
  0.856 → 0.863). The training targets keep the walk's own class ids (``match_areas``).
- Seeding the walk also with the interpolation's sure voxels between labeled slices (so the
  image decides only a band around the interpolated outline) measured worse than seeding
  with the labeled slices alone (left atrium, 4 slices: 0.854 against 0.863), and was dropped.

Conventions as :mod:`interpolation`: slices first, (N, C, H, W) images (any scale) and
(N, H, W) int labels, :data:`~src_models.data.label_values.IGNORE` (-1) for unannotated
voxels of a labeled slice, which the walk decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from src_models.area_profile import area_profile
from src_models.area_profile import match_areas as area_matched
from src_models.flow_interpolation import flow_applies, flow_interpolate, flow_weight
from src_models.slice_spacing import slice_ratio

#: the random walker's edge weight on intensities scaled to [0, 1], for labeled slices
#: (DEFAULT_BETA / BETA_PER_GAP2) ** 0.5 = 9.4 or more slices apart on average
DEFAULT_BETA = 400.0
#: closer labeled slices walk with a weaker edge weight, ``BETA_PER_GAP2 * gap ** 2``, down
#: to :data:`MIN_BETA` (:func:`walk_beta`)
BETA_PER_GAP2 = 4.5
MIN_BETA = 50.0
#: slices beyond the outer labeled ones the walk may reach when one slice is labeled
DEFAULT_EXTEND = 3
#: with more, the walk reaches this share of their mean spacing beyond the outer ones (at
#: least 1 slice): where the user left gaps of ``g`` slices between labeled slices, the
#: structure goes on for about as far beyond them (:func:`walk_extend`)
EXTEND_SHARE = 0.7
#: the walk's linear system grows with the voxels of the labeled range: above this many
#: (about 30 s on one CPU core) the product falls back to the interpolation (a prior for
#: training, the plugin's preview) and fuses nothing; ``semiseg train --method propagate``
#: runs anyway
MAX_VOXELS = 8 * 2**20


def _mean_gap(labeled: Sequence[int]) -> float | None:
    """The mean spacing, in slices, of the distinct ``labeled`` slices (None: fewer than 2)."""
    done = sorted({int(s) for s in labeled})
    return (done[-1] - done[0]) / (len(done) - 1) if len(done) > 1 else None


def walk_extend(labeled: Sequence[int] = (), ends_labeled: bool = False) -> int:
    """Slices the walk may reach beyond the outer ``labeled`` ones: none when the user
    labeled the structure's first and last slices; otherwise :data:`EXTEND_SHARE` of the
    labeled slices' mean spacing, at least 1 (one labeled slice: :data:`DEFAULT_EXTEND`).
    Counted in slices, not pixels: it follows how the user spaced the slices along the
    structure. Strictly inside, mean Dice of 3 / 4 / 5 / 6 slices against the fixed 3
    slices of before: hippocampus (10 volumes, mean spacing 5.3 to 3.1 slices) +1.1 / +0.1
    / −0.2 / +0.6 points, left atrium (5 volumes, 13.5 to 7.9 slices; 0.6 and 0.8 of the
    spacing) +3.3 / +1.6 / +1.1 / +0.7, better on every volume; on thick slices (every 2nd
    hippocampus slice, every 4th left-atrium slice, 3 / 4 slices) +1.3 to +3.3."""
    if ends_labeled:
        return 0
    gap = _mean_gap(labeled)
    return DEFAULT_EXTEND if gap is None else max(1, int(round(EXTEND_SHARE * gap)))


def walk_beta(labeled: Sequence[int], ratio: float = 1.0) -> float:
    """The walk's edge weight for ``labeled`` slices: :data:`BETA_PER_GAP2` times the square
    of their mean spacing in pixels (slices times ``ratio``, a slice's spacing over its
    pixel's: :func:`~src_models.slice_spacing.slice_ratio`), between :data:`MIN_BETA` and
    :data:`DEFAULT_BETA` (one labeled slice: the latter). Across a long gap the walk needs
    sharp edges to hold it; between close slices the seeds themselves hold it, and sharp
    edges only let it stop at noise (hippocampus, 10 volumes, the mean spacing 3.1 / 4.3 /
    5.4 / 7.2 slices: beta 50 / 100 / 130 / 300 were best). Counted in slices on thick
    slices the rule chose 50 where 400-700 measured best (:mod:`src_models.slice_spacing`)."""
    gap = _mean_gap(labeled)
    if gap is None:
        return DEFAULT_BETA
    gap *= ratio
    return float(np.clip(BETA_PER_GAP2 * gap * gap, MIN_BETA, DEFAULT_BETA))


def _walk_range(labeled: Sequence[int], n: int, extend: int) -> tuple[int, int]:
    """First and last slice the walk decides: the labeled range widened by ``extend``."""
    return max(0, min(labeled) - extend), min(n - 1, max(labeled) + extend)


def propagation_voxels(
    shape_nhw: Sequence[int], labeled: Sequence[int], ends_labeled: bool = False
) -> int:
    """Voxels the walk solves for: the labeled range along the first axis, widened."""
    if not len(labeled):
        return 0
    lo, hi = _walk_range(labeled, int(shape_nhw[0]), walk_extend(labeled, ends_labeled))
    return (hi + 1 - lo) * int(np.prod(shape_nhw[1:]))


def affordable(
    shape_nhw: Sequence[int], labeled: Sequence[int], ends_labeled: bool = False
) -> bool:
    """Whether the propagation of ``labeled`` slices of a (N, H, W) volume is within
    :data:`MAX_VOXELS`."""
    return 0 < propagation_voxels(shape_nhw, labeled, ends_labeled) <= MAX_VOXELS


@dataclass
class Propagation:
    """labels: int64 (N, H, W); probabilities: float32 (K, N, H, W) (background 1 where
    nothing is propagated); covered: bool (N,) slices the propagation predicts."""

    labels: np.ndarray
    probabilities: np.ndarray
    covered: np.ndarray


def _scaled(slices: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W, C) float64 in [0, 1] (0.5-99.5 percentiles clipped)."""
    data = np.moveaxis(np.asarray(slices, np.float64), 1, -1)
    lo, hi = np.percentile(data, [0.5, 99.5])
    return np.clip((data - lo) / max(hi - lo, 1e-8), 0.0, 1.0)


def propagate(
    slices: np.ndarray,
    labels: np.ndarray,
    labeled: Sequence[int],
    num_classes: int | None = None,
    *,
    beta: float | None = None,
    extend: int | None = None,
    ends_labeled: bool = False,
    tol: float = 1e-3,
    flow_share: float | None = None,
    match_areas: bool = True,
    ratio: float = 1.0,
) -> Propagation:
    """Random-walker propagation of ``labels`` (N, H, W) from its ``labeled`` slices over the
    image ``slices`` (N, C, H, W), with edge weight ``beta`` (None: :func:`walk_beta` of the
    labeled slices), within the labeled range widened by ``extend`` slices (None:
    :func:`walk_extend` of the labeled slices and ``ends_labeled``), blended between
    labeled slices with the registration-guided interpolation (weight ``flow_share``, None:
    :func:`~src_models.flow_interpolation.flow_weight` of ``ratio``; 0, or slices too small
    for the flow (:func:`~src_models.flow_interpolation.flow_applies`): the walk alone).
    ``match_areas``: the mask of each slice between two labeled ones leans towards the area
    they say (:mod:`src_models.area_profile`); the probabilities stay the walk's. ``ratio``:
    the slices' spacing over their pixels' (:func:`~src_models.slice_spacing.slice_ratio`),
    which the edge weight's rule and the areas' longest gap count in."""
    import warnings

    from skimage.segmentation import random_walker

    labels = np.asarray(labels)
    n = labels.shape[0]
    k = int(num_classes if num_classes is not None else max(2, int(labels.max()) + 1))
    done = sorted({int(s) for s in labeled if 0 <= int(s) < n})
    probs = np.zeros((k,) + labels.shape, np.float32)
    probs[0] = 1.0
    covered = np.zeros(n, bool)
    if not done:
        return Propagation(np.zeros(labels.shape, np.int64), probs, covered)
    reach = walk_extend(done, ends_labeled) if extend is None else extend
    lo, hi = _walk_range(done, n, reach)
    covered[lo : hi + 1] = True
    window = slice(lo, hi + 1)
    markers = np.zeros((hi + 1 - lo,) + labels.shape[1:], np.int64)
    for s in done:  # every annotated voxel of a labeled slice is a seed (class id + 1)
        markers[s - lo] = np.where(labels[s] >= 0, labels[s] + 1, 0)
    present = np.unique(markers[markers > 0])
    probs[:, window] = 0.0
    if len(present) < 2:  # one class seeded: the walk has nothing to decide
        probs[int(present[0]) - 1 if len(present) else 0, window] = 1.0
    elif (markers > 0).all():  # every voxel seeded (each slice labeled): nothing to walk
        # (skimage's random_walker returns its own layout then, not the probabilities)
        for value in present:
            probs[int(value) - 1, window] = markers == value
    else:
        scaled = _scaled(np.asarray(slices)[window])
        with warnings.catch_warnings():  # "probability range outside [0, 1]" by ~tol
            warnings.simplefilter("ignore", UserWarning)
            full = random_walker(
                scaled,
                markers,
                beta=walk_beta(done, ratio) if beta is None else beta,
                mode="cg_j",
                tol=tol,
                return_full_prob=True,
                channel_axis=-1,
            )
        # one linear system per class, each solved to ``tol``: a voxel's values need not sum
        # to 1 (seen: 0.06 + 0.00 on a smooth background), so they are normalised
        full = np.clip(full, 0.0, None)
        full /= np.maximum(full.sum(axis=0, keepdims=True), 1e-12)
        for i, value in enumerate(present):
            probs[int(value) - 1, window] = full[i]
        share = flow_weight(ratio) if flow_share is None else flow_share
        if share > 0 and flow_applies(labels.shape[1:]):
            flow = flow_interpolate(scaled.mean(axis=-1), labels[window], [s - lo for s in done], k)
            between = np.flatnonzero(flow.covered) + lo
            probs[:, between] *= 1.0 - share
            probs[:, between] += share * flow.probabilities[:, flow.covered]
    ids = probs.argmax(axis=0).astype(np.int64)
    if match_areas:
        ids = area_matched(np.moveaxis(probs, 0, 1), ids, area_profile(labels, done, ratio=ratio))
    return Propagation(ids, probs, covered)


def _slices_first(image: np.ndarray, labels_zyx: np.ndarray, axis: int):
    """(N, C, H, W) image slices and (N, H, W) label slices along ``axis`` of a (Z, Y, X) or
    (C, Z, Y, X) image and its (Z, Y, X) labels."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[None]
    return np.moveaxis(image, axis + 1, 0), np.moveaxis(np.asarray(labels_zyx), axis, 0)


def propagate_volume(
    image: np.ndarray,
    labels_zyx: np.ndarray,
    labeled: Sequence[int],
    axis: int = 0,
    num_classes: int | None = None,
    spacing: Sequence[float] | None = None,
    **options,
) -> np.ndarray:
    """Propagated label volume (Z, Y, X) of ``image`` (Z, Y, X) or (C, Z, Y, X) of voxel
    ``spacing`` (Z, Y, X; None: isotropic) from the labeled slices along ``axis``."""
    slices, lbl = _slices_first(image, labels_zyx, axis)
    ratio = slice_ratio(spacing, axis)
    result = propagate(slices, lbl, labeled, num_classes, ratio=ratio, **options).labels
    return np.ascontiguousarray(np.moveaxis(result, 0, axis))


def propagation_prior(
    image: np.ndarray,
    labels_zyx: np.ndarray,
    labeled: Sequence[int],
    axis: int,
    num_classes: int,
    ends_labeled: bool = False,
    beta: float | None = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Class probabilities (K, Z, Y, X) of the propagation of ``labels_zyx``'s ``labeled``
    slices over ``image`` (Z, Y, X) or (C, Z, Y, X) of voxel ``spacing`` (Z, Y, X; None:
    isotropic): the prior a prediction is fused with
    (:func:`src_models.inference.predict_volume`; with the prior's weight at least 0.5 the
    fused mask is background wherever the walk did not reach, beyond its range)."""
    slices, lbl = _slices_first(image, labels_zyx, axis)
    ratio = slice_ratio(spacing, axis)
    walk = propagate(
        slices, lbl, labeled, num_classes, ends_labeled=ends_labeled, beta=beta, ratio=ratio
    )
    probs = walk.probabilities
    return np.ascontiguousarray(np.moveaxis(probs, 1, axis + 1))
