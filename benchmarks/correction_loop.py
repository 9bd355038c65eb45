"""The correction loop with a simulated user (issue 20): does "Next slice" save work?

Start from k0 labeled slices (``ends`` or ``inside``, ``benchmarks/_protocol.py``) and train
the default recipe for T minutes; then R rounds of: pick the next slice with a strategy
(:mod:`src_models.suggest`), "correct" it from the ground truth, continue training T minutes,
score the whole volume (the product's output: the network fused with the propagation of the
labels so far). Two kinds of correction:

- ``slice``: the whole slice becomes labeled (the truth on every voxel);
- ``region``: only where the prediction is wrong or the model is unsure (discrepancy > 0.5,
  or confidence < 0.8 for one-network methods) gets the truth; the rest of the slice stays
  unannotated (the ignore label), as the review dock's "only what I painted".

Each round records Dice, the voxels the user painted, and the minutes. Zero-training rows
(interpolation, propagation) get the same slices each round. On the ``ends`` protocol the
simulated user says the outer labeled slices are the structure's ends (``--ends-labeled``:
nothing is propagated or suggested beyond them; ``--no-ends-labeled`` to leave it off).

    python benchmarks/correction_loop.py --dataset hippocampus --cases 0 1 2 --minutes 1
    python benchmarks/correction_loop.py --report

Results: one JSON per (dataset, case, protocol) in ``benchmarks/results/correction_loop/``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from _common import RESULTS, machine
from _protocol import PROTOCOLS, load_case, protocol_slices, scored_dice, sparse

from src_models.data.label_values import IGNORE
from src_models.inference import predict_volume
from src_models.interpolation import interpolate_volume
from src_models.propagation import propagate_volume, propagation_prior
from src_models.recipe import RunRecipe, build_run
from src_models.suggest import STRATEGIES, suggest
from src_models.training import train

FOLDER = RESULTS / "correction_loop"
KINDS = ("slice", "region")


def whole_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean foreground Dice over the whole volume (every slice, labeled ones too)."""
    return scored_dice(pred, truth, 0, [])


def uncertainty_map(pred) -> np.ndarray:
    if "discrepancy" in pred.maps:
        return pred.maps["discrepancy"]
    return 1.0 - pred.maps["confidence"]


def loop(image, truth, axis, labeled, strategy, kind, rounds, minutes, seed, ends) -> dict:
    """One simulated user: k0 slices, then ``rounds`` corrections; ``ends``: the user says
    the outer labeled slices are the structure's ends (``--ends-labeled``)."""
    k = int(truth.max()) + 1
    labels = sparse(truth, axis, labeled).astype(np.int64)
    done = list(labeled)
    recipe = RunRecipe(axis=axis, minutes=minutes, seed=seed, ends_labeled=ends)
    bundle = None
    rows = []
    t0 = time.perf_counter()
    painted_total = 0
    for r in range(rounds + 1):
        run = build_run(recipe, [image], [labels], [done], resume=bundle, num_classes=k)
        bundle = run.bundle
        config = run.config
        config.iterations = bundle.iteration + 1  # minutes decide; continue counts on
        train(bundle, run.sampler, config)
        prior = propagation_prior(image, labels, done, axis, k, ends)
        maps = ["discrepancy"] if "discrepancy" in bundle.method.map_names else ["confidence"]
        pred = predict_volume(bundle, image, maps=maps, prior=prior)
        rows.append(
            {
                "round": r,
                "labeled": list(done),
                "dice": whole_dice(pred.labels, truth),
                "painted_voxels": painted_total,
                "minutes": (time.perf_counter() - t0) / 60,
                "iteration": bundle.iteration,
            }
        )
        print(f"    round {r}: Dice {rows[-1]['dice']:.4f} painted {painted_total}", flush=True)
        if r == rounds:
            break
        others = tuple(a for a in range(3) if a != axis)
        unsure = uncertainty_map(pred)
        score = unsure.mean(axis=others)
        structure = pred.labels.astype(bool).any(axis=others)
        picks = suggest(done, truth.shape[axis], score, structure, 1, strategy, ends)
        if not picks:  # every slice between the ends is labeled
            break
        pick = picks[0].index
        index = [slice(None)] * 3
        index[axis] = pick
        index = tuple(index)
        if kind == "slice":
            labels[index] = truth[index]
            painted_total += int(truth[index].size)
        else:
            threshold = 0.5 if "discrepancy" in pred.maps else 0.2
            region = (pred.labels[index] != truth[index]) | (unsure[index] > threshold)
            labels[index] = np.where(region, truth[index].astype(np.int64), IGNORE)
            painted_total += int(region.sum())
        done = sorted(set(done) | {pick})
    return {"rounds": rows}


def zero_training_rows(image, truth, axis, slices_per_round, ends) -> list[dict]:
    rows = []
    for done in slices_per_round:
        given = sparse(truth, axis, done)
        interp = interpolate_volume(given, done, axis)
        prop = propagate_volume(image, given, done, axis, ends_labeled=ends)
        rows.append(
            {"interpolation": whole_dice(interp, truth), "propagation": whole_dice(prop, truth)}
        )
    return rows


def benchmark(args) -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    for index in args.cases:
        case, image, truth, axis = load_case(args.dataset, index)
        for protocol in args.protocol:
            labeled = protocol_slices(truth, axis, args.k0, protocol)
            path = FOLDER / f"{args.dataset}__{case}__{protocol}.json"
            entry = json.loads(path.read_text()) if path.exists() else {"loops": {}}
            ends = protocol == "ends" and not args.no_ends_labeled
            entry.update(
                dataset=args.dataset, case=case, protocol=protocol, k0=labeled, ends_labeled=ends
            )
            entry["machine"] = machine()
            for strategy in args.strategies:
                for kind in args.kinds:
                    print(f"{args.dataset}/{case}/{protocol} {strategy} {kind}", flush=True)
                    result = loop(
                        image, truth, axis, labeled, strategy, kind, args.rounds,
                        args.minutes, args.seed, ends,
                    )  # fmt: skip
                    slices = [row["labeled"] for row in result["rounds"]]
                    result["zero_training"] = zero_training_rows(image, truth, axis, slices, ends)
                    entry["loops"][f"{strategy}/{kind}"] = result
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text(json.dumps(entry, indent=1))
                    tmp.replace(path)


def report() -> None:
    for path in sorted(FOLDER.glob("*.json")):
        entry = json.loads(path.read_text())
        print(f"{entry['dataset']}/{entry['case']}/{entry['protocol']} (k0 {entry['k0']})")
        for name, result in entry["loops"].items():
            dice = " ".join(f"{row['dice']:.3f}" for row in result["rounds"])
            painted = result["rounds"][-1]["painted_voxels"]
            print(f"  {name:32s} Dice by round {dice}  painted {painted}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("la", "hippocampus"), default="hippocampus")
    parser.add_argument("--cases", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument(
        "--no-ends-labeled",
        action="store_true",
        help="on the ends protocol, do not tell the product the outer slices are the ends",
    )
    parser.add_argument("--k0", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.report:
        benchmark(args)
    report()


if __name__ == "__main__":
    main()
