"""Slice scores for review, free of Qt and napari: the mean of a map (confidence,
discrepancy...) over each slice and the slices where a prediction holds the structure, read
slab by slab when the layer is lazy (the ranking itself is :func:`src_models.suggest.suggest`'s,
as ``semiseg suggest``'s).

They run on the GUI thread (the review dock's "next slice to review").
"""

from __future__ import annotations

import numpy as np

from napari_semiseg._layer_data import _plane_step, _read
from src_models.data.lazy import is_lazy


def slice_score(volume: np.ndarray, axis: int) -> np.ndarray:
    """Mean of a (Z, Y, X) map over each slice along ``axis`` -> (N,); a lazy map (zarr,
    dask) is read slab by slab."""
    others = tuple(a for a in range(3) if a != axis)
    if not is_lazy(volume):
        return np.asarray(volume, dtype=np.float64).mean(axis=others)
    shape = tuple(volume.shape)
    sums = np.zeros(shape[axis], np.float64)
    step = _plane_step(shape, 1 << 24)
    for z0 in range(0, shape[0], step):
        part = _read(volume, (slice(z0, min(shape[0], z0 + step)),)).astype(np.float64)
        if axis == 0:
            sums[z0 : z0 + part.shape[0]] = part.sum(axis=(1, 2))
        else:
            sums += part.sum(axis=others)
    return sums / (int(np.prod(shape)) // shape[axis])


def structure_slices(prediction: np.ndarray, axis: int) -> np.ndarray:
    """bool (N,): the slices along ``axis`` where the (Z, Y, X) class ids of ``prediction``
    hold any foreground (ids are >= 0, so a slice's mean is > 0 exactly then)."""
    return slice_score(prediction, axis) > 0
