"""Helpers that read the painted labels, free of Qt and napari: which slices are labeled and
along which axis, how the painted values map to classes (as ``semiseg train`` reads them) and
whether the labeled slices can be interpolated.

They run wherever labels are read: on the GUI thread (the docks), in a worker thread and in
the training process.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from src_models.data.label_values import LabelValues, interpret_labels, present_values
from src_models.data.volumes import check_labels
from src_models.errors import SemisegError
from src_models.training.checkpoint import ModelBundle

#: fewer labeled slices leave nothing to fill in between
MIN_INTERPOLATION_SLICES = 2

AXIS_NAMES = ("Z", "Y", "X")


def labeled_slices(labels: np.ndarray, axis: int) -> list[int]:
    """Indices along ``axis`` of the slices holding at least one nonzero label."""
    labels = np.asarray(labels)
    others = tuple(a for a in range(labels.ndim) if a != axis)
    return [int(i) for i in np.flatnonzero(np.any(labels != 0, axis=others))]


def detect_axis(labels: np.ndarray) -> int:
    """The axis the user painted along: the one whose labeled slices are the smallest
    fraction of its length (fully painted slices light up every slice of the other axes).
    Returns 0 when nothing is labeled."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.any(labels):
        return 0
    fractions = [len(labeled_slices(labels, a)) / labels.shape[a] for a in range(3)]
    return int(np.argmin(fractions))


def label_values(
    labels: np.ndarray, ignore: int | None = None, model: ModelBundle | None = None
) -> LabelValues:
    """How the plugin reads painted values, as ``semiseg train`` does
    (:func:`~src_models.data.label_values.interpret_labels`): ids with gaps and 0/255 masks
    become classes 0..K-1 and predictions go back to the painted values; an instance mask is
    refused with the fix. Continuing ``model``, its recorded values are used, and values it
    was not trained with are refused."""
    check_labels(labels)  # whole, non-negative numbers first (a float image is refused)
    if model is not None:
        values = LabelValues.from_info(model.info, model.num_classes)
        if ignore is not None and values.ignore is None:  # region corrections began
            values = dataclasses.replace(values, ignore=ignore)
        if not values.binary:
            found = set(present_values([labels], values.ignore).tolist())
            unknown = sorted(found - {*values.values})
            if unknown:
                raise SemisegError(
                    f"the labels hold value(s) {unknown[:5]} that the model was not trained "
                    f"with (its classes: {list(values.values)}): train a new model for them"
                )
        return values
    return interpret_labels([np.asarray(labels)], ignore=ignore)


def describe_values(values: LabelValues) -> str:
    """'2 classes (0, 255 -> 1)' and the like, for the Data tab."""
    text = f"{values.num_classes} classes"
    if values.remapped:
        shown = ", ".join(f"{v} -> {i}" for i, v in enumerate(values.values) if v != i)
        text += f" ({shown})"
    if values.ignore is not None:
        text += f", {values.ignore} = unannotated"
    return text


def interpolation_problem(labeled: list[int] | int, axis: int) -> str:
    """Why the labeled slices cannot be interpolated ("" when they can): with fewer than
    two there is nothing between them, the result would be the labeled slices alone."""
    n = labeled if isinstance(labeled, int) else len(labeled)
    if n >= MIN_INTERPOLATION_SLICES:
        return ""
    return (
        f"nothing to interpolate: {n} labeled slice(s) along axis {axis}, filling between "
        f"slices needs at least {MIN_INTERPOLATION_SLICES}: paint another slice"
    )
