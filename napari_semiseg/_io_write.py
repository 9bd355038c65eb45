"""Writing volumes: NIfTI, TIFF, zarr and ``.npy``, atomically and several all or nothing
(:func:`write_volumes`), or an empty zarr store to fill slab by slab (:func:`stage_zarr`).

What is written (dtypes, affine and qform/sform codes, spacing, the zarr attributes) is
described in :mod:`napari_semiseg.io`, which re-exports every public name of this module:
import them from there.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from napari_semiseg._io_formats import (
    ImageMeta,
    _default_spacing,
    _one_line,
    _spatial_ndim,
    as_labels,
    volume_format,
)
from src_models.errors import SemisegError
from src_models.files import Staged, commit, discard, stage_dir, stage_file

_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)


def _spacing_from_meta(meta: ImageMeta | None, ndim: int) -> tuple[float, ...]:
    if meta is None or meta.spacing is None:
        return _default_spacing(ndim)
    spacing = tuple(float(s) for s in meta.spacing)
    if len(spacing) >= ndim:
        return spacing[-ndim:] if ndim else ()
    return (1.0,) * (ndim - len(spacing)) + spacing


def write_volume(
    path: str | os.PathLike,
    array: np.ndarray,
    meta: ImageMeta | None = None,
    *,
    labels: bool = False,
) -> Path:
    """Write ``array`` atomically to ``path`` (format from the extension); returns the path.

    ``labels=True`` writes integer class ids (uint8/uint16/int32); otherwise floating arrays
    are written as float32 and other dtypes as given. ``meta`` supplies the affine, spacing
    and (NIfTI) the source header so the output is aligned with the source image.
    """
    return write_volumes([(path, array, meta, labels)])[0]


def write_volumes(items) -> list[Path]:
    """Write several volumes, all or nothing: each ``(path, array, meta, labels)`` is staged
    under a temporary name first and the outputs are renamed onto their paths only once all
    are complete; on failure no output appears and nothing existing is touched."""
    staged: list[Staged] = []
    try:
        for path, array, meta, labels in items:
            staged.append(stage_volume(path, array, meta, labels=labels))
        return commit(staged)
    except OSError as exc:
        raise SemisegError(
            f"cannot write {path} ({_one_line(exc)}); check free disk space and permissions"
        ) from exc
    finally:
        discard(staged)  # what was committed is gone from its temporary name


def stage_volume(
    path: str | os.PathLike, array: np.ndarray, meta: ImageMeta | None = None, *, labels=False
) -> Staged:
    """Write ``array`` under a temporary name beside ``path`` (see :mod:`src_models.files`)."""
    path = Path(str(path).rstrip("/\\")).expanduser()
    fmt = volume_format(path)
    array = np.asarray(array)
    if labels:
        array = as_labels(array, f"the mask for {path}")
    elif array.dtype == bool:
        array = array.astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating) and array.dtype != np.float32:
        array = array.astype(np.float32)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SemisegError(
            f"cannot create the output folder {parent} ({_one_line(exc)}); choose a writable "
            "location"
        ) from exc
    if path.is_dir() and fmt != ".zarr":
        raise SemisegError(f"{path} is a folder; choose a file name for the output")
    if fmt == ".zarr":
        return stage_dir(path, lambda tmp: _write_zarr(tmp, array, meta, labels))
    writer = {
        ".nii": _write_nifti,
        ".nii.gz": _write_nifti,
        ".tif": _write_tiff,
        ".tiff": _write_tiff,
        ".npy": _write_npy,
    }[fmt]
    # Keep the real extension last: nibabel picks gzip from the suffix.
    return stage_file(path, lambda tmp: writer(tmp, array, meta, labels), suffix=fmt)


def _write_nifti(tmp: Path, array: np.ndarray, meta: ImageMeta | None, labels: bool) -> None:
    import nibabel as nib

    data = np.moveaxis(array, 0, -1) if array.ndim == 4 else array
    if data.dtype in (np.int64, np.uint64, np.uint32):
        # 64-bit integers are not read by many NIfTI tools: use int32 when the values fit.
        info = np.iinfo(np.int32)
        if data.size and (data.min() < info.min or data.max() > info.max):
            data = data.astype(np.float64)
        else:
            data = data.astype(np.int32)
    ndim = min(array.ndim, 3)
    header = getattr(meta, "header", None)
    affine = getattr(meta, "affine", None)
    if affine is None:
        spacing = _spacing_from_meta(meta, ndim)
        affine = np.diag([*spacing, *([1.0] * (4 - len(spacing)))])
    affine = np.asarray(affine, dtype=np.float64)
    if isinstance(header, nib.Nifti1Header):
        hdr = header.copy()
        qform_code, sform_code = int(hdr["qform_code"]), int(hdr["sform_code"])
        qform = hdr.get_qform() if qform_code > 0 else affine
        img = nib.Nifti1Image(data, affine, header=hdr)
        # Same geometry and codes as the source, so viewers align the mask with the image.
        img.set_sform(affine, code=sform_code)
        img.set_qform(qform, code=qform_code)
    else:
        img = nib.Nifti1Image(data, affine)
        img.set_sform(affine, code=1)
        img.set_qform(affine, code=1)
    out = img.header
    out.set_data_dtype(data.dtype)
    out.set_slope_inter(1.0, 0.0)
    nifti_unit = {"mm": "mm", "µm": "micron", "m": "meter"}.get(getattr(meta, "unit", None) or "")
    if nifti_unit:
        out.set_xyzt_units(xyz=nifti_unit)
    out["cal_min"], out["cal_max"] = 0.0, 0.0
    if labels:
        out.set_intent("label")
    else:
        out.set_intent("none")
    img.to_filename(str(tmp))


def _write_tiff(tmp: Path, array: np.ndarray, meta: ImageMeta | None, labels: bool) -> None:
    import tifffile

    ndim = _spatial_ndim(array) if array.ndim <= 3 else 3
    spacing = _spacing_from_meta(meta, ndim)
    affine = getattr(meta, "affine", None)
    axes = {2: "YX", 3: "ZYX", 4: "CZYX"}.get(array.ndim)
    if axes is None:
        raise SemisegError(f"cannot write a {array.ndim}D array to {tmp.name}: expected 2D-4D")
    sy, sx = spacing[-2], spacing[-1]
    if array.dtype.type in _IMAGEJ_DTYPES:
        # ImageJ hyperstack order is (T)ZCYX: channels after Z.
        data = np.moveaxis(array, 0, 1) if array.ndim == 4 else array
        ij_axes = "ZCYX" if array.ndim == 4 else axes
        unit = getattr(meta, "unit", None) or "mm"
        metadata: dict = {"axes": ij_axes, "unit": "micron" if unit == "µm" else unit}
        if ndim == 3:
            metadata["spacing"] = float(spacing[0])
        if affine is not None:
            metadata["Properties"] = {
                "semiseg_affine": json.dumps(np.asarray(affine, float).tolist())
            }
        tifffile.imwrite(
            str(tmp), data, imagej=True, resolution=(1.0 / sx, 1.0 / sy), metadata=metadata
        )
    else:
        metadata = {"axes": axes, "spacing": [float(s) for s in spacing]}
        if getattr(meta, "unit", None):
            metadata["unit"] = meta.unit
        if affine is not None:
            metadata["affine"] = np.asarray(affine, float).tolist()
        tifffile.imwrite(str(tmp), array, resolution=(1.0 / sx, 1.0 / sy), metadata=metadata)


def _empty_zarr(tmp: Path, shape, dtype, meta: ImageMeta | None, labels: bool):
    """A zarr array at the root of the folder ``tmp`` with this tool's attributes."""
    import zarr

    # mkdtemp created the folder; the store must be created inside it.
    arr = zarr.open_array(store=str(tmp), mode="w", shape=tuple(shape), dtype=dtype)
    attrs: dict = {
        "spacing": [float(s) for s in _spacing_from_meta(meta, min(len(shape), 3))],
        "semiseg": {"labels": bool(labels)},
    }
    if getattr(meta, "unit", None):
        attrs["unit"] = meta.unit
    affine = getattr(meta, "affine", None)
    if affine is not None:
        attrs["affine"] = np.asarray(affine, dtype=float).tolist()
    arr.attrs.update(attrs)
    return arr


def _write_zarr(tmp: Path, array: np.ndarray, meta: ImageMeta | None, labels: bool) -> None:
    _empty_zarr(tmp, array.shape, array.dtype, meta, labels)[...] = array


#: what a zarr store's folders hold besides chunks (zarr v2 and v3)
ZARR_METADATA = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"})
_CHUNK = re.compile(r"^[0-9]+([./][0-9]+)*$")


def is_zarr_store(path: str | os.PathLike) -> bool:
    """Whether the folder ``path`` is a zarr store and holds nothing else: zarr metadata at
    its root, and below only metadata, chunk keys (``0.1.2``, ``c/0/1``) and sub-groups or
    arrays (OME-Zarr levels). What ``predict --force`` may replace."""
    root = Path(path)
    if not root.is_dir() or not ZARR_METADATA & {p.name for p in root.iterdir()}:
        return False
    for entry in root.rglob("*"):
        name = entry.name
        if entry.is_dir():
            if not (
                _CHUNK.match(name)
                or name == "c"
                or ZARR_METADATA & {p.name for p in entry.iterdir()}
            ):
                return False
        elif name not in ZARR_METADATA and not _CHUNK.match(name):
            return False
    return True


def stage_zarr(path: str | os.PathLike, shape, dtype, meta: ImageMeta | None, labels=False):
    """An empty zarr store staged beside ``path`` (to fill slab by slab, e.g. a prediction
    larger than memory, then :func:`src_models.files.commit`): (Staged, zarr array)."""
    path = Path(str(path).rstrip("/\\")).expanduser()
    if volume_format(path) != ".zarr":
        raise SemisegError(f"{path}: streaming needs a .zarr output")
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {}
    staged = stage_dir(
        path, lambda tmp: holder.update(a=_empty_zarr(tmp, shape, dtype, meta, labels))
    )
    return staged, holder["a"]


def _write_npy(tmp: Path, array: np.ndarray, meta: ImageMeta | None, labels: bool) -> None:
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
