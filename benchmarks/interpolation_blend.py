"""Does the interpolation add to the random walk? Zero-training, no network (issue 18's
lever "fuse the prior"; a blend for the product's prior, measured and not adopted).

For every volume, protocol and k: the product's walk (:mod:`src_models.propagation`, beta
400, stopping at the ends with ``ends``) and the shape interpolation turned into
probabilities (each class's blended signed distance d through ``sigmoid(-d / 2 px)``; the
walk's own where the interpolation predicts nothing), then scored (3D Dice on the
non-labeled slices, as ``annotation_effort.py``) after smoothing across slices (1 slice,
the product's default):

- ``walk``: the walk alone;
- ``blend wW``: ``(1 - W) * walk + W * interpolation``, W 0.3 and 0.5;
- ``overlap >= T``: W 0.5 only between two labeled slices whose foreground Dice is >= T
  (the interpolation is sure where the two outlines agree), else the walk.

    python benchmarks/interpolation_blend.py --dataset la --protocol ends --k 4 5 6 8 10

Results: ``benchmarks/results/interpolation_blend.json`` (means per dataset, protocol and k;
one entry per volume inside).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _common import RESULTS, machine, write_json
from _protocol import PROTOCOLS, load_case, protocol_slices, scored_dice, sparse

from src_models.interpolation import distance_probabilities, interpolate_slices
from src_models.propagation import propagate
from src_models.slice_smoothing import DEFAULT_SMOOTHING, smooth_across_slices

OUT = RESULTS / "interpolation_blend.json"
#: pixels of signed distance over which the interpolation's probability goes 0.27 -> 0.73
TAU = 2.0


def interpolation_probabilities(labels: np.ndarray, labeled: list[int], k: int, walk):
    """(K, N, H, W) probabilities of the shape interpolation of ``labels`` (N, H, W), the
    walk's where the interpolation predicts nothing (outside the labeled range)."""
    signed = []
    for c in range(1, k):
        one = interpolate_slices((labels == c).astype(np.int64), labeled, 2)
        signed.append(np.where(one.labels == 1, -one.margin, one.margin))
    probs = distance_probabilities(np.stack(signed), TAU)
    covered = one.covered  # the labeled range: the same for every class
    probs[:, ~covered] = walk[:, ~covered]
    return probs.astype(np.float32)


def outline_agreement(truth: np.ndarray, labeled: list[int]) -> np.ndarray:
    """(N,) foreground Dice of the two labeled slices around each slice (0 elsewhere)."""
    out = np.zeros(len(truth))
    for a, b in zip(labeled[:-1], labeled[1:], strict=True):
        fa, fb = truth[a] > 0, truth[b] > 0
        out[a + 1 : b] = 2 * (fa & fb).sum() / max(int(fa.sum() + fb.sum()), 1)
    return out


def rules(walk, interp, agreement) -> dict[str, np.ndarray]:
    """Masks (N, H, W) of every rule, smoothed across slices as the product's output."""

    def mask(p):
        return smooth_across_slices(p, 1, DEFAULT_SMOOTHING).argmax(0)

    out = {"walk": mask(walk)}
    for w in (0.3, 0.5):
        out[f"blend w{w}"] = mask((1 - w) * walk + w * interp)
    for t in (0.6, 0.7, 0.8):
        w = np.where(agreement >= t, 0.5, 0.0)[None, :, None, None]
        out[f"overlap >= {t}"] = mask((1 - w) * walk + w * interp)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("la", "hippocampus"), default="hippocampus")
    parser.add_argument("--cases", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--k", type=int, nargs="+", default=[4, 5, 6, 8])
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.exists() else {"runs": {}}
    for index in args.cases:
        case, image, truth, axis = load_case(args.dataset, index)
        slices = np.moveaxis(image if image.ndim == 4 else image[None], axis + 1, 0)
        k_classes = int(truth.max()) + 1
        for protocol in args.protocol:
            for k in args.k:
                labeled = protocol_slices(truth, axis, k, protocol)
                lbl = np.moveaxis(sparse(truth, axis, labeled), axis, 0).astype(np.int64)
                walk = propagate(
                    slices, lbl, labeled, k_classes, ends_labeled=protocol == "ends"
                ).probabilities
                interp = interpolation_probabilities(lbl, labeled, k_classes, walk)
                agreement = outline_agreement(np.moveaxis(truth, axis, 0), labeled)
                masks = rules(walk, interp, agreement)
                dice = {
                    name: scored_dice(np.moveaxis(m, 0, axis), truth, axis, labeled)
                    for name, m in masks.items()
                }
                key = f"{args.dataset}/{case}/{protocol}/k{k}"
                results["runs"][key] = {"labeled": labeled, "dice": dice}
                print(key, " ".join(f"{n} {d:.4f}" for n, d in dice.items()), flush=True)
    means: dict[str, dict[str, float]] = {}
    groups: dict[str, list[dict]] = {}
    for key, run in results["runs"].items():
        dataset, _, protocol, k = key.split("/")
        groups.setdefault(f"{dataset}/{protocol}/{k}", []).append(run["dice"])
    for group, runs in sorted(groups.items()):
        means[group] = {n: float(np.mean([r[n] for r in runs])) for n in runs[0]}
        means[group]["volumes"] = len(runs)
    results.update(means=means, machine=machine())
    write_json(OUT, results)
    for group, row in means.items():
        print(group, " ".join(f"{n} {v:.4f}" for n, v in row.items() if n != "volumes"))


if __name__ == "__main__":
    main()
