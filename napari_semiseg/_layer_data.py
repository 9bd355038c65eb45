"""Adapters of napari image layer data, free of Qt and napari: in-memory data as a (C, Z, Y,
X) array; lazy data (zarr, dask, memory maps) larger than memory as a view read on demand
that pickles by reference; a percentile sampled from evenly spaced planes.

They run on the GUI thread (the docks), in a worker thread, and in the training process,
which unpickles the lazy view (:class:`LayerVolume`) it was handed and reads the volume
itself.
"""

from __future__ import annotations

import mmap
import pickle
from typing import Any

import numpy as np
import torch

from napari_semiseg import io as semiseg_io
from src_models.data.lazy import ChannelsFirst, is_lazy
from src_models.data.volumes import as_channels_first
from src_models.errors import SemisegError


def image_channels_first(data: Any, rgb: bool = False, labels_ndim: int = 3) -> np.ndarray:
    """A napari image layer's data as (C, Z, Y, X): RGB(A) channels last are moved first,
    an extra leading axis (napari's channel-stacked or 4D data) is taken as channels."""
    image = np.asarray(data)
    if rgb:
        image = np.moveaxis(image, -1, 0)
    return as_channels_first(image, labels_ndim)


# -- image layers larger than memory --------------------------------------------------------
def _read(array: Any, index: tuple) -> np.ndarray:
    part = array[index]
    if hasattr(part, "compute"):  # dask
        part = part.compute()
    return np.asarray(part)


class LayerVolume:
    """A lazy image layer's data (zarr, dask, memory map...) as an array-like that reads only
    what is indexed: RGB(A) channels last come first, dask chunks are given as one chunk
    shape. It pickles by reference (a dask graph, a zarr store, a memory map's file), so the
    training process reads the volume itself; data that cannot be pickled raises a
    :class:`SemisegError` at :func:`picklable_image`."""

    def __init__(self, array: Any, channels_last: bool = False) -> None:
        self.array = array
        self.channels_last = channels_last
        shape = tuple(int(n) for n in array.shape)
        self.shape = (shape[-1], *shape[:-1]) if channels_last else shape
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)
        chunks = getattr(array, "chunksize", None) or getattr(array, "chunks", None)
        self.chunks = None
        if (
            chunks is not None
            and len(chunks) == len(shape)
            and all(isinstance(c, (int, np.integer)) for c in chunks)
        ):
            chunks = tuple(int(c) for c in chunks)
            self.chunks = (chunks[-1], *chunks[:-1]) if channels_last else chunks

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (self.ndim - len(index))
        if not self.channels_last:
            return _read(self.array, index)
        ints = [a for a, i in enumerate(index) if isinstance(i, (int, np.integer))]
        keep = tuple(slice(int(i), int(i) + 1) if a in ints else i for a, i in enumerate(index))
        data = np.moveaxis(_read(self.array, (*keep[1:], keep[0])), -1, 0)
        return data.squeeze(axis=tuple(ints)) if ints else data

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        array = self.array
        if isinstance(array, np.memmap):  # would pickle as a full in-memory copy
            if not isinstance(array.base, mmap.mmap) or array.filename is None:
                raise SemisegError(
                    "the image layer is a view of a memory-mapped file, which cannot be handed "
                    "to the training process without reading it whole: open the file itself "
                    "(e.g. a .npy or .zarr) as the layer"
                )
            order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
            state["array"] = (
                "memmap",
                str(array.filename),
                array.dtype.str,
                tuple(array.shape),
                int(array.offset),
                order,
            )
        return state

    def __setstate__(self, state: dict) -> None:
        array = state["array"]
        if isinstance(array, tuple) and array and array[0] == "memmap":
            _, filename, dtype, shape, offset, order = array
            state["array"] = np.memmap(
                filename, dtype=np.dtype(dtype), mode="r", shape=shape, offset=offset, order=order
            )
        self.__dict__.update(state)


def lazy_image(data: Any, rgb: bool = False, labels_ndim: int = 3) -> ChannelsFirst | None:
    """A (C, Z, Y, X) view, read on demand, of an image layer's data (its full-resolution
    level when multiscale) that is not an in-memory numpy array (dask, zarr, memory map) and
    holds more than :data:`napari_semiseg.io.LAZY_VOXELS` voxels; None otherwise (the data
    is then converted with :func:`image_channels_first` as it always was)."""
    if not is_lazy(data) or isinstance(data, torch.Tensor) or not hasattr(data, "__getitem__"):
        return None
    shape = getattr(data, "shape", None)
    if shape is None or getattr(data, "dtype", None) is None:
        return None
    if int(np.prod(shape)) <= semiseg_io.LAZY_VOXELS:
        return None
    ndim = len(shape) - (1 if rgb else 0)
    if ndim not in (labels_ndim, labels_ndim + 1):
        raise SemisegError(
            f"expected a 3D image (Z, Y, X) or (C, Z, Y, X), got an array of shape "
            f"{tuple(shape)}: give a volume or a stack of 2D slices"
        )
    view = LayerVolume(data, channels_last=rgb)
    return ChannelsFirst(view, view.ndim == labels_ndim + 1)


def picklable_image(view: ChannelsFirst) -> ChannelsFirst:
    """``view`` once checked to pickle (what the training process receives); a
    :class:`SemisegError` naming the fix when it cannot."""
    try:
        pickle.dumps(view, protocol=pickle.HIGHEST_PROTOCOL)
    except SemisegError:
        raise
    except Exception as exc:  # noqa: BLE001  (any pickling failure)
        kind = type(getattr(view.array, "array", view.array)).__name__
        raise SemisegError(
            f"the image layer's data ({kind}) cannot be handed to the training process "
            f"({exc}); it is too large to copy: save it as a zarr store (or .npy) and open "
            "that in napari"
        ) from None
    return view


def _plane_step(shape: tuple[int, ...], max_voxels: int) -> int:
    plane = int(np.prod(shape[1:])) or 1
    return max(1, -(-int(shape[0]) * plane // max(1, max_voxels)))


def sampled_percentile(array: Any, q: float, max_voxels: int = 1 << 24) -> float:
    """The ``q`` percentile of an array: exact for an in-memory one, from evenly spaced
    planes (at most ``max_voxels``) of a lazy one."""
    if not is_lazy(array):
        return float(np.percentile(array, q)) if np.size(array) else 1.0
    shape = tuple(array.shape)
    if not shape or not int(np.prod(shape)):
        return 1.0
    step = _plane_step(shape, max_voxels)
    sample = np.stack([_read(array, (i,)) for i in range(0, shape[0], step)])
    return float(np.percentile(sample, q))
