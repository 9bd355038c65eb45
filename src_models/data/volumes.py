"""Volumes as stacks of slices along a chosen axis, with their labeled slices.

A *labeled slice* is a slice along the chosen axis that the user annotated. By default every
slice that contains a nonzero label is labeled; an explicit list of slice indices overrides
that, so an all-background slice can be labeled too. Every other slice of every volume is
unlabeled. Validation here is where bad input becomes a one-line :class:`SemisegError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from src_models.data.label_values import IGNORE, MAX_CLASSES
from src_models.data.normalization import Normalization, fit_normalization
from src_models.errors import SemisegError
from src_models.slice_spacing import slice_ratio

#: The smallest slice side the networks accept (inputs are padded to a multiple of 16).
MIN_SLICE_SIZE = 8


@dataclass
class Volume:
    """One normalised volume, slices first.

    Attributes:
        slices: float32 (N, C, H, W): the volume cut along ``axis``, normalised.
        labels: int64 (N, H, W) or None; only rows in ``labeled`` are trusted.
        labeled: sorted indices of labeled slices.
        normalization: the statistics used on this volume.
        axis: the spatial axis (0, 1 or 2 of Z, Y, X) the slices were cut along.
        background: the normalised value of the darkest clipped intensity (the pad value).
        slice_ratio: the slices' spacing over their finest pixel (1: isotropic or unknown;
            :func:`~src_models.slice_spacing.slice_ratio`), which the propagation's rules
            count the gaps between labeled slices in.
    """

    slices: np.ndarray
    labels: np.ndarray | None
    labeled: list[int]
    normalization: Normalization
    axis: int
    background: float
    slice_ratio: float = 1.0

    @property
    def unlabeled(self) -> list[int]:
        done = set(self.labeled)
        return [i for i in range(self.slices.shape[0]) if i not in done]


def as_channels_first(image: np.ndarray, spatial_ndim: int = 3) -> np.ndarray:
    """Return ``image`` as (C, Z, Y, X): a (Z, Y, X) volume gets one channel."""
    image = np.asarray(image)
    if image.ndim == spatial_ndim:
        return image[None]
    if image.ndim == spatial_ndim + 1:
        return image
    raise SemisegError(
        f"expected a 3D image (Z, Y, X) or (C, Z, Y, X), got an array of shape {image.shape}: "
        "give a volume or a stack of 2D slices"
    )


def to_slices(image_czyx: np.ndarray, axis: int) -> np.ndarray:
    """(C, Z, Y, X) -> (N, C, H, W) with N along spatial ``axis``."""
    return np.moveaxis(image_czyx, axis + 1, 0)


def from_slices(slices: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`to_slices` for arrays (N, ..., H, W) -> (..., Z, Y, X)."""
    lead = slices.ndim - 3
    return np.moveaxis(slices, 0, lead + axis)


def check_axis(axis: int) -> int:
    if axis not in (0, 1, 2):
        raise SemisegError(f"axis {axis} is out of range: choose 0, 1 or 2 (Z, Y or X)")
    return axis


def check_labels(
    labels: np.ndarray, num_classes: int | None = None, allow_ignore: bool = False
) -> np.ndarray:
    """Validate a label volume: integer values >= 0 (and < num_classes when given); with
    ``allow_ignore``, :data:`IGNORE` (-1, unannotated voxels) too."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise SemisegError(
                "labels contain non-integer values: labels must be integer class ids "
                "(0 = background, 1..K); did you pass an image as labels?"
            )
    elif labels.dtype.kind not in "iub":
        raise SemisegError(f"labels have dtype {labels.dtype}: use an integer label volume")
    if labels.size and labels.min() < (IGNORE if allow_ignore else 0):
        raise SemisegError("labels contain negative values: class ids must be 0 (background)..K")
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        raise SemisegError(
            f"labels contain class {int(labels.max())} but the model has {num_classes} classes "
            f"(0..{num_classes - 1}): raise the class count or fix the labels"
        )
    return labels.astype(np.int64)


def detect_labeled_slices(labels_slices: np.ndarray) -> list[int]:
    """Indices of slices (first axis) that contain a nonzero label; when some voxels are
    marked unannotated (:data:`IGNORE`), of the slices with any annotated voxel (background
    included: it was painted)."""
    flat = labels_slices.reshape(labels_slices.shape[0], -1)
    annotated = flat >= 0 if (flat == IGNORE).any() else flat > 0
    return [int(i) for i in np.flatnonzero(annotated.any(axis=1))]


def make_volumes(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray | None],
    axis: int = 0,
    labeled_slices: Sequence[Sequence[int] | None] | None = None,
    num_classes: int | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    require_labeled: bool = True,
    spacings: Sequence[Sequence[float] | None] | None = None,
) -> tuple[list[Volume], int]:
    """Validate, normalise and slice volumes; return them and the class count (K + 1).

    Args:
        images: each (Z, Y, X) or (C, Z, Y, X); all with the same channel count.
        labels: each (Z, Y, X) int, same spatial shape as its image, or None (unlabeled);
            :data:`IGNORE` (-1) marks unannotated voxels (see :mod:`label_values`).
        axis: spatial axis to slice along.
        labeled_slices: per volume, explicit labeled slice indices (None = detect).
        num_classes: class count including background; default max label + 1 (at least 2).
        require_labeled: refuse volumes without any labeled slice (off when other, lazy
            volumes hold the labels).
        spacings: per volume, its voxel spacing (Z, Y, X) or None (isotropic).
    """
    check_axis(axis)
    if len(images) == 0:
        raise SemisegError("no image given: pass at least one volume")
    if len(labels) != len(images):
        raise SemisegError(
            f"{len(images)} image(s) but {len(labels)} label volume(s): give one labels per image"
        )
    if spacings is not None and len(spacings) != len(images):
        raise SemisegError(
            f"{len(images)} image(s) but {len(spacings)} voxel spacing(s): give one per image"
        )
    if labeled_slices is None:
        labeled_slices = [None] * len(images)
    if len(labeled_slices) != len(images):
        raise SemisegError("give one list of labeled slices per image")
    checked = []
    channels = None
    for i, (img, lbl) in enumerate(zip(images, labels, strict=True)):
        img = as_channels_first(np.asarray(img))
        if channels is None:
            channels = img.shape[0]
        elif img.shape[0] != channels:
            raise SemisegError(
                f"image {i} has {img.shape[0]} channels, the first has {channels}: "
                "all images must have the same channels"
            )
        if lbl is not None:
            lbl = check_labels(lbl, allow_ignore=True)
            if lbl.shape != img.shape[1:]:
                raise SemisegError(
                    f"image {i} has spatial shape {img.shape[1:]} but its labels have shape "
                    f"{lbl.shape}: they must match voxel for voxel"
                )
        in_plane = [s for k, s in enumerate(img.shape[1:]) if k != axis]
        if min(in_plane) < MIN_SLICE_SIZE:
            raise SemisegError(
                f"image {i} slices along axis {axis} are {in_plane[0]}x{in_plane[1]} pixels, "
                f"smaller than the minimum {MIN_SLICE_SIZE}x{MIN_SLICE_SIZE}: choose another axis"
            )
        checked.append((img, lbl))
    max_label = max(
        (int(lbl.max()) for _, lbl in checked if lbl is not None and lbl.size), default=0
    )
    if num_classes is None:
        if max_label + 1 > MAX_CLASSES:
            raise SemisegError(
                f"the labels hold ids up to {max_label}: that would be {max_label + 1} classes; "
                "this looks like an instance mask (one id per object): convert it to class ids "
                "(e.g. every object -> 1) or give the class count explicitly"
            )
        num_classes = max(2, max_label + 1)
    elif max_label >= num_classes:
        raise SemisegError(
            f"labels contain class {max_label} but {num_classes} classes were requested "
            f"(0..{num_classes - 1}): raise the class count or fix the labels"
        )
    volumes = []
    for i, ((img, lbl), chosen) in enumerate(zip(checked, labeled_slices, strict=True)):
        norm = fit_normalization(img, percentiles)
        slices = np.ascontiguousarray(to_slices(norm.apply(img), axis))
        lbl_slices = None if lbl is None else np.ascontiguousarray(to_slices(lbl[None], axis)[:, 0])
        if lbl_slices is None:
            if chosen:
                raise SemisegError(f"labeled slices were given for image {i} but it has no labels")
            labeled = []
        elif chosen is None:
            labeled = detect_labeled_slices(lbl_slices)
        else:
            labeled = sorted({int(s) for s in chosen})
            bad = [s for s in labeled if not 0 <= s < slices.shape[0]]
            if bad:
                raise SemisegError(
                    f"labeled slice(s) {bad} are out of range for image {i} "
                    f"(it has {slices.shape[0]} slices along axis {axis})"
                )
        background = min((norm.low[c] - norm.mean[c]) / norm.std[c] for c in range(channels))
        ratio = slice_ratio(spacings[i] if spacings is not None else None, axis)
        volumes.append(Volume(slices, lbl_slices, labeled, norm, axis, float(background), ratio))
    if require_labeled and not any(v.labeled for v in volumes):
        raise SemisegError(
            "no labeled slice: paint at least one slice of the labels "
            "(or list the annotated slices explicitly with --labeled-slices)"
        )
    return volumes, num_classes
