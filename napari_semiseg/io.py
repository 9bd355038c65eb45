"""Reading and writing volumes: NIfTI, TIFF, zarr and ``.npy`` (no Qt, no napari).

Array layout
    NIfTI arrays keep the file's voxel order (i, j, k) so that ``meta.affine`` maps array
    indices to world coordinates directly; a 4D NIfTI (i, j, k, c) is returned channels-first
    (c, i, j, k) and written back channels-last. TIFF arrays follow the file's axes with a
    channel axis moved first (C, Z, Y, X). zarr and ``.npy`` arrays are returned as stored.

Spacing (``ImageMeta.spacing``, one value per spatial axis, in array order)
    NIfTI: the header zooms (mm). TIFF: ImageJ ``spacing`` (Z) and the X/Y resolution tags,
    in the file's unit (this tool writes ``unit=mm``); 1 where absent. zarr: the ``spacing``
    attribute. ``.npy``: 1 (the format has no metadata).

zarr layout
    This tool writes a directory store with the array at the root and the attributes
    ``affine`` (4x4 list, absent when unknown), ``spacing`` (list) and ``semiseg``
    (``{"labels": bool}``). When reading, a group is accepted too: its array ``data`` is used,
    else its first array in sorted key order; attributes are read from the array, then the
    group.

Writes are atomic: the file (or zarr directory) is written under a temporary name in the
destination folder and renamed onto the target; on failure the temporary is removed and an
existing target is left untouched. Label masks are written with an integer dtype (uint8 when
the maximum is below 256, else uint16, else int32) and, for NIfTI, with the same affine and
qform/sform codes as the source header, so they open aligned with the image in ITK-SNAP or
3D Slicer.

Every user-fixable problem (missing file, unsupported extension, unreadable or truncated file,
non-integer labels, an output folder that cannot be created) raises :class:`SemisegError`
with a one-line message naming the file and the fix.

Modules: reading is here; writing is in :mod:`napari_semiseg._io_write` and what both share
(the formats, :class:`ImageMeta`, :func:`as_labels`) in :mod:`napari_semiseg._io_formats`.
Every public name of the three is imported from here (``from napari_semiseg.io import
write_volume``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_semiseg._io_formats import (
    SUPPORTED,
    ImageMeta,
    _default_spacing,
    _one_line,
    _spatial_ndim,
    as_labels,
    map_path,
    volume_format,
)
from napari_semiseg._io_write import (
    ZARR_METADATA,
    is_zarr_store,
    stage_volume,
    stage_zarr,
    write_volume,
    write_volumes,
)
from src_models.errors import SemisegError

__all__ = [
    "DEFAULT_LAZY_VOXELS",
    "LAZY_VOXELS",
    "LAZY_VOXELS_PROBLEM",
    "SUPPORTED",
    "ZARR_METADATA",
    "ImageMeta",
    "as_labels",
    "geometry_mismatch",
    "image_volume",
    "is_zarr_store",
    "label_volume",
    "lazy_voxels_setting",
    "map_path",
    "open_image",
    "open_volume",
    "read_labels",
    "read_volume",
    "stage_volume",
    "stage_zarr",
    "volume_format",
    "write_volume",
    "write_volumes",
]

_NIFTI = (".nii", ".nii.gz")
_TIFF = (".tif", ".tiff")


# ----------------------------------------------------------------------------- helpers


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise SemisegError(f"file not found: {path}; check the path and the file name")


def _unreadable(path: Path, exc: BaseException) -> SemisegError:
    """The error for a file that could not be read: a permission problem is named as one
    (the file is fine), anything else as a damaged file."""
    if isinstance(exc, PermissionError):
        return SemisegError(
            f"cannot read {path}: permission denied; give yourself read access "
            f"(e.g. chmod u+r) or copy the file somewhere readable"
        )
    return SemisegError(
        f"cannot read {path} ({_one_line(exc)}); the file may be truncated or corrupt: "
        "re-export or re-download it"
    )


# ----------------------------------------------------------------------------- reading


_UNITS = {"micron": "µm", "um": "µm", "\\u00b5m": "µm", "µm": "µm", "μm": "µm", "mm": "mm"}
_UNITS.update({"millimeter": "mm", "nm": "nm", "nanometer": "nm", "m": "m", "meter": "m"})
_UNITS.update({"micrometer": "µm"})


def _unit(text) -> str | None:
    """A unit name as this tool spells it ("µm", "mm", ...), None when absent or a pixel."""
    if not text:
        return None
    text = str(text).strip()
    return _UNITS.get(text.lower(), _UNITS.get(text, text)) if text.lower() != "pixel" else None


def _with_layout(array: np.ndarray, meta: ImageMeta) -> tuple[np.ndarray, ImageMeta]:
    """Unpack colour (structured RGB) voxels into channels first, drop trailing singleton axes
    beyond three (X, Y, Z, 1), and name the axes in ``meta.layout`` when the reader did not:
    a (Y, X, 3|4) uint8 array is one RGB(A) image, not three slices."""
    if np.iscomplexobj(array):  # MRI raw data: which part to segment is the user's call
        raise SemisegError(
            f"{meta.source or 'the image'} holds complex values: save the magnitude "
            "(numpy.abs) or the part to segment as a real-valued image"
        )
    if array.dtype.names:  # NIfTI RGB24 / RGBA32: one field per colour
        array = np.stack([array[name] for name in array.dtype.names])
        meta.layout = "C" + (meta.layout or "ZYX"[-(array.ndim - 1) :])
        return array, meta
    while array.ndim > 3 and array.shape[-1] == 1 and not meta.layout:
        array = array[..., 0]
    if not meta.layout:
        if array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8:
            if min(array.shape[:2]) >= 8:
                array = np.moveaxis(array, -1, 0)
                meta.layout = "CYX"
                meta.spacing = tuple(meta.spacing[:2]) if len(meta.spacing) >= 2 else (1.0, 1.0)
                return array, meta
        meta.layout = {2: "YX", 3: "ZYX", 4: "CZYX"}.get(array.ndim, "")
    return array, meta


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """Read an image volume and its geometry; see the module docstring for layouts."""
    path = Path(path).expanduser()
    fmt = volume_format(path)
    _check_exists(path)
    try:
        if fmt in _NIFTI:
            array, meta = _read_nifti(path)
        elif fmt in _TIFF:
            array, meta = _read_tiff(path)
        elif fmt == ".zarr":
            array, meta = _read_zarr(path)
        else:
            array, meta = _read_npy(path)
        return _with_layout(array, meta)
    except SemisegError:
        raise
    except Exception as exc:  # nibabel, gzip, zlib, tifffile, zarr all raise their own types
        raise _unreadable(path, exc) from exc


def read_labels(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """Read a label volume as integer class ids (uint8/uint16/int32).

    Float files whose values are whole numbers are accepted (many NIfTI masks are stored as
    float32); fractions, NaN or negative values, and colour (multi-channel) images raise
    :class:`SemisegError`.
    """
    array, meta = read_volume(path)
    if meta.layout.startswith("C"):
        raise SemisegError(
            f"{path} is a colour (multi-channel) image of shape {array.shape}, not a label map: "
            "labels must be one channel of integer ids (0 = background); export the label "
            "map itself, not a coloured overlay"
        )
    return as_labels(array, str(path)), meta


#: more voxels than this in a zarr, .npy or TIFF file: :func:`open_volume` reads it lazily
#: (environment variable SEMISEG_LAZY_VOXELS overrides it)
DEFAULT_LAZY_VOXELS = 64 * 2**20


def lazy_voxels_setting(text: str | None) -> tuple[int, str]:
    """(bound, problem) for the value of ``SEMISEG_LAZY_VOXELS``: unset or empty gives the
    default; whole numbers (``67108864``, ``1e6``) are taken; anything else gives the
    default and a message naming the fix (the CLI refuses to run with it)."""
    if text is None or not text.strip():
        return DEFAULT_LAZY_VOXELS, ""
    try:
        value = float(text)
        if not (math.isfinite(value) and value >= 1 and value == int(value)):
            raise ValueError(text)
        return int(value), ""
    except ValueError:
        return DEFAULT_LAZY_VOXELS, (
            f"the environment variable SEMISEG_LAZY_VOXELS={text!r} is not a voxel count: "
            f"unset it or give a whole number such as {DEFAULT_LAZY_VOXELS}"
        )


LAZY_VOXELS, LAZY_VOXELS_PROBLEM = lazy_voxels_setting(os.environ.get("SEMISEG_LAZY_VOXELS"))


def open_volume(path: str | os.PathLike, lazy_above: int | None = None):
    """Like :func:`read_volume`, but a zarr / OME-Zarr, ``.npy`` or TIFF volume (Z, Y, X) or
    (C, Z, Y, X) of more than ``lazy_above`` voxels comes back lazy (a zarr array or a
    memory map): nothing is read until it is indexed. Returns (array-like, meta)."""
    lazy_above = LAZY_VOXELS if lazy_above is None else lazy_above
    path = Path(path).expanduser()
    fmt = volume_format(path)
    _check_exists(path)
    try:
        if fmt == ".zarr":
            arr, meta = _open_zarr(path)
        elif fmt == ".npy":
            arr = np.load(str(path), mmap_mode="r")
            meta = ImageMeta(source=str(path), calibrated=False)
            meta.spacing = _default_spacing(min(arr.ndim, 3))
        elif fmt in _TIFF:
            arr, meta = _open_tiff(path)
        else:
            arr = None
    except SemisegError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    size = int(np.prod(arr.shape)) if arr is not None else 0
    if arr is None or size <= lazy_above or len(arr.shape) not in (3, 4) or arr.dtype.names:
        return read_volume(path)
    meta.layout = "ZYX" if len(arr.shape) == 3 else "CZYX"
    return arr, meta


def _open_tiff(path: Path):
    """A (C)ZYX TIFF's first series as a lazy zarr array (tifffile's zarr store), else
    (None, None)."""
    import tifffile
    import zarr

    with tifffile.TiffFile(str(path)) as tf:
        axes = tf.series[0].axes.upper()
        if axes not in ("ZYX", "CZYX"):
            return None, None
        spacing, affine, unit, calibrated = _tiff_geometry(tf, axes)
    arr = zarr.open(tifffile.imread(str(path), aszarr=True), mode="r")
    space = tuple(spacing[a] for a in "ZYX")
    meta = ImageMeta(affine=affine, spacing=space, source=str(path), unit=unit)
    meta.calibrated = calibrated
    return arr, meta


def open_image(path: str | os.PathLike):
    """An image as (C, Z, Y, X): a numpy array, or for a volume larger than memory a lazy
    :class:`~src_models.data.lazy.ChannelsFirst` view (see :func:`open_volume`)."""
    from src_models.data.lazy import ChannelsFirst, is_lazy

    array, meta = open_volume(path)
    if is_lazy(array):
        return ChannelsFirst(array, meta.layout == "CZYX"), meta
    return image_volume(array, meta), meta


def image_volume(array: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """An image as read, as (C, Z, Y, X): a 2D image is one slice (Z = 1) and an RGB image's
    colours are channels."""
    lift = {"YX": (None, None), "CYX": (slice(None), None), "ZYX": (None,), "CZYX": ()}
    if meta.layout not in lift:
        raise SemisegError(
            f"{meta.source}: an array of shape {array.shape} is not an image volume: expected "
            "(Z, Y, X), (C, Z, Y, X), a 2D image (Y, X) or an RGB image (Y, X, 3)"
        )
    return array[lift[meta.layout]]


def label_volume(array: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Labels as read, as (Z, Y, X): a 2D label image is one slice."""
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise SemisegError(
            f"{meta.source}: labels of shape {array.shape} are not a label volume (Z, Y, X)"
        )
    return array


def geometry_mismatch(image: ImageMeta, labels: ImageMeta) -> str:
    """How the voxel grids of an image and its labels differ ("" when they agree, or when
    one of them does not say): spacing, or the affine (orientation/origin). A file without
    calibration (a plain TIFF or .npy, an ImageJ TIFF without a voxel size) says nothing,
    whatever its format."""
    if not (image.calibrated and labels.calibrated):
        return ""
    a, b = image.affine, labels.affine
    if a is not None and b is not None and a.shape == b.shape:
        tol = 1e-3 * max(1e-6, float(np.abs(a[:3, :3]).max()))
        if not np.allclose(a, b, atol=tol):
            sa, sb = np.round(a[:3, 3], 3).tolist(), np.round(b[:3, 3], 3).tolist()
            if np.allclose(a[:3, :3], b[:3, :3], atol=tol):
                return f"origins {sa} vs {sb}"
            return "voxel sizes or orientations differ (affines disagree)"
        return ""
    sa, sb = tuple(image.spacing), tuple(labels.spacing)
    if a is None and b is None and len(sa) == len(sb) and not np.allclose(sa, sb, rtol=1e-3):
        return f"spacing {sa} vs {sb}"
    return ""


def _read_nifti(path: Path) -> tuple[np.ndarray, ImageMeta]:
    import nibabel as nib

    img = nib.load(str(path))
    header = img.header
    # Reading the data object keeps integer dtypes when no scaling is stored and forces the
    # full (de)compression now, so truncated files fail here.
    array = np.asarray(np.asanyarray(img.dataobj))
    if array.dtype == np.float64 and header.get_data_dtype() != np.float64:
        array = array.astype(np.float32)  # nibabel scales in float64; halve the memory
    while array.ndim > 3 and array.shape[-1] == 1:  # (X, Y, Z, 1): no channel axis
        array = array[..., 0]
    ndim = min(array.ndim, 3)
    # Zooms are float32 in the header: report their shortest decimal form (0.8, not 0.800..01).
    zooms = tuple(float(str(np.float32(z))) for z in header.get_zooms()[:ndim])
    if array.ndim == 4:
        array = np.moveaxis(array, -1, 0)
    elif array.ndim > 4:
        raise SemisegError(
            f"{path} has {array.ndim} dimensions; expected a 2D/3D volume or 3D + channels"
        )
    meta = ImageMeta(
        affine=np.asarray(img.affine, dtype=np.float64),
        spacing=zooms,
        source=str(path),
        header=header.copy(),
        layout={2: "YX", 3: "ZYX", 4: "CZYX"}[array.ndim] if not array.dtype.names else "",
        unit=_unit(header.get_xyzt_units()[0]) if header.get_xyzt_units()[0] != "unknown" else None,
    )
    return array, meta


def _tiff_geometry(tf, axes: str) -> tuple[dict[str, float], np.ndarray | None, str | None, bool]:
    """Spacing per axis letter, affine and unit of an open TiffFile (ImageJ or tifffile
    metadata; X/Y resolution tags)."""
    spacing = {ax: 1.0 for ax in "ZYX"}
    affine = None
    page = tf.pages[0]
    for ax, tag in (("X", "XResolution"), ("Y", "YResolution")):
        if tag in page.tags:
            num, den = page.tags[tag].value
            if num > 0 and den > 0 and (num, den) != (1, 1):
                spacing[ax] = den / num
    ij = tf.imagej_metadata or {}
    unit = _unit(ij.get("unit"))
    if "spacing" in ij:
        spacing["Z"] = float(ij["spacing"])
    props = ij.get("Properties") or {}
    if "semiseg_affine" in props:
        affine = np.asarray(json.loads(props["semiseg_affine"]), dtype=np.float64)
    shaped = tf.shaped_metadata[0] if tf.is_shaped and tf.shaped_metadata else {}
    if "spacing" in shaped:
        spatial_axes = [a for a in axes if a in "ZYX"]
        for ax, sp in zip(spatial_axes, shaped["spacing"], strict=False):
            spacing[ax] = float(sp)
    if shaped.get("affine") is not None:
        affine = np.asarray(shaped["affine"], dtype=np.float64)
    unit = unit or _unit(shaped.get("unit"))
    calibrated = affine is not None or unit is not None or any(v != 1.0 for v in spacing.values())
    return spacing, affine, unit, calibrated


def _read_tiff(path: Path) -> tuple[np.ndarray, ImageMeta]:
    import tifffile

    with tifffile.TiffFile(str(path)) as tf:
        series = tf.series[0]
        axes = series.axes.upper()
        array = series.asarray()
        spacing, affine, unit, calibrated = _tiff_geometry(tf, axes)
    # Move a channel (or sample) axis first, drop other singleton axes tifffile reports.
    for ch in ("C", "S"):
        if ch in axes and axes.index(ch) != 0:
            i = axes.index(ch)
            array = np.moveaxis(array, i, 0)
            axes = ch + axes[:i] + axes[i + 1 :]
    space = tuple(spacing[a] for a in axes if a in "ZYX")
    space = space or _default_spacing(_spatial_ndim(array))
    layout = axes.replace("S", "C")
    layout = layout if len(layout) == array.ndim and set(layout) <= set("CZYX") else ""
    meta = ImageMeta(affine=affine, spacing=space, source=str(path), layout=layout, unit=unit)
    meta.calibrated = calibrated
    return array, meta


def _zarr_array(root):
    import zarr

    if isinstance(root, zarr.Array):
        return root, None
    keys = sorted(root.array_keys())
    if not keys:
        raise SemisegError(f"no array found in the zarr store {root}; store one under 'data'")
    return root["data" if "data" in keys else keys[0]], root


class _AxesDropped:
    """A lazy view of a zarr array without some of its axes (each read at index 0): an
    OME-NGFF (t, c, z, y, x) image with one time point and one channel read as (z, y, x)."""

    def __init__(self, array, dropped: Sequence[int]) -> None:
        self.array = array
        self.dropped = sorted(dropped)
        kept = [a for a in range(len(array.shape)) if a not in self.dropped]
        self.shape = tuple(array.shape[a] for a in kept)
        self.ndim = len(self.shape)
        self.dtype = array.dtype
        chunks = getattr(array, "chunks", None)
        self.chunks = tuple(chunks[a] for a in kept) if chunks is not None else None
        self.attrs = getattr(array, "attrs", {})
        self.store = getattr(array, "store", None)

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis for i in index):
            at = next(k for k, i in enumerate(index) if i is Ellipsis)
            fill = (slice(None),) * (self.ndim - len(index) + 1)
            index = index[:at] + fill + index[at + 1 :]
        index = list(index) + [slice(None)] * (self.ndim - len(index))
        full = []
        for a in range(len(self.array.shape)):
            full.append(0 if a in self.dropped else index.pop(0))
        return self.array[tuple(full)]

    def __array__(self, dtype=None, copy=None):
        data = np.asarray(self[...])
        return data if dtype is None else data.astype(dtype)


def _ome_image(group, ms: dict, path: Path):
    """The array OME-NGFF ``multiscales`` metadata ``ms`` points to, as (Z, Y, X) or
    (C, Z, Y, X) (singleton time and channel axes dropped), its level's scale and unit."""
    datasets = ms.get("datasets") or []
    present = [d for d in datasets if isinstance(d, dict) and str(d.get("path")) in group]
    if not present:
        raise SemisegError(
            f"{path}: the OME-Zarr lists the levels "
            f"{[d.get('path') for d in datasets if isinstance(d, dict)]} but none is in the "
            "store; copy the store again (its level folders are missing)"
        )
    level = present[0]
    if level is not datasets[0]:  # a lower resolution: its own scale, and say so
        warnings.warn(
            f"{path}: level {datasets[0].get('path')!r} is missing; reading level "
            f"{level.get('path')!r} (lower resolution) with its own voxel size",
            stacklevel=3,
        )
    arr = group[str(level["path"])]
    axes = ms.get("axes") or []
    names = [(a.get("name") if isinstance(a, dict) else str(a)).lower() for a in axes]
    types = [
        (a.get("type") if isinstance(a, dict) else None)
        or {"t": "time", "c": "channel"}.get(n, "space")
        for a, n in zip(axes, names, strict=False)
    ]
    if len(names) != len(arr.shape):
        names, types = [], []  # no usable axes metadata: the shape decides, as any zarr
    dropped = []
    for a, kind in enumerate(types):
        if kind == "time":
            if arr.shape[a] != 1:
                raise SemisegError(
                    f"{path} is a time series of {arr.shape[a]} time points: save the time "
                    "point to segment as its own image"
                )
            dropped.append(a)
        elif kind == "channel" and arr.shape[a] == 1:
            dropped.append(a)
    space = [a for a, kind in enumerate(types) if kind == "space"]
    scale = None
    for t in level.get("coordinateTransformations", []) or []:
        if isinstance(t, dict) and t.get("type") == "scale":
            scale = [float(v) for v in t["scale"]]
    spacing = None
    if scale is not None:
        spacing = tuple(scale[a] for a in space) if space else tuple(scale[-3:])
    units = [a.get("unit") for a in axes if isinstance(a, dict) and a.get("type") == "space"]
    unit = _unit(next((u for u in units if u), None))
    view = _AxesDropped(arr, dropped) if dropped else arr
    return view, spacing, unit


def _open_zarr(path: Path):
    """The zarr array of a store (lazy) and its geometry; an OME-Zarr multiscale group gives
    its full-resolution level (or the first level present, with that level's scale) read
    through its axes: singleton time and channel axes dropped, channels first."""
    import zarr

    root = zarr.open(store=str(path), mode="r")
    group = None if isinstance(root, zarr.Array) else root
    attrs = dict(group.attrs) if group is not None else {}
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if multiscales and group is not None:
        arr, ome_spacing, ome_unit = _ome_image(group, multiscales[0], path)
    else:
        arr, group = _zarr_array(root)
        attrs = dict(group.attrs) if group is not None else {}
        ome_spacing = ome_unit = None
    attrs.update(dict(getattr(arr, "attrs", {})))
    ndim = min(len(arr.shape), 3)
    spacing = attrs.get("spacing")
    spacing = tuple(float(s) for s in spacing) if spacing else _default_spacing(ndim)
    if ome_spacing:
        spacing = tuple(ome_spacing[-ndim:])
    unit = _unit(attrs.get("unit")) or ome_unit
    affine = attrs.get("affine")
    affine = np.asarray(affine, dtype=np.float64) if affine is not None else None
    meta = ImageMeta(affine=affine, spacing=spacing, source=str(path), unit=unit)
    meta.calibrated = bool(attrs.get("spacing") or ome_spacing or affine is not None)
    return arr, meta


def _read_zarr(path: Path) -> tuple[np.ndarray, ImageMeta]:
    arr, meta = _open_zarr(path)
    return np.asarray(arr[...]), meta


def _read_npy(path: Path) -> tuple[np.ndarray, ImageMeta]:
    try:
        array = np.load(str(path), allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise SemisegError(
                f"{path} holds Python objects, not a numeric array; save it with "
                "np.save(path, array.astype(np.float32)) or another numeric dtype"
            ) from exc
        raise
    if not isinstance(array, np.ndarray):
        raise SemisegError(f"{path} is not a single .npy array; save one array per file")
    meta = ImageMeta(spacing=_default_spacing(_spatial_ndim(array)), source=str(path))
    meta.calibrated = False
    return array, meta
