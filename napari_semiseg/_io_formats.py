"""What reading (:mod:`napari_semiseg.io`) and writing (:mod:`napari_semiseg._io_write`)
volumes share: the supported formats by extension, the geometry record :class:`ImageMeta`,
integer label ids (:func:`as_labels`) and the one-line wording of an error. Import these
from :mod:`napari_semiseg.io`, which re-exports them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src_models.errors import SemisegError

SUPPORTED = (".nii", ".nii.gz", ".tif", ".tiff", ".zarr", ".npy")


@dataclass
class ImageMeta:
    """Geometry of a volume: where its voxels are in the world and how big they are."""

    affine: np.ndarray | None = None  # 4x4 voxel -> world (NIfTI); None when unknown
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)  # voxel size per spatial axis (array order)
    source: str | None = None  # path it came from
    header: object | None = None  # the nibabel header when read from NIfTI (kept for writing)
    #: axes of the array as read: "ZYX", "CZYX", "YX" (one 2D image) or "CYX" (2D, channels)
    layout: str = ""
    unit: str | None = None  # physical unit of the spacing ("mm", "µm", ...) when known
    #: False when the file says nothing of its voxel size (a plain TIFF, a .npy): its
    #: spacing is the default 1 and no grid comparison uses it
    calibrated: bool = True


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())


def volume_format(path: str | os.PathLike) -> str:
    """The format of ``path`` by its extension (lower case), one of :data:`SUPPORTED`."""
    name = Path(str(path).rstrip("/\\")).name.lower()
    for ext in sorted(SUPPORTED, key=len, reverse=True):
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    raise SemisegError(
        f"unsupported file type for {path}: use one of {', '.join(SUPPORTED)} "
        "(e.g. convert it to .nii.gz)"
    )


def map_path(out_path: str | os.PathLike, name: str) -> Path:
    """Path of the map ``name`` written beside ``out_path``.

    ``map_path("out/pred.nii.gz", "confidence") -> out/pred_confidence.nii.gz``.
    """
    out_path = Path(str(out_path).rstrip("/\\"))
    ext = volume_format(out_path)
    base = out_path.name[: -len(ext)]
    return out_path.with_name(f"{base}_{name}{out_path.name[-len(ext) :]}")


def _spatial_ndim(array: np.ndarray) -> int:
    return min(array.ndim, 3)


def _default_spacing(ndim: int) -> tuple[float, ...]:
    return (1.0,) * ndim


def _label_dtype(max_value: int) -> np.dtype:
    if max_value < 256:
        return np.dtype(np.uint8)
    if max_value < 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def as_labels(array: np.ndarray, source: str) -> np.ndarray:
    """Integer class ids in the smallest fitting dtype; SemisegError otherwise."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            raise SemisegError(
                f"labels in {source} contain NaN or infinite values; labels must be integer "
                "class ids (0 = background)"
            )
        frac = array != np.round(array)
        if frac.any():
            example = float(array[frac].flat[0])
            raise SemisegError(
                f"labels in {source} are not integers (e.g. {example!r}, which rounds to "
                f"{round(example)}); labels must be integer class ids (0 = background): round "
                "the mask (numpy.rint) and save it with an integer dtype"
            )
    elif not np.issubdtype(array.dtype, np.integer):
        raise SemisegError(
            f"labels in {source} have dtype {array.dtype}; labels must be integer class ids"
        )
    if array.size == 0:
        return array.astype(np.uint8)
    lo, hi = array.min(), array.max()
    if lo < 0:
        raise SemisegError(
            f"labels in {source} contain negative values ({lo:g}); labels must be class ids "
            "0..K (0 = background)"
        )
    if hi > np.iinfo(np.int32).max:
        # e.g. a 0 / 4294967295 (uint32 "all bits") mask: few values are renumbered later
        # (label_values: two values train as binary), many are ids of an instance mask
        values = np.unique(array)
        if len(values) > 256:
            raise SemisegError(
                f"labels in {source} hold {len(values)} different values up to {int(hi)}: "
                "this looks like an instance mask (one id per object), not class ids; "
                "save one id per class (0 = background)"
            )
        return array.astype(np.int64)
    dtype = _label_dtype(int(hi))
    return array if array.dtype == dtype else array.astype(dtype)
