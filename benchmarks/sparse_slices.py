"""Sparse-slice benchmark: Dice against wall-clock minutes, interpolation as the bar.

Protocols (``benchmarks/_protocol.py``): one volume at a time, k labeled slices evenly
spaced strictly inside the foreground extent along the slicing axis (``inside``), or over
it with its first and last slice (``ends``), every other slice scored (3D Dice
over all non-labeled slices, per foreground class, averaged). For each method one run of
``--minutes`` wall-clock minutes with the default settings; the weights are copied when the
training clock passes each budget (1, 2, 5 minutes) and scored after the run, so one run
gives the whole Dice-versus-time curve. The zero-training rows: shape-based interpolation,
the random walker seeded by the labeled slices and the product's propagation
(``annotation_effort.zero_training``). Nothing is selected on the scored slices. Each method
gets its hold-out of labeled slices as in the CLI and the plugin (SDCL: a fifth, but none below 10
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
from _common import RESULTS, ROOT, machine, write_json
from _protocol import DATASETS, PROTOCOLS, load_case, protocol_slices, scored_dice, sparse
from annotation_effort import zero_training

from src_models.inference import predict_volume
from src_models.postprocess import largest_component_3d
from src_models.recipe import RunRecipe, build_run
from src_models.training import train

RESULT = RESULTS / "sparse_slices.json"
PLOT = ROOT / "docs" / "images" / "sparse_slices.png"
METHODS = ("supervised", "crossmatch", "dfcps", "sdcl", "diffusion")


def run_method(method, image, labels, axis, labeled, budgets, seed, patch, overrides=None):
    """Train ``method`` for max(budgets) minutes with the product's recipe; Dice (raw and
    largest 3D component) of the weights at each budget, plus the iteration counts."""
    recipe = RunRecipe(
        method=method,
        axis=axis,
        minutes=max(budgets),
        seed=seed,
        patch_size=patch,
        **(overrides or {}),
    )
    run = build_run(recipe, [image], [sparse(labels, axis, labeled)], [labeled])
    bundle, sampler, k = run.bundle, run.sampler, run.bundle.num_classes
    snapshots: dict[float, tuple[int, dict]] = {}
    pending = sorted(budgets)

    def snap(event) -> None:
        while pending and (event.elapsed >= pending[0] * 60 or event.done):
            snapshots[pending.pop(0)] = (event.iteration, copy.deepcopy(bundle.method.state_dict()))

    t0 = time.perf_counter()
    train(bundle, sampler, run.config, callback=snap)
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


def benchmark(args) -> None:
    results = load_results()
    results["machine"] = machine()
    for index in args.cases:
        case, image, labels, axis = load_case(args.dataset, index)
        for protocol, k in [(p, k) for p in args.protocol for k in args.k]:
            labeled = protocol_slices(labels, axis, k, protocol)
            suffix = "" if protocol == "inside" else f"/{protocol}"  # older keys: inside
            key = f"{args.dataset}/{case}/k={k}{suffix}"
            entry = results["runs"].setdefault(key, {"labeled": labeled, "methods": {}})
            entry["zero_training"] = zero_training(image, labels, axis, labeled)
            entry["interpolation"] = entry["zero_training"]["interpolation"]
            zero = ", ".join(f"{n} {r['dice']:.4f}" for n, r in entry["zero_training"].items())
            print(f"{key}: slices {labeled}, {zero}")
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
                    {"prior_fraction": args.prior_fraction}
                    if args.prior_fraction is not None
                    else None,
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
                write_json(RESULT, results)


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
    parser.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior-fraction", type=float, help="default: the recipe's")
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
