"""Zero-training previews of the sparse labels, free of Qt and napari.

:func:`interpolate_labels` is the zero-training baseline and the instant first preview: the
shape-based interpolation ("fill between slices", :mod:`src_models.interpolation`) of the
sparse labels, as an :class:`~napari_semiseg._jobs.InterpolationPreview`;
:func:`propagate_labels` is the better one that follows within seconds, the random walker
along the image's edges (:mod:`src_models.propagation`). :func:`zero_training_previews`
gives both, in that order.

They run in a worker thread: the training dock's *Propagate* hands
:func:`zero_training_previews` to napari's ``create_worker``, and
:func:`~napari_semiseg._run_parent.training_events` yields both while the training process
starts.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from napari_semiseg._jobs import InterpolationPreview, _friendly
from napari_semiseg._labels import interpolation_problem, label_values, labeled_slices
from napari_semiseg._layer_data import image_channels_first, lazy_image
from src_models.data.label_values import LabelValues, interpret_labels
from src_models.data.volumes import check_axis, check_labels
from src_models.errors import SemisegError
from src_models.interpolation import interpolate_volume
from src_models.propagation import affordable, propagate_volume


def interpolate_labels(
    labels: np.ndarray,
    axis: int,
    labeled: list[int],
    num_classes: int | None = None,
    values: LabelValues | None = None,
) -> InterpolationPreview:
    """Shape-based interpolation ("fill between slices") of the sparse ``labels`` (Z, Y, X)
    from their ``labeled`` slices along ``axis``
    (:meth:`~napari_semiseg._session.Session.labeled` gives the same ones training uses); no
    model involved. Bad labels raise a :class:`SemisegError`."""
    check_axis(axis)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise SemisegError(
            f"labels have shape {labels.shape}: a 3D label volume (Z, Y, X) is needed"
        )
    check_labels(labels, None if values is not None else num_classes)
    values = values or interpret_labels([labels], num_classes)
    ids = values.encode(labels).clip(min=0)
    used = sorted({int(s) for s in labeled if 0 <= int(s) < labels.shape[axis]})
    if values.ignore is not None:  # partly annotated slices have no outline to morph
        partly = set(labeled_slices(labels == values.ignore, axis))
        used = [s for s in used if s not in partly]
    problem = interpolation_problem(used, axis)
    if problem:
        raise SemisegError(problem)
    try:
        filled = values.decode(interpolate_volume(ids, used, axis, values.num_classes))
    except MemoryError as exc:
        raise _friendly(exc) from None
    dtype = labels.dtype if labels.dtype.kind in "iu" else np.int64
    return InterpolationPreview(axis, used, filled.astype(dtype, copy=False))


def propagate_labels(
    image: Any,
    labels: np.ndarray,
    axis: int,
    labeled: list[int],
    rgb: bool = False,
    num_classes: int | None = None,
    values: LabelValues | None = None,
    ends_labeled: bool = False,
    spacing: Sequence[float] | None = None,
) -> InterpolationPreview | None:
    """The random-walker propagation of the sparse ``labels`` over ``image`` (the better
    zero-training result, :mod:`src_models.propagation`), or None when the image is larger
    than memory or the labeled range too large for it (the interpolation stays).
    ``ends_labeled``: the outer labeled slices are the structure's ends (nothing beyond);
    ``spacing``: the voxel size (Z, Y, X; None: isotropic)."""
    if lazy_image(image, rgb) is not None:
        return None
    img = image_channels_first(image, rgb)
    labels = np.asarray(labels)
    check_labels(labels, None if values is not None else num_classes)
    values = values or interpret_labels([labels], num_classes)
    used = sorted({int(s) for s in labeled if 0 <= int(s) < labels.shape[axis]})
    if not affordable(np.moveaxis(labels, axis, 0).shape, used, ends_labeled):
        return None
    t0 = time.perf_counter()
    try:
        ids = propagate_volume(
            img,
            values.encode(labels),
            used,
            axis,
            values.num_classes,
            spacing,
            ends_labeled=ends_labeled,
        )
    except MemoryError as exc:
        raise _friendly(exc) from None
    dtype = labels.dtype if labels.dtype.kind in "iu" else np.int64
    filled = values.decode(ids).astype(dtype)
    return InterpolationPreview(axis, used, filled, "propagation", time.perf_counter() - t0)


def zero_training_previews(
    image: Any,
    labels: np.ndarray,
    axis: int,
    labeled: list[int],
    rgb: bool = False,
    ignore: int | None = None,
    ends_labeled: bool = False,
    spacing: Sequence[float] | None = None,
) -> Generator[InterpolationPreview, None, None]:
    """The interpolation at once, then the propagation when it is affordable (worker side);
    ``ignore``: the value of unannotated voxels (region corrections); ``ends_labeled``: the
    outer labeled slices are the structure's ends; ``spacing``: the voxel size."""
    values = label_values(labels, ignore)
    yield interpolate_labels(labels, axis, labeled, values=values)
    propagated = (
        None
        if image is None
        else propagate_labels(
            image,
            labels,
            axis,
            labeled,
            rgb,
            values=values,
            ends_labeled=ends_labeled,
            spacing=spacing,
        )
    )
    if propagated is not None:
        yield propagated
