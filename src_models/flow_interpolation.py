"""Registration-guided shape interpolation: the labeled outlines carried along the image's
motion from slice to slice, then blended as shape-based interpolation blends them.

Shape-based interpolation (:mod:`src_models.interpolation`) morphs the outline of labeled
slice ``a`` into the one of slice ``b`` without looking at the image, so a structure that
bends or bulges between them is cut straight. Here each outline's signed distance map is
first *moved with the image*: the dense optical flow between every pair of neighbouring
slices (Lucas-Kanade, :func:`skimage.registration.optical_flow_ilk`) warps slice ``a``'s map
one slice at a time towards ``b``, and slice ``b``'s map back towards ``a``; at slice ``s``
the two warped maps are blended with the interpolation's weights ``1 - t`` and ``t``,
``t = (s - a) / (b - a)`` (registration-based interpolation, as in Frakes et al. 2008 and
ITK-SNAP's and Biomedisa's registration-based "fill between slices").

It is one of the two halves of the product's propagation (:func:`src_models.propagation
.propagate` blends it with the random walker, weight :data:`DEFAULT_WEIGHT`): the walk
follows intensity edges voxel by voxel, the flow keeps the labeled shape and moves it, and
on the development volumes they fail on different volumes (``benchmarks/annotation_notes.md``,
"registration-guided interpolation"). On small slices (the hippocampus's 35 x 51) the
flow has too few pixels to follow: there it cost up to 2 Dice points on one volume, trained
or not, and the propagation leaves it out (:data:`MIN_SIDE`, :func:`flow_applies`).

Conventions as :mod:`src_models.interpolation`: slices first, (N, H, W) int class ids,
:data:`~src_models.data.label_values.IGNORE` (-1) for unannotated voxels. A labeled slice
with unannotated voxels (a region correction) has no whole outline to carry, so it is not
an anchor: the gap runs from the fully annotated slice before it to the one after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from src_models.interpolation import class_distances, distance_probabilities

#: the blend's weight in the propagation (0.2 measured against 0.3 and 0.4 before
#: :data:`MIN_SIDE` kept the flow off the hippocampus, which lost least at 0.2; the left
#: atrium alone would take 0.3 by 0.0-0.2 points, not re-measured through the product)
DEFAULT_WEIGHT = 0.2
#: the blend's weight on slices at least twice as far apart as their pixels
#: (:func:`flow_weight`): where the walk's edges between slices weaken, the flow's share
#: grows (left atrium, every 2nd / 4th slice, 5 volumes, zero training, 4 slices strictly
#: inside, 4 and 6 with the ends: 0.4 against 0.2 +0.3 / +0.6 / +0.5 and +0.5 / +1.2 /
#: +1.1 points; 0.6 at most level, 0.8 lower)
THICK_WEIGHT = 0.4
#: Lucas-Kanade's window radius in pixels (4 and 7 within 0.3 Dice points; 4 is better on
#: the hippocampus's small slices)
DEFAULT_RADIUS = 4
#: warps per pyramid level of the flow (3: the same Dice as skimage's 10, 3x faster)
NUM_WARP = 3
#: the width, in pixels, of the blended outline's soft edge in the probabilities
SOFTNESS = 1.0
#: slices with a side shorter than this get no flow in the propagation: on the
#: hippocampus's 35 x 51 slices the blend moved the walk by -2.1 to +0.6 points per volume
#: (-0.3 on average, 4 slices with the ends) against +0.2 to +3.1 on the left atrium's
#: 183 x 140 (+1.4, better on 5 of 5)
MIN_SIDE = 64


def flow_weight(ratio: float = 1.0) -> float:
    """The flow's share in the propagation for slices ``ratio`` of their pixels apart
    (:func:`~src_models.slice_spacing.slice_ratio`): :data:`DEFAULT_WEIGHT` on isotropic
    voxels, rising linearly to :data:`THICK_WEIGHT` at twice the pixel (the two measured
    points; thinner slices keep the default)."""
    rise = (THICK_WEIGHT - DEFAULT_WEIGHT) * (float(ratio) - 1.0)
    return float(np.clip(DEFAULT_WEIGHT + rise, DEFAULT_WEIGHT, THICK_WEIGHT))


def flow_applies(shape_hw: tuple[int, ...]) -> bool:
    """Whether slices of in-plane shape ``shape_hw`` are large enough for the flow."""
    return min(int(n) for n in shape_hw) >= MIN_SIDE


@dataclass
class FlowInterpolation:
    """probabilities: float32 (K, N, H, W) (the labels on anchor slices, background where
    nothing is interpolated); covered: bool (N,) the slices strictly between two anchors."""

    probabilities: np.ndarray
    covered: np.ndarray


def _warp(field: np.ndarray, flow: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``field`` (H, W) sampled at ``grid + flow`` (bilinear, edges repeated)."""
    return ndimage.map_coordinates(field, grid + flow, order=1, mode="nearest")


def flow_interpolate(
    images: np.ndarray,
    labels: np.ndarray,
    labeled: Sequence[int],
    num_classes: int,
    *,
    radius: int = DEFAULT_RADIUS,
) -> FlowInterpolation:
    """Registration-guided interpolation of ``labels`` (N, H, W) between its fully annotated
    ``labeled`` slices, the flow computed on ``images`` (N, H, W) (one channel, any scale:
    scaled to [0, 1] by the caller for comparable flows)."""
    from skimage.registration import optical_flow_ilk

    labels = np.asarray(labels)
    images = np.asarray(images, np.float32)
    n, h, w = labels.shape
    k = int(num_classes)
    probs = np.zeros((k, n, h, w), np.float32)
    probs[0] = 1.0
    covered = np.zeros(n, bool)
    anchors = sorted({int(s) for s in labeled if 0 <= int(s) < n and (labels[s] >= 0).all()})
    grid = np.stack(np.mgrid[:h, :w]).astype(np.float32)
    distances = {s: class_distances(labels[s], k) for s in anchors}

    def carried(start: int, path: range) -> dict[int, np.ndarray]:
        """The anchor ``start``'s distances warped one slice at a time along ``path``."""
        out, previous, current = {}, start, distances[start]
        for s in path:
            # the displacement that brings slice ``previous`` onto slice ``s``
            f = optical_flow_ilk(images[s], images[previous], radius=radius, num_warp=NUM_WARP)
            current = np.stack([_warp(d, f, grid) for d in current])
            out[s], previous = current, s
        return out

    for s in anchors:
        probs[:, s] = np.eye(k, dtype=np.float32)[labels[s]].transpose(2, 0, 1)
    for a, b in zip(anchors[:-1], anchors[1:], strict=True):
        forward, backward = carried(a, range(a + 1, b)), carried(b, range(b - 1, a, -1))
        for s in range(a + 1, b):
            t = (s - a) / (b - a)
            blend = (1 - t) * forward[s] + t * backward[s]
            probs[:, s] = distance_probabilities(blend, SOFTNESS)
            covered[s] = True
    return FlowInterpolation(probs, covered)
