"""The prior refreshed mid-run with the product's own output, against the run without it.

:mod:`src_models.training.prior_refresh`: at ``prior_refresh`` of the budget the prior's
targets (the random walk's sure voxels) become the network fused with the propagation and
smoothed across slices, what the product hands back. For each volume, the same recipe, seed
and budget twice, back to back on the same machine: ``--prior-refresh 0`` (off) and each
share in ``--shares`` (default the product's); scored as ``annotation_effort.py`` scores its
``output`` (the fused, smoothed prediction; 3D Dice on the slices not labeled, classes
averaged).

    python benchmarks/prior_refresh.py --dataset hippocampus --protocol ends --k 4 \\
        --method supervised --minutes 2 --cases 0 1 2 3 4
    python benchmarks/prior_refresh.py --report

One JSON per (dataset, protocol, k, method, minutes) in ``benchmarks/results/prior_refresh/``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from _common import RESULTS, machine, write_json
from _protocol import PROTOCOLS, load_case, protocol_slices, scored_dice, sparse

from src_models.inference import predict_volume
from src_models.propagation import propagation_prior
from src_models.recipe import DEFAULT_PRIOR_REFRESH, RunRecipe, build_run
from src_models.training import train

FOLDER = RESULTS / "prior_refresh"


def one_run(image, truth, axis, labeled, ends, prior, method, minutes, share, seed) -> dict:
    """The product's output (fused with ``prior``, the propagation of the ``labeled``
    slices) after ``minutes`` of ``method`` with ``prior_refresh=share``."""
    given = sparse(truth, axis, labeled)
    recipe = RunRecipe(
        method=method,
        axis=axis,
        minutes=minutes,
        seed=seed,
        ends_labeled=ends,
        prior_refresh=share,
    )
    t0 = time.perf_counter()
    run = build_run(recipe, [image], [given], [labeled])
    train(run.bundle, run.sampler, run.config)
    pred = predict_volume(run.bundle, image, maps=(), prior=prior)
    return {
        "dice": scored_dice(pred.labels, truth, axis, labeled),
        "iteration": run.bundle.iteration,
        "refreshed_at": run.bundle.info.get("prior_refreshed_at"),
        "seconds": time.perf_counter() - t0,
    }


def benchmark(args) -> None:
    stem = f"{args.dataset}__{args.protocol}__k{args.k}__{args.method}__{args.minutes:g}min"
    path = FOLDER / f"{stem}.json"
    entry = json.loads(path.read_text()) if path.exists() else {"cases": {}}
    entry.update(
        dataset=args.dataset,
        protocol=args.protocol,
        k=args.k,
        method=args.method,
        minutes=args.minutes,
        ends_labeled=args.protocol == "ends",
        machine=machine(),
    )
    for index in args.cases:
        case, image, truth, axis = load_case(args.dataset, index)
        labeled = protocol_slices(truth, axis, args.k, args.protocol)
        ends = args.protocol == "ends"
        k = int(truth.max()) + 1
        prior = propagation_prior(image, sparse(truth, axis, labeled), labeled, axis, k, ends)
        row = {"labeled": labeled}
        for share in [0.0, *args.shares]:
            data = (image, truth, axis, labeled, ends, prior)
            row[f"{share:g}"] = one_run(*data, args.method, args.minutes, share, args.seed)
            print(f"{case} refresh {share:g}: {row[f'{share:g}']}", flush=True)
        entry["cases"][case] = row
        write_json(path, entry)


def goal_bars(e: dict) -> list[float] | None:
    """Issue 18's goal 2 per volume of ``e``: the better of interpolation and the random
    walker (``annotation_effort.py``'s zero-training rows, same slices) + 3 points up to
    2 minutes, + 5 beyond; None when a volume has no such row."""
    margin = 0.03 if e["minutes"] <= 2 else 0.05
    bars = []
    for case, row in e["cases"].items():
        name = f"{e['dataset']}__{case}__{e['protocol']}__k{e['k']}.json"
        path = RESULTS / "annotation_effort" / name
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        if saved.get("labeled") != row["labeled"]:
            return None
        zero = saved["zero_training"]
        bars.append(max(zero["interpolation"]["dice"], zero["random_walker"]["dice"]) + margin)
    return bars


def report_lines() -> list[str]:
    """Per (dataset, protocol, k, method, minutes): the mean output off / with each share,
    on how many volumes the refresh is better, and how many meet issue 18's goal 2."""
    lines = []
    for path in sorted(FOLDER.glob("*.json")):
        e = json.loads(path.read_text())
        rows = list(e["cases"].values())
        bars = goal_bars(e)
        shares = sorted({s for r in rows for s in r if s not in ("0", "labeled")}, key=float)
        off = [r["0"]["dice"] for r in rows]
        ends = ", --ends-labeled" if e["ends_labeled"] else ""
        prototype = f" ({e['label']})" if e.get("label") else ""
        head = (
            f"| {e['dataset']}, {e['protocol']}{ends}, k = {e['k']}, {e['method']} "
            f"{e['minutes']:g} min ({len(rows)}){prototype} | {np.mean(off):.3f} |"
        )
        cells = []
        for share in shares:
            on = [r[share]["dice"] for r in rows]
            better = sum(a > b for a, b in zip(on, off, strict=True))
            diffs = " / ".join(f"{100 * (a - b):+.1f}" for a, b in zip(on, off, strict=True))
            cells.append(f" {share}: {np.mean(on):.3f} ({diffs}; {better}/{len(rows)} better) |")
        goal = "n/a"
        if bars is not None:
            counts = [
                sum(r[share]["dice"] >= b for r, b in zip(rows, bars, strict=True))
                for share in ["0", *shares]
            ]
            goal = f"{np.mean(bars):.3f}: " + " → ".join(f"{c}/{len(rows)}" for c in counts)
        lines.append(head + "".join(cells) + f" {goal} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hippocampus")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="ends")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--method", default="supervised")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--cases", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--shares", type=float, nargs="+", default=[DEFAULT_PRIOR_REFRESH])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        print("\n".join(report_lines()))
        return
    torch.set_num_threads(args.threads)
    benchmark(args)


if __name__ == "__main__":
    main()
