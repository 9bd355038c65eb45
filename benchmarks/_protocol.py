"""The sparse-slice protocols shared by the benchmarks (``../shared/data/la/README.md``).

One volume at a time, k labeled slices along the slicing axis, every other slice scored:

- *inside*: k slices evenly spaced strictly inside the foreground extent,
  ``first + round((i + 1) * (last - first) / (k + 1))``;
- *ends*: what 3D Slicer and ITK-SNAP users do: the first and the last slice where the
  structure appears, and k - 2 evenly spaced between, ``fg[round(i * (len(fg) - 1) / (k - 1))]``
  where ``fg`` lists the slices holding a label.
"""

from __future__ import annotations

import json

import numpy as np
from _common import ROOT

from napari_semiseg.io import read_labels, read_volume
from src_models.metrics import dice

SHARED = ROOT.parent / "shared" / "data"
PROTOCOLS = ("ends", "inside")
DATASETS = {
    # name: (folder, axis of the slices, list of cases)
    "la": (SHARED / "la", 2, lambda d: json.loads((d / "cases.json").read_text())["cases"]),
    "hippocampus": (
        SHARED / "hippocampus",
        0,
        lambda d: json.loads((d / "splits.json").read_text())["test"],
    ),
}


def foreground_slices(labels: np.ndarray, axis: int) -> np.ndarray:
    return np.flatnonzero(np.moveaxis(labels, axis, 0).reshape(labels.shape[axis], -1).any(1))


def protocol_slices(labels: np.ndarray, axis: int, k: int, protocol: str = "inside") -> list[int]:
    """The k labeled slices of ``protocol`` ('inside' or 'ends') along ``axis``."""
    fg = foreground_slices(labels, axis)
    if protocol == "ends":
        return sorted({int(fg[round(i * (len(fg) - 1) / (k - 1))]) for i in range(k)})
    if protocol != "inside":
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    first, last = int(fg[0]), int(fg[-1])
    return [first + round((i + 1) * (last - first) / (k + 1)) for i in range(k)]


def scored_dice(pred: np.ndarray, truth: np.ndarray, axis: int, labeled: list[int]) -> float:
    """Mean over foreground classes of the 3D Dice on the non-labeled slices."""
    keep = np.ones(truth.shape[axis], bool)
    keep[labeled] = False
    p, t = np.compress(keep, pred, axis=axis), np.compress(keep, truth, axis=axis)
    return float(np.mean([dice(p == c, t == c) for c in range(1, int(truth.max()) + 1)]))


def whole_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean foreground Dice over the whole volume (every slice, labeled ones too)."""
    return scored_dice(pred, truth, 0, [])


def sparse(labels: np.ndarray, axis: int, labeled: list[int]) -> np.ndarray:
    """``labels`` with every slice but the ``labeled`` ones set to 0."""
    out = np.zeros_like(labels)
    index = [slice(None)] * 3
    index[axis] = labeled
    out[tuple(index)] = labels[tuple(index)]
    return out


def load_case(dataset: str, index: int):
    """(case name, image, labels, axis) of case ``index`` of ``dataset``."""
    folder, axis, cases_of = DATASETS[dataset]
    case = cases_of(folder)[index]
    image, _ = read_volume(folder / "images" / f"{case}.nii.gz")
    labels, _ = read_labels(folder / "labels" / f"{case}.nii.gz")
    return case, image, labels, axis
