"""napari writers: label (and image) layers to NIfTI, zarr or TIFF via :mod:`napari_semiseg.io`.

Files are written atomically. The geometry comes from the layer's metadata when the layer was
read by this plugin or derived from such a layer (the source affine and NIfTI header, so the
mask opens aligned in ITK-SNAP or 3D Slicer), else from the layer's scale and translate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_semiseg.io import ImageMeta, write_volume


def layer_image_meta(
    metadata: dict | None, scale: Any = None, translate: Any = None, ndim: int = 3
) -> ImageMeta:
    """The geometry to write a layer with: the source's :class:`ImageMeta` when known, else a
    diagonal affine from ``scale``/``translate`` (spatial axes last)."""
    metadata = metadata or {}
    known = metadata.get("image_meta")
    if isinstance(known, ImageMeta):
        return ImageMeta(known.affine, known.spacing, None, known.header)
    affine = metadata.get("affine")
    spatial = min(ndim, 3)
    if affine is not None:
        affine = np.asarray(affine, dtype=float)
        spacing = tuple(float(s) for s in np.linalg.norm(affine[:spatial, :spatial], axis=0))
        return ImageMeta(affine, spacing)
    scale = np.ones(spatial) if scale is None else np.asarray(scale, float)[-spatial:]
    translate = np.zeros(spatial) if translate is None else np.asarray(translate, float)[-spatial:]
    affine = np.eye(4)
    affine[:spatial, :spatial] = np.diag(scale)
    affine[:spatial, 3] = translate
    return ImageMeta(affine, tuple(float(s) for s in scale))


def _write(path: str, data: Any, meta: dict, labels: bool) -> list[str]:
    array = np.asarray(data[0] if meta.get("multiscale") else data)
    geometry = layer_image_meta(
        meta.get("metadata"), meta.get("scale"), meta.get("translate"), array.ndim
    )
    return [str(write_volume(path, array, geometry, labels=labels))]


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one labels layer (integer class ids) to ``.nii.gz``/``.nii``/``.zarr``/``.tif``."""
    return _write(path, data, meta, labels=True)


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """Write one image layer (e.g. a confidence map) as float32 / its own dtype."""
    return _write(path, data, meta, labels=False)
