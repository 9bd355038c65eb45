"""napari reader: NIfTI volumes and the zarr stores this tool writes.

A NIfTI file opens as an Image layer (or a Labels layer when its name says labels/seg/mask
and its values are integer class ids) with ``scale`` = the voxel sizes and ``translate`` = the
affine's origin, so volumes of different resolution overlay in millimetres; the full affine,
the :class:`~napari_semiseg.io.ImageMeta` (with the NIfTI header) and the path are kept in
``layer.metadata`` so masks written later get the source geometry back. The display uses only
scale and translate: an oblique or axis-permuting affine is kept exactly in the metadata but
shown axis-aligned.

zarr stores are claimed only when they carry this tool's ``semiseg`` attribute; other stores
are left to other readers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_semiseg.io import ImageMeta, read_labels, read_volume, volume_format
from src_models.errors import SemisegError

LABEL_NAME = re.compile(r"(label|seg|mask|annot|truth|gt\b|_gt)", re.IGNORECASE)


def napari_get_reader(path: str | list[str]):
    """Return :func:`read_layers` when ``path`` is something this plugin reads, else None."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(_claims(str(p)) for p in paths):
        return None
    return read_layers


def _claims(path: str) -> bool:
    try:
        fmt = volume_format(path)
    except SemisegError:
        return False
    if fmt in (".nii", ".nii.gz"):
        return True
    if fmt == ".zarr":
        return _is_our_zarr(path)
    return False


def _is_our_zarr(path: str) -> bool:
    try:
        import zarr

        root = zarr.open(store=str(path), mode="r")
    except Exception:  # noqa: BLE001  (not a store, unreadable, other version, ...)
        return False
    return "semiseg" in dict(root.attrs)


def layer_geometry(meta: ImageMeta, ndim: int) -> dict[str, Any]:
    """scale/translate for a layer of ``ndim`` axes (spatial ones last) from ``meta``."""
    spatial = min(ndim, 3)
    if meta.affine is not None:
        affine = np.asarray(meta.affine, dtype=float)
        scale = np.linalg.norm(affine[:spatial, :spatial], axis=0)
        translate = affine[:spatial, 3]
    else:
        scale = np.asarray(meta.spacing[-spatial:], dtype=float)
        translate = np.zeros(spatial)
    scale = np.where(scale > 0, scale, 1.0)
    lead = ndim - spatial
    return {
        "scale": (1.0,) * lead + tuple(float(s) for s in scale),
        "translate": (0.0,) * lead + tuple(float(t) for t in translate),
    }


def _name(path: str) -> str:
    name = Path(str(path).rstrip("/\\")).name
    return name[: -len(volume_format(name))]


def read_layers(path: str | list[str]) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer data tuples for every path (one layer each)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return [_read_one(str(p)) for p in paths]


def _read_one(path: str) -> tuple[Any, dict[str, Any], str]:
    fmt = volume_format(path)
    array, meta = read_volume(path)
    as_labels = False
    if fmt == ".zarr":
        import zarr

        as_labels = bool(dict(zarr.open(store=path, mode="r").attrs)["semiseg"].get("labels"))
    elif LABEL_NAME.search(_name(path)) and array.ndim <= 3:
        try:
            array, meta = read_labels(path)
            as_labels = True
        except SemisegError:  # fractions or negatives: an image after all
            as_labels = False
    if as_labels:
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(np.int32)
    kwargs = {
        "name": _name(path),
        **layer_geometry(meta, array.ndim),
        "metadata": {"affine": meta.affine, "image_meta": meta, "source": meta.source},
    }
    return array, kwargs, "labels" if as_labels else "image"
