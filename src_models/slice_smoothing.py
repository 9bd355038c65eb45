"""Smoothing of a prediction's class probabilities across slices.

A 2D network segments each slice on its own, so its outline can jump from one slice to the
next where the image alone does not decide (a faint edge, the boundary between two
classes). A Gaussian of ``sigma`` slices along the slicing axis, on the class probabilities
before their argmax, lets each slice's decision lean on its neighbours'; in-plane nothing
changes. :func:`src_models.inference.predict_volume` applies it to its final probabilities
(the network's, fused with the propagation when a prior is given) slab by slab, keeping
the :func:`smoothing_halo` last slices of each slab's probabilities until the next slab has
come (no slice is predicted twice), so the result equals smoothing the whole volume at
once.

Measured on the same weights with and without (``benchmarks/annotation_effort.py
--keep-probabilities``, docs/benchmarks.md, "Smoothing across slices"), 4 labeled slices,
2 minutes of the default, 5 volumes each: hippocampus with the ends 0.855 -> 0.860 (every
volume up), strictly inside 0.890 -> 0.898 (every volume up, +0.5 to +1.1 points), left
atrium with the ends 0.900 -> 0.901 (4 of 5 up, one -0.1); 5 and 6 hippocampus slices, 5
minutes of SDCL, 3 volumes: 0.891 -> 0.899 and 0.907 -> 0.916. A sigma of 1.5 slices
measured the same within 0.2 points, 2 slices less.

Both datasets have isotropic voxels. Where slices are thicker than their pixels a slice is a
long way, so the default keeps the Gaussian's physical width instead of its width in slices
(:func:`smoothing_for_spacing`: 1 slice of 1 mm pixels at 1 mm, 0.2 slices (next to
nothing) at 5 mm); ``sigma=0`` (``semiseg predict --smooth-slices 0``) turns it off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d

from src_models.errors import SemisegError
from src_models.slice_spacing import slice_ratio

#: the product's default, in slices
DEFAULT_SMOOTHING = 1.0
#: the Gaussian is cut at this many sigmas (scipy's ``truncate``)
TRUNCATE = 2.0


def smoothing_for_spacing(
    spacing: Sequence[float] | None, axis: int, sigma: float = DEFAULT_SMOOTHING
) -> float:
    """The default smoothing, in slices along ``axis``, for voxels of ``spacing`` (the last 3
    values: Z, Y, X): ``sigma`` times the finest in-plane pixel over the slice spacing
    (:func:`~src_models.slice_spacing.slice_ratio`), at most ``sigma`` (the measured default
    is for isotropic voxels: thicker slices get fewer of them, the same physical width).
    ``sigma`` itself when the spacing is unknown."""
    return sigma * min(1.0, 1.0 / slice_ratio(spacing, axis))


def check_smoothing(sigma: float) -> float:
    """``sigma`` as a float, or a clear error: a finite number of slices, 0 (off) or more."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise SemisegError(
            f"the smoothing across slices must be a number of slices, 0 (off) or more, "
            f"not {sigma!r}"
        )
    return value


def smoothing_halo(sigma: float) -> int:
    """Slices on each side that take part in one slice's smoothed value (scipy's kernel
    radius for ``TRUNCATE``)."""
    return int(TRUNCATE * sigma + 0.5) if sigma > 0 else 0


def smooth_across_slices(probabilities: np.ndarray, axis: int, sigma: float) -> np.ndarray:
    """``probabilities`` (any shape) smoothed by a Gaussian of ``sigma`` along ``axis``
    (the volume's edge slices repeat beyond it); itself when ``sigma`` is 0. Still sums to
    1 over the classes, as the filter is linear with weights summing to 1."""
    sigma = check_smoothing(sigma)
    if sigma == 0 or probabilities.shape[axis] < 2:
        return probabilities
    return gaussian_filter1d(
        np.asarray(probabilities, np.float32), sigma, axis=axis, mode="nearest", truncate=TRUNCATE
    )
