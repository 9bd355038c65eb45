"""Segmentation metrics per class: Dice, Jaccard, HD95 and average surface distance (ASD).

Distances honour the voxel spacing (``spacing``, one value per array axis, e.g. mm) and are
computed with :func:`scipy.ndimage.distance_transform_edt` (``sampling=spacing``), the same
exact Euclidean distance transform that MONAI's and medpy's surface metrics build on.

Definitions (2D and 3D arrays)
    * Masks: ``pred == c`` and ``truth == c`` for each foreground class ``c`` (by default
      ``1 .. K-1`` where ``K = num_classes`` or ``max(pred, truth) + 1``).
    * Dice ``2|P∩T| / (|P|+|T|)``; Jaccard ``|P∩T| / |P∪T|``.
    * Surface of a mask: its voxels that have at least one background voxel among their
      neighbours in *full* connectivity (8 in 2D, 26 in 3D): ``mask & ~erosion(mask)`` with a
      full structuring element; voxels on the array border count as surface (outside the
      array is background). MONAI (``get_mask_edges``) and medpy erode with face connectivity
      instead, which gives a slightly thinner surface; pass ``connectivity=1`` to match them.
    * Directed distances: for every surface voxel of P, the distance to the nearest surface
      voxel of T (``d(P→T)``), and vice versa (``d(T→P)``).
    * HD95 (default ``hd_mode="pooled"``, as medpy's ``hd95`` used by most semi-supervised
      segmentation papers): the 95th percentile (numpy linear interpolation) of the pooled set
      ``d(P→T) ∪ d(T→P)``. ``hd_mode="max"`` gives MONAI's symmetric variant
      ``max(p95(d(P→T)), p95(d(T→P)))``, which is ≥ the pooled value.
    * ASD: the mean of the pooled set ``d(P→T) ∪ d(T→P)`` (symmetric average surface
      distance, weighted by surface size).

Empty-class convention (also returned as ``result["convention"]``)
    * class absent from both prediction and truth: Dice 1, Jaccard 1, HD95 0, ASD 0 (a correct
      "nothing here");
    * class absent from exactly one of them: Dice 0, Jaccard 0, HD95 and ASD NaN (a distance
      to an empty surface is undefined; written as ``null`` by :func:`json_ready`); the class
      is listed in ``result["empty"]``;
    * class means skip NaN values; a mean with no defined value is NaN.

Speed: each class is cropped to the bounding box of ``P ∪ T`` plus a one-voxel margin before
the erosion and the distance transform. This does not change any value: the erosion of a
voxel only looks one voxel away, and the Euclidean distance between two voxels inside the
crop is the same as in the full array.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from src_models.errors import SemisegError

METRICS = ("dice", "jaccard", "hd95", "asd")
CONVENTION = (
    "per foreground class; surfaces = mask minus its erosion (connectivity {conn}), distances "
    "in spacing units; HD95 = {hd}; ASD = mean of pooled symmetric surface distances; "
    "class empty in both: dice 1, jaccard 1, hd95 0, asd 0; empty in exactly one: dice 0, "
    "jaccard 0, hd95/asd NaN (null), listed under 'empty'; means skip NaN"
)
_HD_TEXT = {
    "pooled": "95th percentile of pooled symmetric surface distances (medpy)",
    "max": "max of the two directed 95th percentiles (MONAI)",
}


def _check_shapes(a: np.ndarray, b: np.ndarray, what: str = "prediction and truth") -> None:
    if a.shape != b.shape:
        raise SemisegError(
            f"{what} have different shapes {a.shape} vs {b.shape}; compare volumes of the same "
            "size (e.g. the prediction for this image)"
        )


def dice(pred_mask, true_mask) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    p = np.asarray(pred_mask).astype(bool, copy=False)
    t = np.asarray(true_mask).astype(bool, copy=False)
    _check_shapes(p, t)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def _as_class_ids(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise SemisegError(
                f"the {name} contains non-integer values; pass a label volume of class ids "
                "(not probabilities)"
            )
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise SemisegError(f"the {name} has dtype {array.dtype}; pass integer class ids")
    return array


def _spacing(spacing, ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * ndim))
    if len(spacing) != ndim:
        if all(s == 1.0 for s in spacing):  # the unit default works for 2D arrays too
            return (1.0,) * ndim
        raise SemisegError(
            f"spacing {spacing} has {len(spacing)} values for a {ndim}D volume; give one "
            "voxel size per axis"
        )
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise SemisegError(f"spacing {spacing} must be positive numbers (voxel size per axis)")
    return spacing


def _surface(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return mask & ~eroded


def surface_distances(
    pred_mask: np.ndarray,
    true_mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    connectivity: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances ``(d(P→T), d(T→P))`` of two non-empty binary masks."""
    p = np.asarray(pred_mask, dtype=bool)
    t = np.asarray(true_mask, dtype=bool)
    _check_shapes(p, t)
    spacing = _spacing(spacing, p.ndim)
    if not p.any() or not t.any():
        raise SemisegError("surface distances need two non-empty masks")
    # Crop to the bounding box of P ∪ T plus one voxel (exact, see the module docstring).
    union = p | t
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(idx[0] - 1, 0), min(idx[-1] + 2, union.shape[axis])))
    box = tuple(box)
    p, t = p[box], t[box]
    structure = ndimage.generate_binary_structure(p.ndim, connectivity or p.ndim)
    sp, st = _surface(p, structure), _surface(t, structure)
    dist_to_t = ndimage.distance_transform_edt(~st, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return dist_to_t[sp], dist_to_p[st]


def _class_metrics(p, t, spacing, hd_mode, connectivity) -> dict:
    pv, tv = int(p.sum()), int(t.sum())
    inter = int(np.logical_and(p, t).sum())
    out = {"pred_voxels": pv, "true_voxels": tv}
    if pv == 0 and tv == 0:
        out.update(dice=1.0, jaccard=1.0, hd95=0.0, asd=0.0)
        return out
    out["dice"] = 2.0 * inter / (pv + tv)
    out["jaccard"] = inter / (pv + tv - inter)
    if pv == 0 or tv == 0:
        out.update(hd95=math.nan, asd=math.nan)
        return out
    d_pt, d_tp = surface_distances(p, t, spacing, connectivity)
    pooled = np.concatenate([d_pt, d_tp])
    if hd_mode == "pooled":
        out["hd95"] = float(np.percentile(pooled, 95))
    else:
        out["hd95"] = float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))
    out["asd"] = float(pooled.mean())
    return out


def evaluate(
    pred,
    truth,
    num_classes: int | None = None,
    spacing=(1.0, 1.0, 1.0),
    classes: Iterable[int] | None = None,
    *,
    hd_mode: str = "pooled",
    connectivity: int | None = None,
) -> dict:
    """Per-class Dice/Jaccard/HD95/ASD of a label volume against the ground truth.

    Args:
        pred, truth: integer label arrays (2D or 3D) of the same shape.
        num_classes: K (background included); default ``max(pred, truth) + 1``. Values
            ``>= K`` raise :class:`SemisegError`.
        spacing: voxel size per axis (distances are in these units, e.g. mm).
        classes: class ids to evaluate; default ``1 .. K-1`` when ``num_classes`` is given,
            else the nonzero values present in ``pred`` or ``truth`` (so label values 0, 2, 5
            average two classes, not five).
        hd_mode: ``"pooled"`` (medpy, default) or ``"max"`` (MONAI); see the module docstring.
        connectivity: erosion connectivity for surfaces; default full (``ndim``).

    Returns:
        ``{"per_class": {c: {"dice", "jaccard", "hd95", "asd", "pred_voxels",
        "true_voxels"}}, "mean": {"dice", "jaccard", "hd95", "asd"}, "empty": {"both": [...],
        "pred": [...], "truth": [...]}, "spacing": [...], "convention": str}``; NaN marks an
        undefined distance (see the empty-class convention).
    """
    pred = _as_class_ids(pred, "prediction")
    truth = _as_class_ids(truth, "ground truth")
    _check_shapes(pred, truth)
    if pred.ndim not in (2, 3):
        raise SemisegError(f"metrics need 2D or 3D label arrays, got {pred.ndim}D")
    if hd_mode not in _HD_TEXT:
        raise SemisegError(f"hd_mode must be one of {', '.join(_HD_TEXT)}, not {hd_mode!r}")
    if connectivity is not None and not 1 <= connectivity <= pred.ndim:
        raise SemisegError(f"connectivity must be 1..{pred.ndim}, not {connectivity}")
    spacing = _spacing(spacing, pred.ndim)
    lo = min(int(pred.min()), int(truth.min())) if pred.size else 0
    if lo < 0:
        raise SemisegError(f"label values must be class ids >= 0, found {lo}")
    hi = max(int(pred.max()), int(truth.max())) if pred.size else 0
    if classes is None and num_classes is None:
        # the values present: ids 0, 2, 5 are two classes, not five (three never used)
        classes = [int(c) for c in np.union1d(np.unique(pred), np.unique(truth)) if c != 0]
    if num_classes is None:
        num_classes = hi + 1
    elif hi >= num_classes:
        raise SemisegError(
            f"label value {hi} exceeds the class count {num_classes} (ids 0..{num_classes - 1}); "
            "pass the right number of classes"
        )
    classes = list(range(1, num_classes)) if classes is None else [int(c) for c in classes]

    per_class: dict[int, dict] = {}
    empty: dict[str, list[int]] = {"both": [], "pred": [], "truth": []}
    for c in classes:
        p, t = pred == c, truth == c
        m = _class_metrics(p, t, spacing, hd_mode, connectivity)
        per_class[c] = m
        if m["pred_voxels"] == 0 and m["true_voxels"] == 0:
            empty["both"].append(c)
        elif m["pred_voxels"] == 0:
            empty["pred"].append(c)
        elif m["true_voxels"] == 0:
            empty["truth"].append(c)

    mean = {}
    for key in METRICS:
        values = [per_class[c][key] for c in classes if not math.isnan(per_class[c][key])]
        mean[key] = float(np.mean(values)) if values else math.nan
    conn = connectivity or pred.ndim
    return {
        "per_class": per_class,
        "mean": mean,
        "empty": empty,
        "spacing": list(spacing),
        "convention": CONVENTION.format(conn=conn, hd=_HD_TEXT[hd_mode]),
    }


def json_ready(obj):
    """A copy of ``obj`` (e.g. an :func:`evaluate` result) safe for strict JSON: NaN/inf ->
    ``None``, numpy scalars -> Python numbers, dict keys -> str."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
