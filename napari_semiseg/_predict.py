"""Whole-volume prediction for the plugin, free of Qt and napari.

:func:`predict_layers` predicts the whole volume with every map the method offers; it runs in
a worker thread (the review dock hands it to napari's ``create_worker``). The prediction of an
image larger than memory is streamed into a zarr store of the run folder
(:func:`prediction_store`). :func:`display_maps` turns a prediction into the layers to show,
on the GUI thread.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from napari_semiseg._jobs import _friendly
from napari_semiseg._labels import label_values
from napari_semiseg._layer_data import image_channels_first, lazy_image, sampled_percentile
from src_models.area_profile import volume_area_profile
from src_models.data.label_values import LabelValues
from src_models.data.lazy import is_lazy
from src_models.errors import SemisegError
from src_models.files import commit, stage_dir
from src_models.inference import VolumePrediction, predict_volume
from src_models.propagation import affordable, propagation_prior
from src_models.slice_smoothing import DEFAULT_SMOOTHING
from src_models.training.checkpoint import ModelBundle

#: a lazy prediction goes to ``<run folder>/PREDICTIONS/<image>-<time>.zarr``
PREDICTIONS = "predictions"


def release_free_memory() -> None:
    """Give the heap's free pages back to the system after a prediction: glibc keeps what a
    worker thread freed in that thread's arena (the viewer held ~400 MB more after Predict
    volume on a 64 x 512 x 512 volume, benchmarks/predict_memory.py). Linux/glibc only;
    elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        pass


def prediction_store(run_dir: Path, image_name: str) -> Path:
    """A new zarr store path in the run folder for the prediction of a lazy image."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in image_name).strip("_")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path(run_dir) / PREDICTIONS / f"{safe or 'image'}-{stamp}.zarr"


def _output_chunks(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """Chunks of a streamed output: thin along the slicing axis (slab writes), whole-ish
    planes otherwise (napari reads planes)."""
    return tuple(min(n, 16 if a == axis else 256) for a, n in enumerate(shape))


def predict_layers(
    bundle: ModelBundle,
    image: Any,
    rgb: bool = False,
    store: Path | None = None,
    labels: np.ndarray | None = None,
    labeled: list[int] | None = None,
    maps: Sequence[str] | None = None,
    smoothing: float = DEFAULT_SMOOTHING,
    spacing: Sequence[float] | None = None,
) -> VolumePrediction:
    """Labels and the ``maps`` (default: every map of the method) of a whole volume (worker
    side).

    A lazy image larger than :data:`napari_semiseg.io.LAZY_VOXELS` voxels
    (:func:`~napari_semiseg._layer_data.lazy_image`) is read slab by slab and, when ``store``
    is given, predicted into zarr arrays of a zarr group there (``labels`` and one per map,
    the ``pseudo`` map as float32 with -1 left out); the returned prediction then holds those
    zarr arrays, never whole numpy arrays.

    With the sparse ``labels`` (Z, Y, X) and their ``labeled`` slices along the model's axis,
    an in-memory prediction is fused with their propagation, as ``semiseg predict --labels``
    (:func:`src_models.inference.predict_volume` ``prior=``). ``smoothing``: across slices,
    in slices (the dock's default: :func:`~src_models.slice_smoothing.smoothing_for_spacing`
    of the layer's scale); ``spacing``: the voxel size (Z, Y, X, the layer's scale) the
    propagation's rules count the gaps between labeled slices in (None: isotropic)."""
    maps = tuple(bundle.method.map_names if maps is None else maps)
    try:
        view = lazy_image(image, rgb)
        if view is None or store is None:
            source = view if view is not None else image_channels_first(image, rgb)
            values = LabelValues.from_info(bundle.info, bundle.num_classes)
            prior = areas = None
            if view is None and labels is not None and labeled:
                prior, areas = _fusion_prior(bundle, source, labels, labeled, spacing)
            pred = predict_volume(
                bundle, source, maps=maps, prior=prior, smoothing=smoothing, areas=areas
            )
            pred.labels = values.decode(pred.labels)  # the painted values back
            return pred
        import zarr

        spatial = tuple(view.shape[1:])
        chunks = _output_chunks(spatial, bundle.axis)
        dtype = np.uint8 if bundle.num_classes <= 256 else np.uint16

        def write(folder: Path) -> None:
            group = zarr.open_group(str(folder), mode="w")
            out: dict[str, Any] = {
                "labels": group.create_array("labels", shape=spatial, chunks=chunks, dtype=dtype)
            }
            for name in maps:
                out[name] = group.create_array(name, shape=spatial, chunks=chunks, dtype="float32")
            group.attrs["semiseg"] = {
                "method": bundle.method.name,
                "iteration": int(bundle.iteration),
                "maps": list(maps),
            }
            predict_volume(bundle, view, maps=maps, out=out, smoothing=smoothing)

        # staged and renamed when complete (src_models.files, as every output): a crash or a
        # full disk never leaves a half-written store that looks like a prediction
        Path(store).parent.mkdir(parents=True, exist_ok=True)
        commit([stage_dir(store, write)])
        group = zarr.open_group(str(store), mode="r+")
        return VolumePrediction(group["labels"], None, {name: group[name] for name in maps})
    except OSError as exc:
        raise SemisegError(
            f"cannot write the prediction into {store} ({exc}); check free disk space"
        ) from None
    except (MemoryError, RuntimeError) as exc:
        raise _friendly(exc) from None


def _fusion_prior(
    bundle: ModelBundle,
    image: np.ndarray,
    labels: Any,
    labeled: list[int],
    spacing: Sequence[float] | None = None,
):
    """The propagation prior (K, Z, Y, X) of ``labels`` for a fused prediction of an image
    of voxel ``spacing`` and the
    structure's area they say on the slices between them
    (:func:`~src_models.area_profile.volume_area_profile`), or (None, None) when the labels
    do not fit the model or the propagation is not affordable."""
    labels = np.asarray(labels)
    if labels.shape != image.shape[1:]:
        return None, None
    try:  # the model's reading of the values (refuses values it does not know)
        labels = label_values(labels, model=bundle).encode(labels)
    except SemisegError:  # values the model does not know: no fusion
        return None, None
    ends = bundle.ends_labeled  # as the model was trained
    if not affordable(np.moveaxis(labels, bundle.axis, 0).shape, labeled, ends):
        return None, None
    axis, k = bundle.axis, bundle.num_classes
    prior = propagation_prior(image, labels, labeled, axis, k, ends, spacing=spacing)
    return prior, volume_area_profile(labels, labeled, axis, spacing=spacing)


def _lazy_pseudo(array: Any) -> Any:
    """The uint8 pseudo-labels of a lazy ``pseudo`` map, as a dask array (read on demand)."""
    import dask.array as da

    data = da.from_zarr(array) if not hasattr(array, "compute") else array
    return da.where(data < 0, 0, da.rint(data)).astype(np.uint8)


def display_maps(prediction: VolumePrediction) -> dict[str, tuple[np.ndarray, str]]:
    """Name -> (array, layer type) of the layers to show for a prediction: ``pseudo`` becomes
    the uint8 ``pseudo-labels`` Labels layer (-1, left out, -> 0), every other map an Image.
    Lazy maps (zarr arrays of a streamed prediction) stay lazy."""
    out: dict[str, tuple[np.ndarray, str]] = {}
    for name, array in prediction.maps.items():
        if is_lazy(array):
            out["pseudo-labels" if name == "pseudo" else name] = (
                (_lazy_pseudo(array), "labels") if name == "pseudo" else (array, "image")
            )
        elif name == "pseudo":  # plane by plane: no float copies of the whole volume
            ids = np.empty(array.shape, np.uint8)
            for z in range(array.shape[0]):
                ids[z] = np.clip(np.rint(array[z]), 0, 255)
            out["pseudo-labels"] = (ids, "labels")
        else:
            out[name] = (np.asarray(array, dtype=np.float32), "image")
    return out


@dataclass
class DisplayPrediction:
    """A prediction ready for the viewer, made in the worker so the GUI thread only adds
    layers: the prediction, its maps as layer arrays (:func:`display_maps`) and the contrast
    limits of the image maps that have none fixed."""

    prediction: VolumePrediction
    maps: dict[str, tuple[Any, str]]
    limits: dict[str, tuple[float, float]] = field(default_factory=dict)


def predict_for_display(
    bundle: ModelBundle,
    image: Any,
    shown: Sequence[str],
    limits_for: Sequence[str] = (),
    **options: Any,
) -> DisplayPrediction:
    """:func:`predict_layers` of the maps ``shown`` as layers (``pseudo-labels`` stands for
    the ``pseudo`` map) that the model makes, their layer arrays and the 0 to 99.9th
    percentile contrast limits of the maps named in ``limits_for`` (worker side: on a
    64 x 512 x 512 volume these took 0.45 s of the GUI thread)."""
    wanted = {"pseudo" if name == "pseudo-labels" else name for name in shown}
    maps = tuple(m for m in bundle.method.map_names if m in wanted)
    pred = predict_layers(bundle, image, maps=maps, **options)
    layers = display_maps(pred)
    pred.maps = {}  # the layer arrays are what is kept (a float pseudo map is 4x its ids)
    limits = {
        name: (0.0, max(sampled_percentile(array, 99.9), 1e-3))
        for name, (array, kind) in layers.items()
        if kind == "image" and name in limits_for
    }
    return DisplayPrediction(pred, layers, limits)
