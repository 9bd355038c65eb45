"""``semiseg evaluate``: per-class Dice, Jaccard, HD95 and ASD of a prediction against the
truth, on one voxel grid, optionally without the labeled slices."""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from napari_semiseg.cli._common import _check_at_least, _parse_slices
from src_models.errors import SemisegError


def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_semiseg.io import label_volume, read_labels
    from src_models.metrics import evaluate, json_ready

    _check_at_least("--classes", args.classes, 2)
    _check_at_least("--ignore-label", args.ignore_label, 1)
    from napari_semiseg.io import geometry_mismatch
    from src_models.data.label_values import check_unannotated_marker, present_values

    pred, pred_meta = read_labels(args.pred)
    truth, meta = read_labels(args.truth)
    problem = "" if args.ignore_geometry else geometry_mismatch(meta, pred_meta)
    if problem:  # the rule `train` applies to an image and its labels
        raise SemisegError(
            f"{args.pred} and {args.truth} are not on the same voxel grid ({problem}): a "
            "voxel-by-voxel score would compare different places; resample one onto the "
            "other, or pass --ignore-geometry if only the headers differ"
        )
    check_unannotated_marker(present_values([truth], args.ignore_label), args.ignore_label, "truth")
    if args.ignore_label is not None:  # unannotated voxels of the truth are not scored
        unknown = truth == args.ignore_label
        if pred.shape == truth.shape:
            pred = np.where(unknown, 0, pred)
        truth = np.where(unknown, 0, truth)
    if args.exclude_slices:
        from src_models.data.volumes import check_axis

        check_axis(args.axis)
        pred, truth = label_volume(pred, pred_meta), label_volume(truth, meta)
        if pred.shape != truth.shape:
            raise SemisegError(
                f"prediction {pred.shape} and truth {truth.shape} must be volumes of one "
                "shape to exclude slices"
            )
        (skip,) = _parse_slices(args.exclude_slices, 1, "--exclude-slices")
        bad = [i for i in skip if not 0 <= i < truth.shape[args.axis]]
        if bad:
            raise SemisegError(f"--exclude-slices {bad} out of range along axis {args.axis}")
        keep = np.ones(truth.shape[args.axis], bool)
        keep[skip] = False
        if not keep.any():
            raise SemisegError(
                f"--exclude-slices leaves none of the {truth.shape[args.axis]} slices along "
                f"axis {args.axis} to score: exclude fewer"
            )
        pred, truth = np.compress(keep, pred, args.axis), np.compress(keep, truth, args.axis)
        print(
            f"scoring the {int(keep.sum())} slices along axis {args.axis} not excluded",
            file=sys.stderr,
        )
    result = evaluate(pred, truth, num_classes=args.classes, spacing=meta.spacing)
    if args.json:
        print(json.dumps(json_ready(result), indent=2))
        return 0
    unit = meta.unit if meta.calibrated else None
    unit = unit or ("voxels" if not meta.calibrated else "the file's spacing units")
    print(f"{'class':>6} {'dice':>7} {'jaccard':>8} {'hd95':>8} {'asd':>8}  (distances in {unit})")
    for cls, row in result["per_class"].items():
        print(
            f"{cls:>6} {row['dice']:7.4f} {row['jaccard']:8.4f} {_fmt(row['hd95']):>8} "
            f"{_fmt(row['asd']):>8}"
        )
    m = result["mean"]
    print(
        f"{'mean':>6} {m['dice']:7.4f} {m['jaccard']:8.4f} {_fmt(m['hd95']):>8} {_fmt(m['asd']):>8}"
    )
    return 0


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"
