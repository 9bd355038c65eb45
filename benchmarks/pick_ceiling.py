"""How much better could the correction loop's picks be? The loop played with the walk alone.

On the left atrium the correction loop's output after five rounds is, within 0.1 point, the
walk (:func:`src_models.propagation.propagation_prior`) of the slices it picked (stop 43), so
the suggestion strategy decides what it reaches. This replays the loop without training, in
seconds per round instead of minutes: start from ``k0`` slices of the protocol, and in each of
``rounds`` rounds pick one slice, add its true labels, walk again, score the whole volume
(Dice over every slice, as ``correction_loop.py``). Strategies:

- ``strided`` and ``strided-then-uncertainty-distance`` (the default): as
  :func:`src_models.suggest.suggest`, fed with the walk's uncertainty (1 - its largest class
  probability, mean per slice) and its predicted extent;
- ``oracle``: greedy with the truth: of the candidate slices between the labeled ones (every
  slice in gaps of up to 6 slices, every second one in wider gaps), the one whose walk scores
  best. To keep it affordable on the left atrium (a walk of a whole volume takes ~11 s),
  each candidate is walked only over its gap (the slab between the two labeled slices around
  it, both counted as ends), the rest of the volume kept as it was: a slice labeled inside a
  gap seeds the slab on both sides of it, so the slab is what it changes (the walk's edge
  weight follows the labeled slices' spacing, so the slab's walk is close to, not equal to,
  the whole one's). The picked slices are then walked over the whole volume and scored
  exactly. A ceiling for one-slice-at-a-time choices (a greedy one, not the optimum over
  sets of five). With the ends protocol only: strictly inside, the slices that matter most
  lie beyond the outer labeled ones, outside every gap (it ran there once and scored under
  ``strided``).

Beside them: shape interpolation with 10 slices evenly spaced with the ends (the issue's goal
line), the walk of those 10, and the walk of ``k0 + rounds`` evenly spaced slices (what a
user who knew the budget in advance would label).

Usage::

    python pick_ceiling.py --dataset hippocampus --cases 0 1 2 3 4 --protocol ends
    python pick_ceiling.py --report
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import RESULTS, write_json  # noqa: E402
from _protocol import PROTOCOLS, load_case, protocol_slices, sparse, whole_dice  # noqa: E402

from src_models.interpolation import interpolate_volume  # noqa: E402
from src_models.propagation import propagation_prior  # noqa: E402
from src_models.suggest import suggest  # noqa: E402

FOLDER = RESULTS / "pick_ceiling"
STRATEGIES = ("strided", "strided-then-uncertainty-distance", "oracle")
#: gaps wider than this are searched every second slice by the oracle
DENSE_GAP = 6


def walk(image, truth, axis, done, k, ends) -> np.ndarray:
    """The walk's class probabilities (K, Z, Y, X) seeded by ``truth``'s slices ``done``."""
    return propagation_prior(image, sparse(truth, axis, done), done, axis, k, ends)


def _along(axis: int, part: slice) -> tuple:
    index = [slice(None)] * 3
    index[axis] = part
    return tuple(index)


def oracle_pick(probs, image, truth, axis, done, k) -> int | None:
    """The candidate slice whose walk over its gap gives the best whole-volume Dice."""
    labels = probs.argmax(0)
    best, pick = -1.0, None
    for a, b in zip(done[:-1], done[1:], strict=True):
        step = 2 if b - a > DENSE_GAP else 1
        slab = _along(axis, slice(a, b + 1))
        for c in range(a + 1, b, step):
            seeds = sparse(truth, axis, [a, c, b])[slab]
            local = propagation_prior(image[slab], seeds, [0, c - a, b - a], axis, k, True)
            trial = labels.copy()
            trial[slab] = local.argmax(0)
            score = whole_dice(trial, truth)
            if score > best:
                best, pick = score, c
    return pick


def next_pick(strategy, probs, image, truth, axis, done, k, ends) -> int | None:
    if strategy == "oracle":
        return oracle_pick(probs, image, truth, axis, done, k)
    others = tuple(a for a in range(3) if a != axis)
    uncertainty = (1.0 - probs.max(0)).mean(axis=others)
    structure = probs.argmax(0).astype(bool).any(axis=others)
    picks = suggest(done, truth.shape[axis], uncertainty, structure, 1, strategy, ends)
    return picks[0].index if picks else None


def replay(strategy, image, truth, axis, start, k, ends, rounds) -> dict:
    """Dice after each round (round 0: the ``start`` slices) and the slices labeled at the end."""
    done = list(start)
    probs = walk(image, truth, axis, done, k, ends)
    curve = [whole_dice(probs.argmax(0), truth)]
    for _ in range(rounds):
        pick = next_pick(strategy, probs, image, truth, axis, done, k, ends)
        if pick is None:
            break
        done = sorted(done + [pick])
        probs = walk(image, truth, axis, done, k, ends)
        curve.append(whole_dice(probs.argmax(0), truth))
    return {"curve": curve, "done": done}


def run_case(dataset, index, protocol, strategies, k0, rounds) -> dict:
    case, image, truth, axis = load_case(dataset, index)
    k, ends = int(truth.max()) + 1, protocol == "ends"
    ten = protocol_slices(truth, axis, 10, "ends")
    even = protocol_slices(truth, axis, k0 + rounds, protocol)
    entry = {
        "dataset": dataset,
        "case": case,
        "protocol": protocol,
        "interpolation_10": whole_dice(
            interpolate_volume(sparse(truth, axis, ten), ten, axis), truth
        ),
        "walk_10": whole_dice(walk(image, truth, axis, ten, k, True).argmax(0), truth),
        f"walk_{k0 + rounds}_even": whole_dice(
            walk(image, truth, axis, even, k, ends).argmax(0), truth
        ),
        "strategies": {},
    }
    start = protocol_slices(truth, axis, k0, protocol)
    for strategy in strategies:
        if strategy == "oracle" and not ends:
            continue  # candidates lie between labeled slices only: see the module's docstring
        entry["strategies"][strategy] = replay(strategy, image, truth, axis, start, k, ends, rounds)
        print(f"  {case} {strategy}: {entry['strategies'][strategy]['curve'][-1]:.4f}", flush=True)
    return entry


def _mean(entries: list[dict], get) -> str:
    values = [v for v in map(get, entries) if v is not None]
    return f"{np.mean(values):.3f}" if values else ""


def _final(strategy: str):
    """The Dice after the last round of ``strategy`` in an entry (None: not run there)."""
    return lambda entry: (entry["strategies"].get(strategy) or {}).get("curve", [None])[-1]


def report() -> str:
    """A markdown table: mean over volumes per dataset and protocol."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(FOLDER.glob("*.json")):
        entry = json.loads(path.read_text())
        groups.setdefault((entry["dataset"], entry["protocol"]), []).append(entry)
    lines = [
        "| dataset, protocol (volumes) | interpolation, 10 | walk, 10 | walk, 8 even "
        "| strided | default | greedy oracle |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (dataset, protocol), group in sorted(groups.items()):
        # the oracle ran on some volumes only: those are a row of their own
        with_oracle = [e for e in group if "oracle" in e["strategies"]]
        others = [e for e in group if "oracle" not in e["strategies"]]
        for entries, which in ((with_oracle, "with the oracle"), (others, "")):
            if not entries:
                continue
            mean = partial(_mean, entries)
            lines.append(
                f"| {dataset}, {protocol} ({len(entries)}{', ' + which if which else ''}) "
                f"| {mean(lambda e: e['interpolation_10'])} "
                f"| {mean(lambda e: e['walk_10'])} | {mean(lambda e: e.get('walk_8_even'))} "
                + "".join(f"| {mean(_final(s))} " for s in STRATEGIES)
                + "|"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("la", "hippocampus"), default="hippocampus")
    parser.add_argument("--cases", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--protocol", choices=PROTOCOLS, default="ends")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--k0", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        print(report())
        return
    FOLDER.mkdir(parents=True, exist_ok=True)
    for index in args.cases:
        entry = run_case(args.dataset, index, args.protocol, args.strategies, args.k0, args.rounds)
        path = FOLDER / f"{args.dataset}__{entry['case']}__{args.protocol}.json"
        if path.exists():  # strategies run earlier on the same volume are kept
            kept = json.loads(path.read_text())["strategies"]
            entry["strategies"] = {**kept, **entry["strategies"]}
        write_json(path, entry)


if __name__ == "__main__":
    main()
