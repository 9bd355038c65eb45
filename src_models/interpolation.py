"""Shape-based interpolation between labeled slices ("fill between slices"), and the prior
it gives training.

Interpolation is what a user gets without any training: 3D Slicer's and ITK-SNAP's "fill
between slices" morph each class's shape from one labeled slice to the next through the
linear blend of their signed distance maps (Raya & Udupa 1990, "shape-based
interpolation"). It is the zero-training baseline every method must beat, the first preview
the plugin shows, and a *prior* for training: its labels on the slices between labeled ones
become soft, distance-weighted targets (:func:`prior_weights`).

Conventions: slices first (N, H, W) int class ids; a signed distance is negative inside the
class, positive outside, in pixels. Nothing is predicted outside the outer labeled slices
(as the interactive tools do) and a slice between two labeled ones gets the class whose
blended distance is lowest where it is negative, so classes never overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed Euclidean distance (pixels) to the boundary of a 2D boolean mask: < 0 inside,
    > 0 outside. An empty mask gives ``+(H + W)`` everywhere (far outside), a full one
    ``-(H + W)``."""
    mask = np.asarray(mask, bool)
    far = float(mask.shape[0] + mask.shape[1])
    if not mask.any():
        return np.full(mask.shape, far, np.float32)
    if mask.all():
        return np.full(mask.shape, -far, np.float32)
    outside = ndimage.distance_transform_edt(~mask)
    inside = ndimage.distance_transform_edt(mask)
    # Pixel centres: inside pixels are at least 0.5 from the boundary, outside ones too.
    return np.where(mask, 0.5 - inside, outside - 0.5).astype(np.float32)


def class_distances(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(K-1, H, W) signed distances of classes 1..K-1 of a 2D label slice."""
    return np.stack([signed_distance(labels == c) for c in range(1, num_classes)])


def distance_probabilities(distances: np.ndarray, softness: float = 1.0) -> np.ndarray:
    """(K-1, ...) signed distances (blended or not) -> (K, ...) class probabilities: each
    class ``sigmoid(-d / softness)`` (``softness`` pixels wide), background the chance of
    none, normalised to sum 1."""
    inside = 1.0 / (1.0 + np.exp(np.clip(distances / softness, -50.0, 50.0)))
    probs = np.concatenate([np.prod(1.0 - inside, axis=0)[None], inside])
    return probs / np.maximum(probs.sum(axis=0, keepdims=True), 1e-12)


@dataclass
class Interpolation:
    """Interpolated labels of one volume, slices first.

    Attributes:
        labels: int64 (N, H, W): the labeled slices as given, interpolated ones between them,
            0 outside the outer labeled slices.
        slice_distance: float (N,): 0 on labeled slices, the distance in slices to the
            nearest labeled slice between two of them, ``inf`` outside (nothing predicted).
        gap: float (N,): the distance between the two labeled slices around each slice
            (0 on labeled slices, ``inf`` outside).
        margin: float32 (N, H, W): distance in pixels of each pixel's blended signed distance
            from the nearest class boundary (large = far from any boundary, sure).
    """

    labels: np.ndarray
    slice_distance: np.ndarray
    gap: np.ndarray
    margin: np.ndarray

    @property
    def covered(self) -> np.ndarray:
        """bool (N,): slices the interpolation predicts (labeled ones and those between)."""
        return np.isfinite(self.slice_distance)


def interpolate_slices(
    labels: np.ndarray, labeled: Sequence[int], num_classes: int | None = None
) -> Interpolation:
    """Shape-based interpolation of ``labels`` (N, H, W) from its ``labeled`` slice indices.

    Each class 1..K-1 is interpolated on its own from the signed distances of the two
    enclosing labeled slices, ``d = (1 - t) d_a + t d_b`` with ``t = (s - a) / (b - a)``;
    a pixel takes the class of lowest ``d`` where that is negative, else background. A class
    absent from one of the two slices shrinks away from the other one.
    """
    labels = np.asarray(labels)
    n, h, w = labels.shape
    k = int(num_classes if num_classes is not None else max(2, int(labels.max()) + 1))
    done = sorted({int(s) for s in labeled if 0 <= int(s) < n})
    out = np.zeros((n, h, w), np.int64)
    slice_distance = np.full(n, np.inf)
    gap = np.full(n, np.inf)
    margin = np.zeros((n, h, w), np.float32)
    if not done:
        return Interpolation(out, slice_distance, gap, margin)
    sdf = {s: class_distances(labels[s], k) for s in done}
    for s in done:
        out[s] = labels[s]
        slice_distance[s] = 0.0
        gap[s] = 0.0
        margin[s] = np.abs(sdf[s]).min(axis=0) if k > 1 else np.inf
    for a, b in zip(done[:-1], done[1:], strict=True):
        for s in range(a + 1, b):
            t = (s - a) / (b - a)
            blend = (1 - t) * sdf[a] + t * sdf[b]  # (K-1, H, W)
            best = blend.argmin(axis=0)
            lowest = np.take_along_axis(blend, best[None], axis=0)[0]
            out[s] = np.where(lowest < 0, best + 1, 0)
            slice_distance[s] = min(s - a, b - s)
            gap[s] = b - a
            margin[s] = np.abs(blend).min(axis=0)
    return Interpolation(out, slice_distance, gap, margin)


def interpolate_volume(
    labels_zyx: np.ndarray,
    labeled: Sequence[int],
    axis: int = 0,
    num_classes: int | None = None,
) -> np.ndarray:
    """Interpolated label volume (Z, Y, X) from the labeled slices along ``axis``."""
    slices = np.moveaxis(np.asarray(labels_zyx), axis, 0)
    result = interpolate_slices(slices, labeled, num_classes).labels
    return np.ascontiguousarray(np.moveaxis(result, 0, axis))


def prior_weights(
    interp: Interpolation, band_per_slice: float = 1.0, min_band: float = 1.0
) -> np.ndarray:
    """Per-pixel weights (N, H, W) in [0, 1] of the interpolated labels as training targets.

    A slice's weight falls linearly with its distance d to the nearest labeled slice,
    ``1 - d / (gap / 2 + 1)`` (about 1/2 halfway between two labeled slices), and the pixels
    within ``min_band + band_per_slice * d`` pixels of an interpolated boundary get 0: where
    the shape is uncertain the image, not the interpolation, decides. Labeled slices and
    slices outside the labeled range get 0 (they are trained as labeled / unlabeled slices).
    """
    d = interp.slice_distance
    between = np.isfinite(d) & (d > 0)
    slice_w = np.zeros_like(d)
    slice_w[between] = 1.0 - d[between] / (interp.gap[between] / 2.0 + 1.0)
    band = min_band + band_per_slice * np.where(between, d, 0.0)
    sure = interp.margin >= band[:, None, None]
    return (slice_w[:, None, None] * sure).astype(np.float32)
