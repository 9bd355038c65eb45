"""Volumes larger than memory: slices read on demand, normalised on the fly, bounded caches.

A zarr / OME-Zarr array, a memory-mapped ``.npy`` or a large TIFF read through zarr is never
loaded whole. :func:`make_lazy_volume` returns a :class:`~src_models.data.volumes.Volume`
whose ``slices`` is a :class:`LazySlices` and whose ``labels`` is a :class:`LabeledSlices`,
which the sampler, the trainer and every method use like the in-memory arrays:

- normalisation statistics come from evenly spaced planes (:func:`sample_normalization`),
  the same ones at training and at prediction;
- the labeled slices are read once and kept (with their labels); labeled slices are found by
  streaming the label volume slab by slab;
- other slices are read by slabs of whole chunks (reading one slice of a chunked store costs
  its chunks anyway) into an LRU cache bounded in bytes; :meth:`LazySlices.prefetch` loads
  slabs in a background thread so a training step does not wait on disk. The sampler draws
  unlabeled crops from a rotating window of slabs and prefetches the next window
  (:class:`UnlabeledWindow`).

Peak memory then depends on the slice size and the cache, not on the number of slices
(``benchmarks/large_volumes.py`` measures it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from src_models.data.label_values import IGNORE
from src_models.data.normalization import Normalization, sample_normalization
from src_models.data.volumes import MIN_SLICE_SIZE, Volume, check_axis, check_labels
from src_models.errors import SemisegError

#: bytes of normalised slabs kept in memory per volume (the current and the next window)
DEFAULT_CACHE_BYTES = 1 << 30
#: most slices per slab (fewer when the chunks along the axis are thinner)
MAX_SLAB = 64
#: bytes of one slab read at a time (the slab gets thinner for very large slices)
SLAB_BYTES = 256 << 20


def read_part(array: Any, index) -> np.ndarray:
    """``array[index]`` of a lazy array as numpy; a failed read (a damaged zarr chunk: a
    Zstd/Blosc error, a truncated file) becomes a SemisegError naming the fix."""
    try:
        return np.asarray(array[index])
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001  (zarr, numcodecs, tifffile: their own types)
        where = getattr(getattr(array, "store", None), "path", None) or getattr(
            array, "filename", None
        )
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise SemisegError(
            f"cannot read part of {where or 'a volume read from disk'} ({text}): a chunk of "
            "the file is damaged or missing; re-export or re-download it"
        ) from exc


class ChannelsFirst:
    """A (C, Z, Y, X) view of a lazy (Z, Y, X) or (C, Z, Y, X) array (zarr, memmap, ...):
    indexing reads only what is asked for."""

    def __init__(self, array: Any, has_channels: bool) -> None:
        self.array = array
        self.has_channels = has_channels
        self.shape = tuple(array.shape) if has_channels else (1, *array.shape)
        self.ndim = 4
        self.dtype = np.dtype(array.dtype)
        self.chunks = getattr(array, "chunks", None)
        if self.chunks is not None and not has_channels:
            self.chunks = (1, *self.chunks)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (4 - len(index))
        if self.has_channels:
            return read_part(self.array, index)
        return read_part(self.array, index[1:])[None][index[0]]

    def __array__(self, dtype=None, copy=None):
        data = self[:]
        return data if dtype is None else data.astype(dtype)


def is_lazy(array: Any) -> bool:
    """True for array-likes that read on demand (anything but an in-memory numpy array)."""
    return not isinstance(array, np.ndarray) or isinstance(array, np.memmap)


def slab_length(shape: tuple[int, ...], axis: int, chunks=None, itemsize: int = 4) -> int:
    """Slices per slab along spatial ``axis`` of a (C, Z, Y, X) shape: the chunk thickness
    along the axis when known (whole chunks), capped by :data:`MAX_SLAB` and
    :data:`SLAB_BYTES`."""
    plane = int(np.prod([n for a, n in enumerate(shape[1:]) if a != axis])) * shape[0]
    by_bytes = max(1, SLAB_BYTES // max(1, plane * itemsize))
    n = MAX_SLAB if chunks is None else int(chunks[axis + 1])
    return int(max(1, min(n, MAX_SLAB, by_bytes, shape[axis + 1])))


class LazySlices:
    """(N, C, H, W) float32 slices of a (C, Z, Y, X) array along ``axis``, normalised with
    ``norm``, read by slabs into an LRU cache of at most ``cache_bytes`` (pinned slices,
    e.g. the labeled ones, are kept apart and never evicted)."""

    def __init__(
        self,
        image: Any,
        axis: int,
        norm: Normalization,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.image, self.axis, self.norm = image, axis, norm
        c, *spatial = image.shape
        h, w = (n for a, n in enumerate(spatial) if a != axis)
        self.shape = (spatial[axis], c, h, w)
        self.slab = slab_length(tuple(image.shape), axis, getattr(image, "chunks", None))
        self.slab_bytes = self.slab * c * h * w * 4
        self.capacity = max(2, cache_bytes // max(1, self.slab_bytes))
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._pinned: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Event] = {}
        self.reads = 0  #: slabs read from disk (for tests and benchmarks)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def n_slabs(self) -> int:
        return -(-self.shape[0] // self.slab)

    def slab_of(self, index: int) -> int:
        return index // self.slab

    def _read_slab(self, k: int) -> np.ndarray:
        s0, s1 = k * self.slab, min(self.shape[0], (k + 1) * self.slab)
        where = [slice(None)] * 4
        where[self.axis + 1] = slice(s0, s1)
        raw = self.image[tuple(where)]
        self.reads += 1
        return np.ascontiguousarray(np.moveaxis(self.norm.apply(raw), self.axis + 1, 0))

    def load_slab(self, k: int) -> np.ndarray:
        """Slab ``k`` (n, C, H, W) from the cache or the disk (one reader per slab)."""
        with self._lock:
            if k in self._cache:
                self._cache.move_to_end(k)
                return self._cache[k]
            event = self._loading.get(k)
            owner = event is None
            if owner:
                event = self._loading[k] = threading.Event()
        if not owner:
            event.wait()
            return self.load_slab(k)
        try:
            slab = self._read_slab(k)
            with self._lock:
                self._cache[k] = slab
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            return slab
        finally:
            with self._lock:
                del self._loading[k]
            event.set()

    def prefetch(self, slabs: Sequence[int]) -> threading.Thread:
        """Load ``slabs`` in a background thread (reads release the GIL in zarr/numpy)."""

        def run() -> None:
            for k in slabs:
                try:
                    self.load_slab(k)
                except Exception:  # noqa: BLE001  (the training thread will raise it)
                    return

        thread = threading.Thread(target=run, name="semiseg-prefetch", daemon=True)
        thread.start()
        return thread

    def pin(self, indices: Sequence[int]) -> None:
        """Keep slices ``indices`` (e.g. the labeled ones) in memory for good."""
        for i in sorted(set(indices)):
            if i not in self._pinned:
                self._pinned[i] = self.load_slab(self.slab_of(i))[i % self.slab].copy()

    def __getitem__(self, index: int) -> np.ndarray:
        if not isinstance(index, (int, np.integer)):
            raise TypeError("LazySlices is indexed one slice at a time")
        index = int(index)
        if index in self._pinned:
            return self._pinned[index]
        return self.load_slab(self.slab_of(index))[index % self.slab]


class LabeledSlices:
    """The labels of the labeled slices only: ``labels[s]`` (H, W) int64 for a labeled ``s``
    (an unlabeled one reads as all :data:`IGNORE`), ``shape`` (N, H, W) and ``max()``."""

    def __init__(self, slices: dict[int, np.ndarray], shape: tuple[int, int, int]) -> None:
        self.slices, self.shape = slices, shape
        self.ndim = 3

    def __getitem__(self, index: int) -> np.ndarray:
        found = self.slices.get(int(index))
        return found if found is not None else np.full(self.shape[1:], IGNORE, np.int64)

    def max(self) -> int:
        return max((int(s.max()) for s in self.slices.values()), default=0)

    def min(self) -> int:
        return min((int(s.min()) for s in self.slices.values()), default=0)


def find_labeled_slices(labels: Any, axis: int, ignore: int | None = None) -> list[int]:
    """Slices along ``axis`` of a (Z, Y, X) lazy label array holding an annotation (nonzero,
    or anything but ``ignore`` when given), read slab by slab."""
    n = labels.shape[axis]
    step = slab_length((1, *labels.shape), axis, None, np.dtype(labels.dtype).itemsize)
    found = []
    for s0 in range(0, n, step):
        where = [slice(None)] * 3
        where[axis] = slice(s0, min(n, s0 + step))
        part = np.moveaxis(read_part(labels, tuple(where)), axis, 0)
        flat = part.reshape(part.shape[0], -1)
        hit = (flat != ignore) if ignore is not None else (flat != 0)
        found += [s0 + int(i) for i in np.flatnonzero(hit.any(axis=1))]
    return found


def read_label_slices(labels: Any, axis: int, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """The raw label slices ``indices`` along ``axis`` of a lazy (Z, Y, X) array."""
    out = {}
    for s in indices:
        where = [slice(None)] * 3
        where[axis] = int(s)
        out[int(s)] = read_part(labels, tuple(where))
    return out


def make_lazy_volume(
    image: Any,
    labels: dict[int, np.ndarray] | None,
    axis: int,
    num_classes: int,
    percentiles: tuple[float, float] = (0.5, 99.5),
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Volume:
    """A :class:`Volume` over a lazy (C, Z, Y, X) ``image`` whose labeled slices are
    ``labels`` (slice index -> (H, W) class ids, :data:`IGNORE` for unannotated voxels,
    already encoded) or None for an unlabeled volume."""
    check_axis(axis)
    shape = tuple(image.shape)
    in_plane = [n for a, n in enumerate(shape[1:]) if a != axis]
    if min(in_plane) < MIN_SLICE_SIZE:
        raise SemisegError(
            f"slices along axis {axis} are {in_plane[0]}x{in_plane[1]} pixels, smaller than the "
            f"minimum {MIN_SLICE_SIZE}x{MIN_SLICE_SIZE}: choose another axis"
        )
    norm = sample_normalization(image, percentiles)
    slices = LazySlices(image, axis, norm, cache_bytes)
    lab = None
    labeled: list[int] = []
    if labels:
        checked = {}
        for s, sl in labels.items():
            if sl.shape != tuple(in_plane):
                raise SemisegError(
                    f"label slice {s} has shape {sl.shape}, the image slices {tuple(in_plane)}"
                )
            if not 0 <= s < slices.shape[0]:
                raise SemisegError(f"labeled slice {s} is out of range ({slices.shape[0]} slices)")
            sl = check_labels(sl, num_classes, allow_ignore=True)
            checked[int(s)] = sl
        labeled = sorted(checked)
        lab = LabeledSlices(checked, (slices.shape[0], *in_plane))
        slices.pin(labeled)
    channels = shape[0]
    background = min((norm.low[c] - norm.mean[c]) / norm.std[c] for c in range(channels))
    return Volume(slices, lab, labeled, norm, axis, float(background))


class UnlabeledWindow:
    """Which unlabeled slices the sampler may draw from now, for lazy volumes: a window of
    ``slabs`` slabs (all volumes pooled), moved to the next window every ``batches`` batches
    in an order drawn from its own seeded generator (every slab once per pass). The next
    window is prefetched in the background when the current one starts."""

    def __init__(
        self,
        volumes: Sequence[Volume],
        pairs: list[tuple[int, int]],
        seed: int,
        slabs: int = 4,
        batches: int = 8,
    ) -> None:
        self.volumes = volumes
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for v, s in pairs:
            sl = volumes[v].slices
            key = (v, sl.slab_of(s) if isinstance(sl, LazySlices) else -1)
            groups.setdefault(key, []).append((v, s))
        self.groups = groups
        self.keys = sorted(groups)
        self.slabs, self.batches = max(1, slabs), max(1, batches)
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.order: list[int] = []
        self.count = 0
        self.current = self._next_window()
        self.upcoming = self._next_window()
        self._prefetch(self.current)
        self._prefetch(self.upcoming)

    def _next_window(self) -> list[tuple[int, int]]:
        keys = []
        while len(keys) < min(self.slabs, len(self.keys)):
            if not self.order:
                self.order = torch.randperm(len(self.keys), generator=self.generator).tolist()
            keys.append(self.keys[self.order.pop()])
        return keys

    def _prefetch(self, keys: list[tuple[int, int]]) -> None:
        by_volume: dict[int, list[int]] = {}
        for v, k in keys:
            if k >= 0:
                by_volume.setdefault(v, []).append(k)
        for v, ks in by_volume.items():
            self.volumes[v].slices.prefetch(ks)

    def pairs(self) -> list[tuple[int, int]]:
        """The (volume, slice) pairs to draw the next batch from; moves the window on."""
        if self.count and self.count % self.batches == 0:
            self.current, self.upcoming = self.upcoming, self._next_window()
            self._prefetch(self.upcoming)
        self.count += 1
        return [p for key in self.current for p in self.groups[key]]

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "order": list(self.order),
            "count": self.count,
            "current": [list(k) for k in self.current],
            "upcoming": [list(k) for k in self.upcoming],
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = list(state["order"])
        self.count = int(state["count"])
        self.current = [tuple(k) for k in state["current"]]
        self.upcoming = [tuple(k) for k in state["upcoming"]]
        self._prefetch(self.current)
        self._prefetch(self.upcoming)
