"""The correction loop with a simulated user (issue 20): does "Next slice" save work?

Start from k0 labeled slices (``ends`` or ``inside``, ``benchmarks/_protocol.py``) and train
the default recipe for T minutes (round 0, trained once and shared by every arm); then R
rounds of: pick the next slice with a strategy (:mod:`src_models.suggest`), "correct" it
from the ground truth, continue training T minutes, score the whole volume (the product's
output: the network fused with the propagation of the labels so far). Two kinds of
correction:

- ``slice``: the whole slice becomes labeled (the truth on every voxel);
- ``region``: only where the prediction is wrong or the model is unsure (discrepancy > 0.5,
  or confidence < 0.8 for one-network methods) gets the truth; the rest of the slice stays
  unannotated (the ignore label), as the review dock's "only what I painted". With
  ``--brush R`` the user paints blobs, as with napari's round brush: the region closed and
  widened by a disk of R pixels (so it also covers a margin of correct voxels on both sides
  of each repainted edge); every voxel of the blob counts as painted.

Each round records Dice, the voxels the user painted, and the minutes. Reference rows:
interpolation and propagation given the same slices each round, interpolation and
propagation with 10 slices of the protocol, and a run trained from scratch on the final
slices of ``strided``/``slice`` for as long as the loop trained ((R + 1) x T minutes). On the
``ends`` protocol the simulated user says the outer labeled slices are the structure's ends
(``--ends-labeled``: nothing is propagated or suggested beyond them; ``--no-ends-labeled``
to leave it off).

The rounds in which every arm picks the same slice and corrects it alike (e.g. ``strided``
and ``strided-then-uncertainty-distance`` until the latter switches) are played once, in the
main process with ``--threads`` threads, and every arm continues from there: the arms differ
only where their choices do, not by the noise of training the same slices twice. Then the
arms run side by side, one per worker process with ``--threads`` torch threads each
(default: 2 workers x 1 thread on a 2-core machine, so the cores are never oversubscribed):

    python benchmarks/correction_loop.py --dataset hippocampus --cases 0 1 2 --minutes 1
    python benchmarks/correction_loop.py --report

Results: one JSON per (dataset, case, protocol) in ``benchmarks/results/correction_loop/``;
``--report`` prints the means over volumes and draws ``docs/images/correction_loop.png``.
``--tag NAME --note TEXT`` keeps a variant's runs apart (in ``correction_loop/NAME/``, e.g.
after a change of the product, on fewer arms), reported after the main table.
``--keep-probabilities DIR`` saves each arm's network and prior probabilities after its last
round, for ``fusion_variants.py`` to score other fusions of them without training.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, ROOT, machine, write_json
from _protocol import PROTOCOLS, load_case, protocol_slices, sparse, whole_dice
from scipy import ndimage

from src_models.area_profile import volume_area_profile
from src_models.data.label_values import IGNORE
from src_models.inference import predict_volume
from src_models.interpolation import interpolate_volume
from src_models.propagation import propagate_volume, propagation_prior
from src_models.recipe import RunRecipe, build_run
from src_models.suggest import STRATEGIES, suggest
from src_models.training import load_model, save_model, train

FOLDER = RESULTS / "correction_loop"
PLOT = ROOT / "docs" / "images" / "correction_loop.png"
KINDS = ("slice", "region")
#: the arm whose final slices the from-scratch run and the zero-training rows are given
REFERENCE_ARM = "strided/slice"
#: slices of the "interpolation with 10 slices" reference (the issue's goal line)
REFERENCE_K = 10


def uncertainty_map(pred) -> np.ndarray:
    if "discrepancy" in pred.maps:
        return pred.maps["discrepancy"]
    return 1.0 - pred.maps["confidence"]


def train_for(recipe, image, labels, done, bundle, k):
    """Train ``recipe.minutes`` more (a new model when ``bundle`` is None)."""
    run = build_run(recipe, [image], [labels], [done], resume=bundle, num_classes=k)
    config = run.config
    if bundle is not None:
        config.iterations = run.bundle.iteration + 1  # minutes decide; continue counts on
    train(run.bundle, run.sampler, config)
    return run.bundle


def predict(bundle, image, labels, done, axis, k, ends):
    prior = propagation_prior(image, labels, done, axis, k, ends)
    maps = ["discrepancy"] if "discrepancy" in bundle.method.map_names else ["confidence"]
    areas = volume_area_profile(labels, done, axis)  # as the product (stop 37 on)
    return predict_volume(bundle, image, maps=maps, prior=prior, areas=areas)


def brush_blobs(region: np.ndarray, radius: int) -> np.ndarray:
    """What a round brush of ``radius`` pixels paints to cover ``region`` (2D bool): the
    region closed (gaps narrower than the brush filled) and widened by the brush."""
    if radius <= 0 or not region.any():
        return region
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = yy**2 + xx**2 <= radius**2
    closed = ndimage.binary_closing(np.pad(region, radius), disk)[radius:-radius, radius:-radius]
    return ndimage.binary_dilation(closed, disk)  # a closing keeps every voxel of the region


def correct(labels, truth, pred, axis, pick, kind, brush: int = 0) -> tuple[int, int]:
    """The simulated user corrects slice ``pick`` of ``labels`` in place; returns the
    voxels painted and the voxels the prediction had wrong there (what a user repaints who
    *accepts* the predicted slice first, then fixes it: the whole slice's truth for that).
    ``brush``: the region painted as blobs of a round brush of that radius (0: voxel by
    voxel)."""
    index = [slice(None)] * 3
    index[axis] = pick
    index = tuple(index)
    wrong = int((pred.labels[index] != truth[index]).sum())
    if kind == "slice":
        labels[index] = truth[index]
        return int(truth[index].size), wrong
    unsure = uncertainty_map(pred)
    threshold = 0.5 if "discrepancy" in pred.maps else 0.2
    region = (pred.labels[index] != truth[index]) | (unsure[index] > threshold)
    region = brush_blobs(region, brush)
    labels[index] = np.where(region, truth[index].astype(np.int64), IGNORE)
    return int(region.sum()), wrong


def score_round(bundle, image, truth, labels, done, axis, k, ends, r, painted, wrong):
    """The product's output after round ``r`` and the round's row of the results (its
    ``minutes`` for the caller to fill in)."""
    pred = predict(bundle, image, labels, done, axis, k, ends)
    row = {
        "round": r,
        "labeled": list(done),
        "dice": whole_dice(pred.labels, truth),
        "painted_voxels": painted,
        "wrong_voxels": wrong,
        "minutes": None,
        "iteration": bundle.iteration,
    }
    return pred, row


def next_pick(pred, done, axis, strategy, ends) -> int | None:
    """The slice ``strategy`` suggests next from the prediction ``pred`` (None: none left)."""
    others = tuple(a for a in range(3) if a != axis)
    score = uncertainty_map(pred).mean(axis=others)
    structure = pred.labels.astype(bool).any(axis=others)
    picks = suggest(done, pred.labels.shape[axis], score, structure, 1, strategy, ends)
    return picks[0].index if picks else None


def loop(task: dict) -> dict:
    """One simulated user (one arm), in a worker: continues the model ``task['start']``
    from the state after the rounds every arm played alike (:func:`shared_rounds`)."""
    torch.set_num_threads(task["threads"])
    _, image, truth, axis = load_case(task["dataset"], task["index"])
    k, ends, rounds = int(truth.max()) + 1, task["ends"], task["rounds"]
    labels, done = np.array(task["labels"], np.int64), list(task["labeled"])
    rows, painted, wrong = list(task["rows"]), task["painted"], task["wrong"]
    recipe = RunRecipe(axis=axis, minutes=task["minutes"], seed=task["seed"], ends_labeled=ends)
    bundle, pred = load_model(task["start"]), task["pred"]  # the last shared round's
    t0 = time.perf_counter()
    for r in range(len(rows), rounds + 1):
        pick = next_pick(pred, done, axis, task["strategy"], ends)
        if pick is None:  # every slice between the ends is labeled
            break
        voxels, errors = correct(labels, truth, pred, axis, pick, task["kind"], task["brush"])
        painted, wrong = painted + voxels, wrong + errors
        done = sorted(set(done) | {pick})
        bundle = train_for(recipe, image, labels, done, bundle, k)
        pred, row = score_round(
            bundle, image, truth, labels, done, axis, k, ends, r, painted, wrong
        )
        row["minutes"] = task["start_minutes"] + (time.perf_counter() - t0) / 60
        rows.append(row)
        print(f"    {task['arm']} round {r}: Dice {row['dice']:.4f}", flush=True)
    if task.get("keep"):
        keep_probabilities(task, len(rows) - 1, bundle, image, labels, done, axis, k)
    return {"rounds": rows, "threads": task["threads"]}


def keep_probabilities(task: dict, r: int, bundle, image, labels, done, axis, k) -> None:
    """Save the arm ``task``'s network probabilities (no smoothing, no prior) and the
    propagation prior of the labels ``done`` after round ``r``, named as ``annotation_effort.py
    --keep-probabilities`` names its files (the arm for the method, the round for the budget)."""
    net = predict_volume(bundle, image, maps=(), return_probabilities=True, smoothing=0)
    prior = propagation_prior(image, labels, done, axis, k, task["ends"])
    arm = task["arm"].replace("/", "-")
    np.savez_compressed(
        f"{task['keep']}__k{len(done)}__{arm}__round{r}.npz",
        model=net.probabilities.astype(np.float16),
        prior=prior.astype(np.float16),
        labeled=np.asarray(done),
        axis=axis,
    )


def shared_rounds(common: dict, arms: list[tuple[str, str]], bundle, image, truth, axis) -> dict:
    """Play the rounds in which every arm picks the same slice and corrects it alike (the
    same state: one run, not one per arm, so the arms differ only where their choices do;
    e.g. ``strided-then-uncertainty-distance`` and ``strided`` up to its switch). Returns
    the state the arms continue from (``labels``, ``labeled``, ``rows``, ``painted``,
    ``wrong``, ``start_minutes``, the last round's prediction ``pred``) and the model in
    ``bundle``."""
    k, ends, rounds = int(truth.max()) + 1, common["ends"], common["rounds"]
    labels = sparse(truth, axis, common["labeled"]).astype(np.int64)
    done, rows, painted, wrong = list(common["labeled"]), [], 0, 0
    recipe = RunRecipe(axis=axis, minutes=common["minutes"], seed=common["seed"], ends_labeled=ends)
    kinds = {kind for _, kind in arms}
    t0 = time.perf_counter()
    for r in range(rounds + 1):
        pred, row = score_round(
            bundle, image, truth, labels, done, axis, k, ends, r, painted, wrong
        )
        row["minutes"] = common["start_minutes"] + (time.perf_counter() - t0) / 60
        rows.append(row)
        print(f"    shared round {r}: Dice {row['dice']:.4f}", flush=True)
        if r == rounds or len(kinds) > 1:
            break
        picks = {next_pick(pred, done, axis, s, ends) for s, _ in arms}
        if len(picks) > 1 or None in picks:
            break
        pick, kind = picks.pop(), next(iter(kinds))
        voxels, errors = correct(labels, truth, pred, axis, pick, kind, common["brush"])
        painted, wrong = painted + voxels, wrong + errors
        done = sorted(set(done) | {pick})
        bundle = train_for(recipe, image, labels, done, bundle, k)
    state = {"labels": labels, "labeled": done, "rows": rows, "painted": painted, "pred": pred}
    return {**state, "wrong": wrong, "start_minutes": rows[-1]["minutes"], "bundle": bundle}


def from_scratch(task: dict) -> dict:
    """A new run on ``task['labeled']`` (whole slices) for ``task['minutes']``."""
    torch.set_num_threads(task["threads"])
    _, image, truth, axis = load_case(task["dataset"], task["index"])
    k, done = int(truth.max()) + 1, task["labeled"]
    labels = sparse(truth, axis, done).astype(np.int64)
    recipe = RunRecipe(
        axis=axis, minutes=task["minutes"], seed=task["seed"], ends_labeled=task["ends"]
    )
    bundle = train_for(recipe, image, labels, done, None, k)
    pred = predict(bundle, image, labels, done, axis, k, task["ends"])
    return {
        "labeled": done,
        "minutes": task["minutes"],
        "iteration": bundle.iteration,
        "dice": whole_dice(pred.labels, truth),
        "threads": task["threads"],
    }


def zero_training(image, truth, axis, done, ends) -> dict:
    given = sparse(truth, axis, done)
    interp = interpolate_volume(given, done, axis)
    prop = propagate_volume(image, given, done, axis, ends_labeled=ends)
    return {"interpolation": whole_dice(interp, truth), "propagation": whole_dice(prop, truth)}


def run_arms(pool, workers: int, tasks: dict, scratch_task) -> tuple[dict, dict | None]:
    """The arms ``tasks``, ``workers`` at a time; the run from scratch (``scratch_task``
    on the reference arm's final slices, or None) takes the first free worker once the reference
    arm has ended, ahead of the arms still waiting, so no core idles while it runs alone."""
    waiting, running, results, scratch = list(tasks), {}, {}, None
    while waiting or running:
        while waiting and len(running) < workers:
            name = waiting.pop(0)
            running[pool.submit(loop, tasks[name])] = name
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            name = running.pop(future)
            if name == "from scratch":
                scratch = future.result()
                continue
            results[name] = future.result()
            if name == REFERENCE_ARM and scratch_task is not None:
                final = results[name]["rounds"][-1]["labeled"]
                task = {**scratch_task, "labeled": final}
                running[pool.submit(from_scratch, task)] = "from scratch"
    return results, scratch


def benchmark(args) -> None:
    folder_out = FOLDER / args.tag if args.tag else FOLDER
    folder_out.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    arms = [(s, kind) for s in args.strategies for kind in args.kinds]
    if args.arms:
        arms = [tuple(arm.split("/")) for arm in args.arms]
    for index in args.cases:
        case, image, truth, axis = load_case(args.dataset, index)
        k = int(truth.max()) + 1
        for protocol in args.protocol:
            labeled = protocol_slices(truth, axis, args.k0, protocol)
            ends = protocol == "ends" and not args.no_ends_labeled
            path = folder_out / f"{args.dataset}__{case}__{protocol}.json"
            entry = {
                "dataset": args.dataset,
                "case": case,
                "protocol": protocol,
                "k0": labeled,
                "ends_labeled": ends,
                "minutes_per_round": args.minutes,
                "brush": args.brush,
                "machine": machine(),
                "loops": {},
            }
            if args.tag:
                entry.update(tag=args.tag, note=args.note)
            print(f"{args.dataset}/{case}/{protocol}: round 0 on {labeled}", flush=True)
            torch.set_num_threads(args.threads)
            recipe = RunRecipe(axis=axis, minutes=args.minutes, seed=args.seed, ends_labeled=ends)
            labels = sparse(truth, axis, labeled).astype(np.int64)
            t0 = time.perf_counter()
            start = train_for(recipe, image, labels, labeled, None, k)
            start_minutes = (time.perf_counter() - t0) / 60
            common = {
                "dataset": args.dataset, "index": index, "labeled": labeled, "ends": ends,
                "rounds": args.rounds, "minutes": args.minutes, "seed": args.seed,
                "start_minutes": start_minutes, "threads": args.threads, "brush": args.brush,
            }  # fmt: skip
            state = shared_rounds(common, arms, start, image, truth, axis)
            entry["shared_rounds"] = len(state["rows"]) - 1
            with tempfile.TemporaryDirectory() as folder:
                save_model(state.pop("bundle"), folder)
                scratch_base = dict(common)  # the run from scratch starts from nothing
                common.update(state, start=folder)
                tasks = {
                    f"{s}/{kind}": {**common, "strategy": s, "kind": kind, "arm": f"{s}/{kind}"}
                    for s, kind in arms
                }
                if args.keep_probabilities:
                    args.keep_probabilities.mkdir(parents=True, exist_ok=True)
                    for task in tasks.values():
                        task["keep"] = str(args.keep_probabilities / path.stem)
                scratch_task = None
                if not args.no_scratch:  # on the final slices, as long as the loop trained
                    minutes = args.minutes * (args.rounds + 1)
                    scratch_task = {**scratch_base, "minutes": minutes}
                with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
                    loops, scratch = run_arms(pool, args.workers, tasks, scratch_task)
                entry["loops"] = {name: loops[name] for name in tasks}
                if scratch is not None:
                    entry["from_scratch"] = scratch
            zero: dict[tuple, dict] = {}  # the shared rounds' slices are every arm's
            for result in entry["loops"].values():
                slices = [tuple(row["labeled"]) for row in result["rounds"]]
                for done in slices:
                    if done not in zero:
                        zero[done] = zero_training(image, truth, axis, list(done), ends)
                result["zero_training"] = [zero[done] for done in slices]
            ten = protocol_slices(truth, axis, REFERENCE_K, protocol)
            entry["reference"] = {"labeled": ten, **zero_training(image, truth, axis, ten, ends)}
            write_json(path, entry)


# -- report ----------------------------------------------------------------------------------
def load_entries(tag: str | None = None) -> list[dict]:
    """The runs of the main table, or of the variant ``tag``."""
    folder = FOLDER / tag if tag else FOLDER
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def newest_entries(tags: list[str]) -> list[dict]:
    """The runs of the variants ``tags``, each (dataset, case, protocol) from the first tag
    that has it: e.g. ``stop34 stop32`` for stop 34's re-runs and stop 32's other groups."""
    out, seen = [], set()
    for tag in tags:
        for e in load_entries(tag):
            key = (e["dataset"], e["case"], e["protocol"])
            if key not in seen:
                seen.add(key)
                out.append(e)
    return out


def variant_tags() -> list[str]:
    return sorted(p.name for p in FOLDER.iterdir() if p.is_dir()) if FOLDER.is_dir() else []


def groups(entries: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Complete runs (with the 10-slice reference) by (dataset, protocol)."""
    out: dict[tuple[str, str], list[dict]] = {}
    for e in entries:
        if "reference" in e:
            out.setdefault((e["dataset"], e["protocol"]), []).append(e)
    return out


def mean_rounds(series: list[list[float]]) -> list[float]:
    """Per round, the mean over volumes (the rounds every volume has)."""
    n = min(len(values) for values in series)
    return [float(np.mean([values[r] for values in series])) for r in range(n)]


def summary(group: list[dict]) -> dict:
    """Means over the volumes of one (dataset, protocol): each arm's Dice by round and voxels
    painted, the references."""
    out: dict = {"volumes": len(group), "arms": {}}
    for arm in sorted(set.intersection(*(set(e["loops"]) for e in group))):
        last = [e["loops"][arm]["rounds"][-1] for e in group]
        out["arms"][arm] = {
            "dice": mean_rounds([[r["dice"] for r in e["loops"][arm]["rounds"]] for e in group]),
            "painted": float(np.mean([row["painted_voxels"] for row in last])),
            # accept the predicted slice, then fix it (recorded from this stop's runs on)
            "wrong": float(np.mean([row.get("wrong_voxels", np.nan) for row in last])),
            "minutes": float(np.mean([row["minutes"] for row in last])),
        }
    if REFERENCE_ARM in out["arms"]:
        for name in ("interpolation", "propagation"):
            zero = [e["loops"][REFERENCE_ARM]["zero_training"] for e in group]
            out[name] = mean_rounds([[z[name] for z in rows] for rows in zero])
    for name in ("interpolation", "propagation"):
        out[f"{name}_10"] = float(np.mean([e["reference"][name] for e in group]))
    scratch = [e["from_scratch"]["dice"] for e in group if "from_scratch" in e]
    if len(scratch) == len(group):
        out["from_scratch"] = float(np.mean(scratch))
    return out


def goal_lines(s: dict) -> list[str]:
    """Issue 20's goals, measured / goal, from one (dataset, protocol) summary."""
    arms, out = s["arms"], []
    strided = arms.get("strided/slice")
    for arm, row in arms.items():
        if strided is None or not arm.endswith("/slice") or arm == "strided/slice":
            continue
        rounds = list(zip(row["dice"], strided["dice"], strict=False))
        wins = sum(a >= b for a, b in rounds[1:])
        margins = [100 * (a - b) for a, b in rounds[1:]]
        worst = int(np.argmin(margins)) if margins else 0
        out.append(
            f"{arm} ≥ strided/slice at {wins} of {len(rounds) - 1} rounds "
            f"(after round {len(rounds) - 1}: {row['dice'][-1]:.3f} vs {strided['dice'][-1]:.3f}"
            + (f"; lowest {margins[worst]:+.2f} points, round {worst + 1})" if margins else ")")
        )
    for strategy in sorted({arm.split("/")[0] for arm in arms}):
        whole, region = arms.get(f"{strategy}/slice"), arms.get(f"{strategy}/region")
        if whole is None or region is None:
            continue
        gain = whole["dice"][-1] - whole["dice"][0]
        share = (region["dice"][-1] - region["dice"][0]) / gain if gain > 0 else float("nan")
        painted = region["painted"] / whole["painted"] if whole["painted"] else float("nan")
        out.append(
            f"{strategy}: region corrections, the rest ignored, reach {share:.0%} of the "
            f"whole-slice gain painting {painted:.0%} of its voxels (goal ≥ 80 % at ≤ 30 %)"
        )
        if not np.isnan(whole["wrong"]) and whole["painted"]:
            # the dock's default Accept slice: repaint what is wrong, the rest is accepted as
            # predicted; the labels are then the whole slice's truth, so is the Dice
            out.append(
                f"{strategy}: region corrections, the rest accepted as predicted, reach 100 % "
                f"of the whole-slice gain (the same labels) painting "
                f"{whole['wrong'] / whole['painted']:.0%} of its voxels"
            )
    for arm, row in arms.items():
        if arm.endswith("/slice"):
            out.append(
                f"{arm} after {len(row['dice']) - 1} rounds {row['dice'][-1]:.3f} vs "
                f"interpolation with {REFERENCE_K} slices {s['interpolation_10']:.3f} (goal ≥)"
            )
    return out


def report_lines() -> list[str]:
    lines = []
    for tag in [None, *variant_tags()]:
        for (dataset, protocol), group in sorted(groups(load_entries(tag)).items()):
            lines += group_lines(dataset, protocol, group)
    return lines


def group_lines(dataset: str, protocol: str, group: list[dict]) -> list[str]:
    s, lines = summary(group), []
    ends = ", --ends-labeled" if group[0].get("ends_labeled") else ""
    variant = f" [{group[0]['tag']}]" if group[0].get("tag") else ""
    lines.append(f"{dataset}, {protocol}{ends}{variant}: {s['volumes']} volumes")
    for arm, row in s["arms"].items():
        dice = " → ".join(f"{d:.3f}" for d in row["dice"])
        wrong = "" if np.isnan(row["wrong"]) else f" (wrong before: {row['wrong']:.0f})"
        lines.append(f"  {arm:32s} {dice}  painted {row['painted']:.0f}{wrong}")
    for name in ("interpolation", "propagation"):
        if name in s:
            lines.append(
                f"  {name + ' (same slices)':32s} " + " → ".join(f"{d:.3f}" for d in s[name])
            )
    shared = [e["shared_rounds"] for e in group if "shared_rounds" in e]
    if shared:  # runs since stop 32
        lines.append(
            "  rounds every arm played alike, once (per volume): "
            + ", ".join(str(n) for n in shared)
        )
    lines += [f"  {goal}" for goal in goal_lines(s)]
    scratch = s.get("from_scratch", float("nan"))
    lines.append(
        f"  10 slices: interpolation {s['interpolation_10']:.3f}, propagation "
        f"{s['propagation_10']:.3f}; from scratch on the final slices "
        + ("not run" if np.isnan(scratch) else f"{scratch:.3f}")
    )  # fmt: skip
    return lines


def plot_path(tags: str | list[str] | None = None):
    """Where the plot of the main runs (or of the variants ``tags``) is drawn."""
    if not tags:
        return PLOT
    name = "+".join([tags] if isinstance(tags, str) else tags)
    return PLOT.with_name(f"{PLOT.stem}_{name}{PLOT.suffix}")


def plot(tags: list[str] | None = None) -> None:
    """Dice per round of each arm, one panel per (dataset, protocol), of the main runs or
    of the variants ``tags`` (several: each group from the first that has it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(groups(newest_entries(tags) if tags else load_entries()).items())
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, ((dataset, protocol), group) in zip(axes[0], panels, strict=True):
        s = summary(group)
        for arm, row in s["arms"].items():
            style = "-" if arm.endswith("/slice") else ":"  # one colour per strategy
            color = f"C{STRATEGIES.index(arm.split('/')[0]) + 1}"
            ax.plot(
                range(len(row["dice"])), row["dice"], style, color=color, marker="o", ms=3,
                label=arm,
            )  # fmt: skip
        for name in ("interpolation", "propagation"):
            if name in s:
                ax.plot(
                    range(len(s[name])),
                    s[name],
                    "--",
                    color="grey" if name == "interpolation" else "k",
                    lw=1,
                    label=f"{name}, same slices",
                )
        ax.axhline(s["interpolation_10"], color="grey", lw=0.8, label="interpolation, 10 slices")
        ax.set_title(f"{dataset}, {protocol} ({s['volumes']} volumes)")
        ax.set_xlabel("round (one corrected slice, 1 min of training each)")
        ax.set_ylabel("whole-volume Dice")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    path = plot_path(tags)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


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
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=[f"{s}/{kind}" for s in STRATEGIES for kind in KINDS],
        help="these arms instead of every --strategies x --kinds pair",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--brush",
        type=int,
        default=0,
        help="region corrections painted as blobs of a round brush of this radius (pixels)",
    )
    parser.add_argument("--workers", type=int, default=2, help="arms run side by side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per arm")
    parser.add_argument("--no-scratch", action="store_true", help="skip the from-scratch run")
    parser.add_argument("--tag", help="a variant: its runs saved apart, in correction_loop/TAG/")
    parser.add_argument("--note", default="", help="what the variant changes (with --tag)")
    parser.add_argument(
        "--keep-probabilities",
        type=Path,
        help="folder to save each arm's network and prior probabilities in, after its last round",
    )
    parser.add_argument("--report", action="store_true")
    parser.add_argument(
        "--plot-variant",
        metavar="TAG",
        nargs="+",
        help="also draw the variant TAG's plot (README's); several: each (dataset, protocol) "
        "from the first that ran it",
    )
    args = parser.parse_args()
    if not args.report:
        benchmark(args)
    print("\n".join(report_lines()))
    plot()
    if args.plot_variant:
        plot(args.plot_variant)


if __name__ == "__main__":
    main()
