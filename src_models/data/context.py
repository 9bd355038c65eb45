"""3D context for a 2D network ("2.5D"): each slice is fed with its neighbours as channels.

A slice network sees one plane; the structure's shape along the slicing axis reaches it only
through the labels. With ``context`` c > 0 the input of slice s is slices s - c .. s + c
stacked as channels (C (2c + 1) channels for a C-channel image, the slice itself in the
middle), the neighbours beyond the volume's first and last slice repeating the edge slice.
The sampler (:class:`~src_models.data.sampler.SliceSampler`), the trainer's look at its
labeled slices and :func:`~src_models.inference.predict_volume` stack them the same way, and
the checkpoint records c (``info["context_slices"]``), so a model predicts as it trained.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from src_models.errors import SemisegError

#: most neighbours on each side a run may use (7 slices of input)
MAX_CONTEXT = 3


def check_context(context: int, name: str = "context slices") -> int:
    """``context`` as an int in [0, MAX_CONTEXT], or a SemisegError naming the range (the
    user's ``name`` for it: ``--context-slices``)."""
    whole = isinstance(context, (int, float, np.integer)) and not isinstance(context, bool)
    if not whole or not float(context).is_integer():
        raise SemisegError(f"{name} must be a whole number, got {context!r}")
    if not 0 <= int(context) <= MAX_CONTEXT:
        raise SemisegError(
            f"{name} must be between 0 and {MAX_CONTEXT} (neighbours on each side of "
            f"a slice), got {context}"
        )
    return int(context)


def context_channels(channels: int, context: int) -> int:
    """Input channels of a network fed ``channels``-channel slices with ``context``."""
    return channels * (2 * context + 1)


def slice_channels(in_channels: int, context: int) -> int:
    """Channels of the images a network of ``in_channels`` inputs with ``context`` takes
    (the inverse of :func:`context_channels`)."""
    return in_channels // (2 * context + 1)


def context_of(in_channels: int, channels: int) -> int:
    """The context a network of ``in_channels`` inputs uses on ``channels``-channel slices."""
    if in_channels % channels or (in_channels // channels) % 2 == 0:
        raise SemisegError(
            f"a network of {in_channels} input channels cannot take {channels}-channel slices"
        )
    return (in_channels // channels - 1) // 2


def slice_with_context(slices: Any, index: int, context: int) -> np.ndarray:
    """Slice ``index`` of ``slices`` (N, C, H, W; an array or anything indexable by slice)
    with its ``context`` neighbours on each side as channels: (C (2c + 1), H, W)."""
    if context == 0:
        return np.asarray(slices[index])
    n = len(slices)
    parts = [
        np.asarray(slices[min(max(index + d, 0), n - 1)]) for d in range(-context, context + 1)
    ]
    return np.concatenate(parts, axis=0)


def stack_context(slab: np.ndarray, context: int, before: int, after: int) -> np.ndarray:
    """The slices of ``slab`` (n, C, H, W) with their neighbours as channels, for the
    ``n - before - after`` slices in its middle: ``before`` / ``after`` slices of ``slab``
    are the halo read around them (fewer than ``context`` at the volume's ends, where the
    edge slice repeats). Returns (n - before - after, C (2c + 1), H, W)."""
    if context == 0:
        return slab[before : len(slab) - after]
    n = len(slab)
    centre = np.arange(before, n - after)
    parts = [slab[np.clip(centre + d, 0, n - 1)] for d in range(-context, context + 1)]
    return np.ascontiguousarray(np.concatenate(parts, axis=1))
