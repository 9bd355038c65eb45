"""Sparse-slice benchmark: Dice against wall-clock minutes, interpolation as the bar.

Protocol (``../shared/data/la/README.md``): one volume at a time, k labeled slices evenly
spaced strictly inside the foreground extent along the slicing axis
(``first + round((i + 1) * (last - first) / (k + 1))``), every other slice scored (3D Dice
over all non-labeled slices, per foreground class, averaged). For each method one run of
``--minutes`` wall-clock minutes with the default settings; the weights are copied when the
training clock passes each budget (1, 2, 5 minutes) and scored after the run, so one run
gives the whole Dice-versus-time curve. Shape-based interpolation between the labeled slices
is the zero-training row. Nothing is selected on the scored slices. Each method gets its
hold-out of labeled slices as in the CLI and the plugin (SDCL: a fifth, but none below 10
labeled slices, so with k = 3 or 5 every method trains on all k); the result records how many
labeled slices each method trained on (``labeled_trained``) and held out (``held_out``).

    python benchmarks/sparse_slices.py --dataset la --cases 0 --k 3 5
    python benchmarks/sparse_slices.py --dataset hippocampus --cases 0 --k 3
    python benchmarks/sparse_slices.py --plot      # table + PNG from the saved results

Results: ``benchmarks/results/sparse_slices.json`` (merged across invocations),
``docs/images/sparse_slices.png``; ``benchmarks/report.py`` writes the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
from _common import RESULTS, ROOT, machine

from napari_semiseg.io import read_labels, read_volume
from src_models.data import SliceSampler, make_volumes
from src_models.data.sampler import DEFAULT_FOREGROUND_CROPS, DEFAULT_PRIOR_FRACTION
from src_models.inference import predict_volume
from src_models.interpolation import interpolate_volume
from src_models.methods import get_method
from src_models.metrics import dice
from src_models.postprocess import largest_component_3d
from src_models.training import TrainConfig, train
from src_models.training.checkpoint import create_model

SHARED = ROOT.parent / "shared" / "data"
RESULT = RESULTS / "sparse_slices.json"
PLOT = ROOT / "docs" / "images" / "sparse_slices.png"
METHODS = ("supervised", "crossmatch", "dfcps", "sdcl", "diffusion")
DATASETS = {
    # name: (folder, axis of the slices, list of cases)
    "la": (SHARED / "la", 2, lambda d: json.loads((d / "cases.json").read_text())["cases"]),
    "hippocampus": (
        SHARED / "hippocampus",
        0,
        lambda d: json.loads((d / "splits.json").read_text())["test"],
    ),
}


def protocol_slices(labels: np.ndarray, axis: int, k: int) -> list[int]:
    """k slices evenly spaced strictly inside the foreground extent along ``axis``."""
    present = np.flatnonzero(np.moveaxis(labels, axis, 0).reshape(labels.shape[axis], -1).any(1))
    first, last = int(present[0]), int(present[-1])
    return [first + round((i + 1) * (last - first) / (k + 1)) for i in range(k)]


def scored_dice(pred: np.ndarray, truth: np.ndarray, axis: int, labeled: list[int]) -> float:
    """Mean over foreground classes of the 3D Dice on the non-labeled slices."""
    keep = np.ones(truth.shape[axis], bool)
    keep[labeled] = False
    p, t = np.compress(keep, pred, axis=axis), np.compress(keep, truth, axis=axis)
    return float(np.mean([dice(p == c, t == c) for c in range(1, int(truth.max()) + 1)]))


def sparse(labels: np.ndarray, axis: int, labeled: list[int]) -> np.ndarray:
    out = np.zeros_like(labels)
    index = [slice(None)] * 3
    index[axis] = labeled
    out[tuple(index)] = labels[tuple(index)]
    return out


def run_method(
    method,
    image,
    labels,
    axis,
    labeled,
    budgets,
    seed,
    patch,
    prior_fraction=DEFAULT_PRIOR_FRACTION,
):
    """Train ``method`` for max(budgets) minutes; Dice (raw and largest 3D component) of
    the weights at each budget, plus the iteration counts."""
    volumes, k = make_volumes([image], [sparse(labels, axis, labeled)], axis, [labeled])
    sampler = SliceSampler(
        volumes,
        patch_size=patch,
        batch_size=8,
        seed=seed,
        # the method's hold-out, as the CLI and the plugin give it (none below
        # MIN_HOLDOUT_LABELED labeled slices)
        holdout_fraction=get_method(method).holdout_fraction,
        foreground_crops=DEFAULT_FOREGROUND_CROPS,
        prior_fraction=prior_fraction,
    )
    bundle = create_model(method, {}, 1, k, "cpu", seed=seed, axis=axis, patch_size=patch)
    snapshots: dict[float, tuple[int, dict]] = {}
    pending = sorted(budgets)

    def snap(event) -> None:
        while pending and (event.elapsed >= pending[0] * 60 or event.done):
            snapshots[pending.pop(0)] = (event.iteration, copy.deepcopy(bundle.method.state_dict()))

    config = TrainConfig(iterations=0, minutes=max(budgets), seed=seed, patch_size=patch)
    t0 = time.perf_counter()
    train(bundle, sampler, config, callback=snap)
    wall = time.perf_counter() - t0
    rows = {}
    for minutes, (iteration, state) in sorted(snapshots.items()):
        bundle.method.load_state_dict(state, with_optimizers=False)
        pred = predict_volume(bundle, image, maps=()).labels
        rows[str(minutes)] = {
            "iteration": iteration,
            "dice": scored_dice(pred, labels, axis, labeled),
            "dice_lcc": scored_dice(largest_component_3d(pred, k), labels, axis, labeled),
        }
    return {
        "budgets": rows,
        "train_seconds": wall,
        "labeled_trained": len(sampler.labeled_index),
        "held_out": len(sampler.holdout),
    }


def load_results() -> dict:
    return json.loads(RESULT.read_text()) if RESULT.exists() else {"runs": {}}


def save_results(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULT.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(RESULT)


def benchmark(args) -> None:
    folder, axis, cases_of = DATASETS[args.dataset]
    cases = cases_of(folder)
    results = load_results()
    results["machine"] = machine()
    for index in args.cases:
        case = cases[index]
        image, _ = read_volume(folder / "images" / f"{case}.nii.gz")
        labels, _ = read_labels(folder / "labels" / f"{case}.nii.gz")
        for k in args.k:
            labeled = protocol_slices(labels, axis, k)
            key = f"{args.dataset}/{case}/k={k}"
            entry = results["runs"].setdefault(key, {"labeled": labeled, "methods": {}})
            t = time.perf_counter()
            interp = interpolate_volume(sparse(labels, axis, labeled), labeled, axis)
            entry["interpolation"] = {
                "dice": scored_dice(interp, labels, axis, labeled),
                "seconds": time.perf_counter() - t,
            }
            print(f"{key}: slices {labeled}, interpolation {entry['interpolation']['dice']:.4f}")
            for method in args.methods:
                result = run_method(
                    method,
                    image,
                    labels,
                    axis,
                    labeled,
                    args.budgets,
                    args.seed,
                    args.patch,
                    args.prior_fraction,
                )
                entry["methods"][method] = result
                curve = ", ".join(
                    f"{m} min: {r['dice']:.4f} (lcc {r['dice_lcc']:.4f}, it {r['iteration']})"
                    for m, r in result["budgets"].items()
                )
                trained = f"trained on {result['labeled_trained']} labeled slices"
                if result["held_out"]:
                    trained += f", {result['held_out']} held out"
                print(f"  {method} ({trained}): {curve}", flush=True)
                save_results(results)


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = load_results()["runs"]
    groups = sorted({(key.split("/")[0], key.split("/")[2]) for key in results})
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, (dataset, k) in zip(axes[0], groups, strict=True):
        runs = [v for key, v in results.items() if key.startswith(dataset) and key.endswith(k)]
        interp = np.mean([r["interpolation"]["dice"] for r in runs])
        ax.axhline(interp, color="k", ls="--", lw=1.2, label="interpolation")
        for method in METHODS:
            have = [r["methods"][method]["budgets"] for r in runs if method in r["methods"]]
            if not have:
                continue
            minutes = sorted({float(m) for b in have for m in b})
            dice = [np.mean([b[str(m)]["dice"] for b in have if str(m) in b]) for m in minutes]
            ax.plot(minutes, dice, marker="o", label=method)
        ax.set_title(f"{dataset}, {k} labeled slices ({len(runs)} volume(s))")
        ax.set_xlabel("training minutes (this 2-core CPU)")
        ax.set_ylabel("Dice on the unlabeled slices")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    print(f"wrote {PLOT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="la")
    parser.add_argument("--cases", type=int, nargs="+", default=[0])
    parser.add_argument("--k", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior-fraction", type=float, default=DEFAULT_PRIOR_FRACTION)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--plot", action="store_true", help="only redraw the plot")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.plot:
        benchmark(args)
    plot()


if __name__ == "__main__":
    main()
