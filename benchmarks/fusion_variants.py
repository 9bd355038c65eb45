"""Other ways to turn the network's and the propagation's probabilities into the mask,
scored on the same weights: no training here.

``annotation_effort.py --keep-probabilities DIR`` saves, for every run and budget, the
network's probabilities (no smoothing) and the propagation prior; this scores on each the
rules below (3D Dice on the non-labeled slices, as the annotation-effort table) and writes
``benchmarks/results/fusion_variants.json`` with the means per (dataset, protocol, k,
method and budget):

- ``prior wP``: ``(1 - P) * network + P * prior`` (0.5 is the product's weight);
- ``smooth S``: the 0.5 blend smoothed by a Gaussian of S slices across slices before the
  argmax (:mod:`src_models.slice_smoothing`; 1 is the product's default since stop 28);
- ``smooth 1, prior w0.7``; ``network smoothed 1``: the network alone smoothed, then blended;
- ``network``, ``propagation``: each alone.

    python benchmarks/annotation_effort.py --dataset hippocampus --protocol ends --k 4 \\
        --methods supervised --budgets 2 --separate --overrides '{"ends_labeled": true}' \\
        --tag ends --keep-probabilities /tmp/kept
    python benchmarks/fusion_variants.py /tmp/kept
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
from _common import RESULTS, ROOT, write_json
from _protocol import DATASETS, load_case, scored_dice

from src_models.slice_smoothing import smooth_across_slices

OUT = RESULTS / "fusion_variants.json"


def variants(model: np.ndarray, prior: np.ndarray, axis: int) -> dict[str, np.ndarray]:
    """Masks of every rule from (K, Z, Y, X) network and prior probabilities."""

    def blend(weight, network=model):
        return (1 - weight) * network + weight * prior

    def smooth(p, sigma):
        return smooth_across_slices(p, axis + 1, sigma)

    masks = {"network": model.argmax(0), "propagation": prior.argmax(0)}
    for weight in (0.3, 0.5, 0.6, 0.7, 0.8):
        masks[f"prior w{weight}"] = blend(weight).argmax(0)
    half = blend(0.5)
    for sigma in (0.7, 1.0, 1.5, 2.0):
        masks[f"smooth {sigma:g}"] = smooth(half, sigma).argmax(0)
    masks["smooth 1, prior w0.7"] = smooth(blend(0.7), 1.0).argmax(0)
    masks["network smoothed 1"] = blend(0.5, smooth(model, 1.0)).argmax(0)
    return masks


@functools.cache
def case_labels(dataset: str, case: str) -> tuple[np.ndarray, int]:
    """The truth and slicing axis of a volume, read once (several runs share a volume)."""
    folder, _, cases_of = DATASETS[dataset]
    index = [str(c) for c in cases_of(folder)].index(case)
    _, _, labels, axis = load_case(dataset, index)
    return labels, axis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="--keep-probabilities folders")
    parser.add_argument(
        "--out", type=Path, default=OUT, help=f"results JSON (default {OUT.relative_to(ROOT)})"
    )
    args = parser.parse_args()
    rows = []
    files = sorted(p for folder in args.folders for p in folder.glob("*.npz"))
    if not files:  # never replace the saved results with an empty table
        parser.error(f"no --keep-probabilities .npz files in {', '.join(map(str, args.folders))}")
    for path in files:
        dataset, case, protocol, k, method, budget = path.stem.split("__")
        labels, axis = case_labels(dataset, case)
        kept = np.load(path)
        labeled = [int(s) for s in kept["labeled"]]
        model, prior = (kept[n].astype(np.float32) for n in ("model", "prior"))
        dice = {
            name: scored_dice(mask, labels, axis, labeled)
            for name, mask in variants(model, prior, int(kept["axis"])).items()
        }
        rows.append(
            dict(dataset=dataset, case=case, protocol=protocol, k=k, run=f"{method} {budget}")
        )
        rows[-1]["dice"] = dice
        print(path.stem, " ".join(f"{n}={d:.4f}" for n, d in dice.items()), flush=True)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r['dataset']} {r['protocol']} {r['k']} {r['run']}", []).append(r)
    means = {
        group: {
            "volumes": len(rs),
            "mean": {n: float(np.mean([r["dice"][n] for r in rs])) for n in rs[0]["dice"]},
            "up_with_smooth_1": sum(r["dice"]["smooth 1"] > r["dice"]["prior w0.5"] for r in rs),
        }
        for group, rs in groups.items()
    }
    write_json(args.out, {"means": means, "volumes": rows})
    print("\n".join(report_lines(args.out)))


def report_lines(path: Path = OUT) -> list[str]:
    """The markdown table of docs/benchmarks.md (means over the volumes of each group)."""
    if not path.exists():
        return []
    means = json.loads(path.read_text())["means"]
    names = ["network", "propagation", "prior w0.5", "smooth 1", "smooth 1.5", "smooth 2"]
    names += ["prior w0.7", "smooth 1, prior w0.7", "network smoothed 1"]
    lines = [
        "| dataset, protocol, k, run | volumes | " + " | ".join(names) + " | smooth 1 better |",
        "|---|---:|" + "---:|" * len(names) + "---:|",
    ]
    for group, m in sorted(means.items()):
        cells = " | ".join(f"{m['mean'][n]:.3f}" for n in names)
        lines.append(
            f"| {group} | {m['volumes']} | {cells} | {m['up_with_smooth_1']}/{m['volumes']} |"
        )
    return lines


if __name__ == "__main__":
    main()
