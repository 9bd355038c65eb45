"""The ``semiseg`` command line's arguments: one sub-command per module of this package,
and a parser that under torchrun lets rank 0 alone report a mistake."""

from __future__ import annotations

import argparse
import os
import sys

from napari_semiseg.cli._common import EXIT_USER_ERROR
from napari_semiseg.cli.evaluate import cmd_evaluate
from napari_semiseg.cli.methods import cmd_methods
from napari_semiseg.cli.predict import cmd_predict
from napari_semiseg.cli.suggest import (
    DEFAULT_STRATEGY_CHOICE,
    STRATEGY_CHOICES,
    STRIDED_UNTIL,
    cmd_suggest,
)
from napari_semiseg.cli.train import cmd_train
from src_models.method_choice import AUTO, AUTO_HELP


def _launched_rank() -> int:
    """This process's rank under torchrun (``RANK``), 0 otherwise."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class _Parser(argparse.ArgumentParser):
    """Under torchrun every rank parses the same command line: rank 0 alone says what is
    wrong with it, the others exit with the same code silently."""

    def error(self, message: str):
        if _launched_rank() != 0:
            sys.exit(EXIT_USER_ERROR)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="semiseg",
        description="Semi-supervised segmentation of 3D volumes from a few labeled slices.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a method on labeled slices + unlabeled slices")
    t.add_argument("--image", nargs="+", required=True, help="image volume(s)")
    t.add_argument("--labels", nargs="+", required=True, help="label volume(s), one per image")
    t.add_argument("--unlabeled", nargs="*", default=[], help="extra volumes without labels")
    t.add_argument("--labeled-slices", help="e.g. 3,17,30 (default: slices with any label)")
    t.add_argument("--axis", type=int, default=0, help="slicing axis 0, 1 or 2 (default 0)")
    t.add_argument(
        "--method",
        default=AUTO,
        help=f"{AUTO_HELP}; interpolate and propagate train nothing; see 'semiseg methods'",
    )
    t.add_argument("--out", required=True, help="run directory (model, log, config)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, help="iteration budget (default 1000)")
    budget.add_argument("--minutes", type=float, help="wall-clock budget in minutes")
    t.add_argument("--patch", type=int, default=128, help="training crop size (multiple of 16)")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    t.add_argument("--classes", type=int, help="class count incl. background (default max+1)")
    t.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="method hyperparameters (see 'semiseg methods'); repeat --set or list several",
    )
    t.add_argument("--checkpoint-every", type=int, default=250)
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument(
        "--force",
        action="store_true",
        help="start over in an --out that holds a run; its files move to a 'replaced-<time>' "
        "subfolder (nothing is deleted)",
    )
    t.add_argument(
        "--ignore-label",
        type=int,
        help="label value of unannotated voxels (nnU-Net's 'ignore label', e.g. 255): not "
        "taken as labels (the propagation guesses them where sure, as on unlabeled slices); "
        "slices holding only this value are unlabeled",
    )
    t.add_argument(
        "--binary",
        action="store_true",
        help="train every nonzero label value as one foreground class (e.g. instance masks)",
    )
    t.add_argument(
        "--ignore-geometry",
        action="store_true",
        help="train even when the image's and the labels' headers (affine/spacing) differ",
    )
    t.add_argument(
        "--warmup",
        type=float,
        default=0.4,
        help="share of the budget for the supervised warm-up of semi-supervised methods",
    )
    t.add_argument(
        "--warmup-plateau",
        type=float,
        default=0.0,
        help="with > 0 (e.g. 0.05), the warm-up also ends once the supervised loss falls by "
        "less than this share from one window of iterations to the next (default 0: off)",
    )
    t.add_argument(
        "--prior-fraction",
        type=float,
        default=None,
        help="share of each labeled batch whose targets come from the zero-training --prior "
        "on the unlabeled slices, weighted by its confidence (0: off; default 0.5)",
    )
    t.add_argument(
        "--prior",
        choices=("propagation", "interpolation"),
        default="propagation",
        help="the zero-training result the prior's targets come from: the propagation "
        "(default: a random walker blended with the outlines carried along the image's "
        "optical flow) or the shape interpolation",
    )
    t.add_argument(
        "--ends-labeled",
        action="store_true",
        help="the outer labeled slices are the first and last slices where the structure "
        "appears (as for Slicer's 'fill between slices'): the propagation, as training "
        "target and in 'predict --labels', stops there and the slices beyond them train "
        "as background (default: it may reach 0.7 of the labeled slices' mean spacing "
        "beyond them, for labeled slices strictly inside the structure)",
    )
    t.add_argument(
        "--context-slices",
        type=int,
        default=0,
        help="neighbouring slices on each side the network takes as extra channels ('2.5D': "
        "1 feeds slices s-1, s, s+1 to segment slice s); default 0, a plain 2D network; "
        "--resume keeps the model's",
    )
    t.add_argument(
        "--planes",
        type=int,
        default=None,
        help="3: the network also trains on the volume cut along the two other axes (the "
        "labeled voxels and the propagation's sure ones as targets) and predictions average "
        "the three axes it fits; 1: the labeled slices' axis only (default: 3 for "
        "supervised with --ends-labeled, else 1); --resume keeps the model's",
    )
    t.add_argument(
        "--prior-final",
        type=float,
        default=0.5,
        help="weight of the prior at the end of a semi-supervised run",
    )
    t.add_argument(
        "--prior-refresh",
        type=float,
        default=0.0,
        help="share of the budget after which the prior's targets become the model's own "
        "output (the network fused with the propagation, smoothed across slices), once; "
        "off by default (0): measured level to worse through the trainer, docs/benchmarks.md; "
        "0.5 is the share tried",
    )
    t.add_argument(
        "--foreground-crops",
        type=float,
        default=None,
        help="share of labeled crops placed over the labeled structure (default 0.5)",
    )
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment a volume with a trained model")
    p.add_argument("--model", required=True, help="run directory written by 'train'")
    p.add_argument("--image", required=True)
    p.add_argument("--out", required=True, help="OUT.(nii.gz|nii|zarr|tif|npy)")
    p.add_argument(
        "--maps",
        default="",
        help="comma-separated maps, e.g. confidence,discrepancy;"
        " each written beside OUT as OUT-stem_<map>.<ext>",
    )
    p.add_argument(
        "--labels",
        help="the sparse labels the model was trained from: the prediction is fused with "
        "their random-walker propagation (what the plugin shows; measured better than the "
        "network alone, docs/benchmarks.md), and each slice between two labeled ones at "
        "most 16 apart leans towards the area the labeled slices say there",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument(
        "--largest-component",
        action="store_true",
        help="keep only the largest 3D connected component of each class (for one "
        "structure per class, e.g. an organ; not for many objects such as cells)",
    )
    p.add_argument(
        "--smooth-slices",
        type=float,
        default=None,
        metavar="SIGMA",
        help="Gaussian across slices, in slices, on the class probabilities before the mask "
        "(default 1 for isotropic voxels, less for slices thicker than their pixels, the "
        "same physical width; 0: off)",
    )
    p.set_defaults(func=cmd_predict)

    g = sub.add_parser("suggest", help="the next slices to annotate, ranked, with reasons")
    g.add_argument("--model", required=True, help="run directory written by 'train'")
    g.add_argument("--image", required=True)
    g.add_argument(
        "--labels", help="the labels so far (default: the slices the model was trained on)"
    )
    g.add_argument("-n", type=int, default=5, help="how many slices (default 5)")
    g.add_argument(
        "--strategy",
        choices=STRATEGY_CHOICES,
        default=DEFAULT_STRATEGY_CHOICE,
        help="strided: ends of the predicted structure, then the middles of the largest gaps "
        "(evenly spaced choices, the baseline active learning rarely beats); uncertainty: the "
        "method's discrepancy (or 1 - confidence); uncertainty-distance: that times the "
        "distance to the nearest labeled slice, within the predicted structure while it has "
        "an unlabeled slice; strided-then-uncertainty-distance (default: at or above strided "
        "at every round of the simulated correction loop, README): strided while fewer than "
        f"{STRIDED_UNTIL} slices are labeled, then uncertainty-distance",
    )
    g.add_argument("--device", default="auto")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.set_defaults(func=cmd_suggest)

    e = sub.add_parser("evaluate", help="per-class Dice/Jaccard/HD95/ASD of a prediction")
    e.add_argument("--pred", required=True)
    e.add_argument("--truth", required=True)
    e.add_argument("--classes", type=int, help="class count incl. background")
    e.add_argument("--json", action="store_true")
    e.add_argument(
        "--exclude-slices",
        help="e.g. 10,16,22: score only the other slices along --axis (the ones not labeled)",
    )
    e.add_argument("--axis", type=int, default=0, help="axis of --exclude-slices (default 0)")
    e.add_argument("--ignore-label", type=int, help="truth value of unannotated voxels: not scored")
    e.add_argument(
        "--ignore-geometry",
        action="store_true",
        help="score even when the two files' headers (affine/spacing) differ",
    )
    e.set_defaults(func=cmd_evaluate)

    m = sub.add_parser("methods", help="list methods, their maps and parameters")
    m.set_defaults(func=cmd_methods)
    return parser
