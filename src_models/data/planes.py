"""Training and predicting along all three axes ("multi-planar") with one 2D network.

A slice network trained on the labeled slices sees the structure in one orientation only,
and between two labeled slices each of its slices is a guess made without its neighbours.
The propagation of the labeled slices (the prior, :mod:`src_models.data.sampler`) covers
the whole volume, so it can also be cut along the two other axes: there each slice crosses
every labeled slice (a row of true labels each) and the walk's sure voxels between them,
and shows the structure's extent along the slicing axis that no axial slice shows. With
``planes = 3`` the sampler adds these cross-sections as prior crops (targets: the labeled
voxels at full weight, the prior's elsewhere with its weights; the labeled half of every
batch stays the labeled slices themselves), and :func:`~src_models.inference.predict_volume`
averages the network's class probabilities over the three orientations before the fusion
with the propagation.

Measured (``benchmarks/annotation_notes.md``, "multi-planar"; 4 slices with the ends, the
supervised default at 2 minutes, 5 volumes each): hippocampus 0.872 against 0.868 on one
axis (4 of 5 volumes at issue 18's bar against 3; the same weights predicted along the
labeled axis alone 0.871); left atrium 0.906 against 0.909 (no cross axis reached
:data:`PLANE_MIN_FIT` after its ~350 iterations, so the prediction stayed on one axis). The
default with the ends for the supervised run only (:func:`src_models.recipe.default_planes`):
SDCL, the 5-minute default with the ends, measured level to worse on three axes (hippocampus
0.874 against 0.876, left atrium 0.911 against 0.913, the one-axis runs on a faster machine).

The cross-sections are views of the volume (no copy of the image); their targets are one
copy of the prior's (compact integers and float32 weights) shared by both orientations.
Volumes larger than memory and volumes with fewer than two labeled slices (no prior) keep
their slicing axis only; ``--prior-refresh`` renews the targets along the labeled axis, the
cross-sections keep the walk's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src_models.data.volumes import MIN_SLICE_SIZE, Volume, from_slices, to_slices
from src_models.errors import SemisegError

#: the choices: the labeled slices' axis only, or all three axes
PLANE_CHOICES = (1, 3)
#: a cross axis joins the prediction when the network fits the labeled slices along it at
#: least this well (:func:`~src_models.training.fit.plane_fits`, recorded by the trainer):
#: with few iterations on large slices (left atrium, 2 minutes: fits 0.38-0.63) the cross
#: views are worse than the labeled axis's and averaging them lost what they add on the
#: hippocampus (fits 0.43-0.81)
PLANE_MIN_FIT = 0.6


def check_planes(planes: int, name: str = "planes") -> int:
    """``planes`` as 1 or 3, or a SemisegError naming the choice (``name``: the caller's
    word for it, ``--planes``)."""
    whole = isinstance(planes, (int, np.integer)) and not isinstance(planes, bool)
    if not whole or int(planes) not in PLANE_CHOICES:
        raise SemisegError(
            f"{name} must be 1 (the labeled slices' axis) or 3 (all three axes), got {planes!r}"
        )
    return int(planes)


def cross_axes(axis: int, shape: tuple[int, ...]) -> list[int]:
    """The spatial axes other than ``axis`` whose slices of a (Z, Y, X) volume of ``shape``
    are at least :data:`MIN_SLICE_SIZE` pixels on each side."""
    axes = []
    for a in range(3):
        if a == axis:
            continue
        sides = [n for b, n in enumerate(shape) if b != a]
        if min(sides) >= MIN_SLICE_SIZE:
            axes.append(a)
    return axes


def fitting_axes(fits: dict | None) -> list[int]:
    """The axes, ascending, whose recorded ``fits`` (spatial axis as a string -> fit) reach
    :data:`PLANE_MIN_FIT`; none when the fits are unknown (a checkpoint saved mid-run)."""
    return sorted(int(a) for a, f in (fits or {}).items() if float(f) >= PLANE_MIN_FIT)


def averaged_axes(axis: int, shape: tuple[int, ...], fits: dict[str, float] | None) -> list[int]:
    """The cross axes a prediction of a (Z, Y, X) volume of ``shape`` averages with its
    ``axis``: those of :func:`fitting_axes`."""
    fitting = fitting_axes(fits)
    return [a for a in cross_axes(axis, shape) if a in fitting]


def describe_planes(axis: int, fits: dict[str, float] | None) -> str:
    """One line for the user on a multi-planar model: its fit along each cross axis and
    which axes its predictions average."""
    fits = {int(a): float(f) for a, f in (fits or {}).items()}
    if not fits:
        return f"trained along all three axes; predictions use axis {axis} only"
    scores = " and ".join(f"{f:.2f} along axis {a}" for a, f in sorted(fits.items()))
    joined = fitting_axes(fits)
    used = (
        f"predictions average axis {axis} with axis {' and '.join(map(str, joined))}"
        if joined
        else f"predictions use axis {axis} only"
    )
    return (
        f"trained along all three axes: it fits the labeled slices with Dice {scores}; {used} "
        f"(a cross axis joins from {PLANE_MIN_FIT})"
    )


@dataclass
class CrossSection:
    """A volume cut along another axis than its labeled slices' (``volume``: no labels, no
    labeled slices; its slices are views of the original's), with its prior ``targets`` and
    ``weights`` (N, H, W) along that axis."""

    volume: Volume
    targets: np.ndarray
    weights: np.ndarray


def cross_sections(
    volume: Volume,
    targets: np.ndarray,
    weights: np.ndarray,
    trained: list[int],
) -> list[CrossSection]:
    """``volume`` cut along its other axes, with the targets every cross-section trains on:
    the annotated voxels of its ``trained`` labeled slices (not the held-out ones) at full
    weight, the prior's ``targets`` / ``weights`` (N, H, W along ``volume.axis``, 0 where the
    prior must not train) elsewhere."""
    if not isinstance(volume.slices, np.ndarray) or not isinstance(volume.labels, np.ndarray):
        return []
    dtype = np.min_scalar_type(max(1, int(targets.max(initial=0)), int(volume.labels.max())))
    merged = targets.astype(np.promote_types(dtype, np.int16))
    merged_weights = weights.astype(np.float32, copy=True)
    for s in trained:
        known = np.asarray(volume.labels[s]) >= 0  # a region correction: its painted voxels
        merged[s][known] = volume.labels[s][known]
        merged_weights[s][known] = 1.0
    image = from_slices(volume.slices, volume.axis)  # (C, Z, Y, X), a view
    spatial_targets = from_slices(merged, volume.axis)  # (Z, Y, X) views
    spatial_weights = from_slices(merged_weights, volume.axis)
    out = []
    for a in cross_axes(volume.axis, image.shape[1:]):
        view = Volume(
            slices=to_slices(image, a),
            labels=None,
            labeled=[],
            normalization=volume.normalization,
            axis=a,
            background=volume.background,
            slice_ratio=1.0,
        )
        out.append(
            CrossSection(
                view, np.moveaxis(spatial_targets, a, 0), np.moveaxis(spatial_weights, a, 0)
            )
        )
    return out
