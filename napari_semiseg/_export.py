"""Exporting a prediction and its maps from the review dock (worker side, no Qt): the formats
offered, the file names, and the writing: atomic files, a lazy prediction (streamed to zarr)
copied into a ``.zarr`` output slab by slab, or read whole for any other format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from src_models.data.lazy import is_lazy

#: export formats: label shown -> file suffix
FORMATS = {"NIfTI (.nii.gz)": ".nii.gz", "zarr (.zarr)": ".zarr", "TIFF (.tif)": ".tif"}


def safe_name(name: str) -> str:
    """A layer name as a file name: letters, digits, ``-_.``; anything else ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_") or "image"


def export_array(data: Any) -> Any:
    """A layer's data for export: numpy as it always was, lazy data (zarr, dask) untouched."""
    return data if is_lazy(data) else np.asarray(data)


def stream_zarr(path: Path, array: Any, meta, is_labels: bool) -> Path:
    """Copy a lazy (Z, Y, X) array into a zarr store at ``path`` slab by slab, atomically."""
    from napari_semiseg.io import stage_zarr
    from src_models.files import commit, discard

    dtype = np.dtype(array.dtype)
    if not is_labels and dtype.kind == "f":
        dtype = np.dtype(np.float32)
    staged, target = stage_zarr(path, tuple(array.shape), dtype, meta, labels=is_labels)
    try:
        step = max(1, (1 << 24) // max(1, int(np.prod(array.shape[1:]))))
        for z0 in range(0, array.shape[0], step):
            part = array[z0 : z0 + step]
            part = part.compute() if hasattr(part, "compute") else part
            target[z0 : z0 + step] = np.asarray(part, dtype=dtype)
        return commit([staged])[0]
    finally:
        discard([staged] if staged.tmp.exists() else [])


def write_all(base: Path, items: list[tuple[Any, np.ndarray, bool]], meta) -> list[Path]:
    """Worker side: the mask at ``base``, maps next to it (``io.map_path``), atomically. Lazy
    arrays (a prediction streamed to zarr) are streamed into a ``.zarr`` output slab by slab,
    and read whole one at a time for any other format (one output in memory at once)."""
    from napari_semiseg.io import map_path, volume_format, write_volume

    out = []
    for target, array, is_labels in items:
        path = target if isinstance(target, Path) else map_path(base, target)
        if is_lazy(array) and volume_format(path) == ".zarr" and len(array.shape) == 3:
            out.append(stream_zarr(path, array, meta, is_labels))
            continue
        if is_lazy(array):
            part = array.compute() if hasattr(array, "compute") else array[...]
            array = np.asarray(part)
        out.append(write_volume(path, array, meta, labels=is_labels))
        del array
    return out
