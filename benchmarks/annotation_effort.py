"""Annotation effort: Dice against the number of labeled slices k, with and without training.

The question a user asks: is training worth the wait, or should I label two more slices?
For each volume, protocol (``ends``: the first and last slice of the structure and k - 2
between, what Slicer / ITK-SNAP users do; ``inside``: k slices strictly inside, see
``benchmarks/_protocol.py``) and k, on the non-labeled slices (3D Dice, classes averaged):

- zero-training rows: ``interpolation`` (shape-based, "fill between slices"),
  ``random_walker`` (skimage's, beta 130, seeded by the labeled slices, restricted to the
  labeled range: the issue's baseline) and ``propagation`` (the product's: beta 400,
  3 slices beyond the outer labeled ones; :mod:`src_models.propagation`), with seconds;
- each trained method, one run of ``max(--budgets)`` wall-clock minutes with the product's
  defaults (the recipe the CLI and the plugin use); the weights are copied when the clock
  passes each budget and scored after the run: ``model`` (the network alone), ``output``
  (what the product hands back: the network fused with the propagation,
  :func:`predict_volume` ``prior=``) and ``output_lcc`` (its largest 3D component per class).

    python benchmarks/annotation_effort.py --dataset la --cases 0 1 2 3 4 --protocol ends --k 4
    python benchmarks/annotation_effort.py --zero-only --k 3 4 5 6 8   # baselines only
    python benchmarks/annotation_effort.py --report     # table + plot from the saved results

One JSON per (dataset, case, protocol, k) in ``benchmarks/results/annotation_effort/``, so
several invocations (e.g. two side by side, one thread each) never write the same file.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
from _common import RESULTS, ROOT, machine
from _protocol import PROTOCOLS, load_case, protocol_slices, scored_dice, sparse

from src_models.data.volumes import to_slices
from src_models.inference import predict_volume
from src_models.interpolation import interpolate_volume
from src_models.postprocess import largest_component_3d
from src_models.propagation import propagate, propagation_prior
from src_models.recipe import RunRecipe, build_run
from src_models.training import train

FOLDER = RESULTS / "annotation_effort"
PLOT = ROOT / "docs" / "images" / "annotation_effort.png"


def zero_training(image, labels, axis, labeled) -> dict:
    """Dice and seconds of the three zero-training results."""
    given = sparse(labels, axis, labeled)
    k = int(labels.max()) + 1
    slices = to_slices(image[None], axis)
    given_slices = to_slices(given[None], axis)[:, 0]
    rows = {}
    runs = {
        "interpolation": lambda: interpolate_volume(given, labeled, axis, k),
        "random_walker": lambda: np.moveaxis(
            propagate(slices, given_slices, labeled, k, beta=130.0, extend=0).labels, 0, axis
        ),
        "propagation": lambda: np.moveaxis(
            propagate(slices, given_slices, labeled, k).labels, 0, axis
        ),
    }
    for name, run in runs.items():
        t = time.perf_counter()
        pred = run()
        rows[name] = {
            "dice": scored_dice(pred, labels, axis, labeled),
            "seconds": time.perf_counter() - t,
        }
    return rows


def trained(method, image, labels, axis, labeled, budgets, seed, overrides) -> dict:
    """One run of ``method`` with the product's defaults; Dice at each budget."""
    k = int(labels.max()) + 1
    recipe = RunRecipe(
        method=method,
        axis=axis,
        minutes=max(budgets),
        seed=seed,
        **overrides,
    )
    t0 = time.perf_counter()
    run = build_run(recipe, [image], [sparse(labels, axis, labeled)], [labeled])
    setup = time.perf_counter() - t0
    bundle = run.bundle
    snapshots: dict[float, tuple[int, float, dict]] = {}
    pending = sorted(budgets)

    def snap(event) -> None:
        while pending and (event.elapsed >= pending[0] * 60 or event.done):
            state = copy.deepcopy(bundle.method.state_dict())
            snapshots[pending.pop(0)] = (event.iteration, event.elapsed, state)

    train(bundle, run.sampler, run.config, callback=snap)
    t = time.perf_counter()
    prior = propagation_prior(image, sparse(labels, axis, labeled), labeled, axis, k)
    prior_seconds = time.perf_counter() - t
    rows = {}
    for minutes, (iteration, elapsed, state) in sorted(snapshots.items()):
        bundle.method.load_state_dict(state, with_optimizers=False)
        alone = predict_volume(bundle, image, maps=()).labels
        fused = predict_volume(bundle, image, maps=(), prior=prior).labels
        rows[str(minutes)] = {
            "iteration": iteration,
            "elapsed": elapsed,
            "model": scored_dice(alone, labels, axis, labeled),
            "output": scored_dice(fused, labels, axis, labeled),
            "output_lcc": scored_dice(largest_component_3d(fused, k), labels, axis, labeled),
        }
    return {"budgets": rows, "setup_seconds": setup, "prior_seconds": prior_seconds}


def result_path(dataset: str, case: str, protocol: str, k: int):
    return FOLDER / f"{dataset}__{case}__{protocol}__k{k}.json"


def save(path, data: dict) -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def benchmark(args) -> None:
    overrides = json.loads(args.overrides) if args.overrides else {}
    for index in args.cases:
        case, image, labels, axis = load_case(args.dataset, index)
        for protocol in args.protocol:
            for k in args.k:
                labeled = protocol_slices(labels, axis, k, protocol)
                path = result_path(args.dataset, case, protocol, k)
                entry = json.loads(path.read_text()) if path.exists() else {"methods": {}}
                entry.update(
                    dataset=args.dataset, case=case, protocol=protocol, k=k, labeled=labeled
                )
                entry["zero_training"] = zero_training(image, labels, axis, labeled)
                entry["machine"] = machine()
                zero = ", ".join(f"{n} {r['dice']:.4f}" for n, r in entry["zero_training"].items())
                print(f"{args.dataset}/{case}/{protocol}/k={k} {labeled}: {zero}", flush=True)
                save(path, entry)
                for method in [] if args.zero_only else args.methods:
                    name = method + (f"+{args.tag}" if args.tag else "")
                    result = trained(
                        method, image, labels, axis, labeled, args.budgets, args.seed, overrides
                    )
                    result["threads"] = torch.get_num_threads()
                    result["overrides"] = overrides
                    entry["methods"][name] = result
                    curve = ", ".join(
                        f"{m} min: model {r['model']:.4f} output {r['output']:.4f} "
                        f"(it {r['iteration']})"
                        for m, r in result["budgets"].items()
                    )
                    print(f"  {name}: {curve}", flush=True)
                    save(path, entry)


def load_all() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(FOLDER.glob("*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("la", "hippocampus"), default="la")
    parser.add_argument("--cases", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--k", type=int, nargs="+", default=[4])
    parser.add_argument("--methods", nargs="+", default=["supervised"])
    parser.add_argument("--budgets", type=float, nargs="+", default=[2.0, 5.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--zero-only", action="store_true", help="only the zero-training rows")
    parser.add_argument("--overrides", help="JSON of RunRecipe fields, e.g. a lever to test")
    parser.add_argument("--tag", default="", help="suffix of the method's row (a variant)")
    parser.add_argument("--report", action="store_true", help="only print the saved results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.report:
        benchmark(args)


if __name__ == "__main__":
    main()
