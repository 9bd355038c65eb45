"""Annotation effort: Dice against the number of labeled slices k, with and without training.

The question a user asks: is training worth the wait, or should I label two more slices?
For each volume, protocol (``ends``: the first and last slice of the structure and k - 2
between, what Slicer / ITK-SNAP users do; ``inside``: k slices strictly inside, see
``benchmarks/_protocol.py``) and k, on the non-labeled slices (3D Dice, classes averaged):

- zero-training rows: ``interpolation`` (shape-based, "fill between slices"),
  ``random_walker`` (skimage's, beta 130, seeded by the labeled slices, restricted to the
  labeled range: the issue's baseline, its own mask) and ``propagation`` (the product's:
  beta 400 or lower between close labeled slices, reaching 3 slices beyond the outer
  labeled ones (from stop 40 0.7 of their mean spacing), blended with the flow, its mask
  leaning towards the labeled areas;
  :mod:`src_models.propagation`), with seconds;
- each trained method, one run of ``max(--budgets)`` wall-clock minutes with the product's
  defaults (the recipe the CLI and the plugin use); the weights are copied when the clock
  passes each budget and scored after the run: ``model`` (the network alone), ``output``
  (what the product hands back: the network fused with the propagation and smoothed
  across slices, :func:`predict_volume` ``prior=``; results before stop 28 have no
  ``smoothing`` key and were not smoothed; from stop 37 each slice between labeled ones
  leans towards their areas, ``areas=``, ``output_noarea`` the same weights without; from
  stop 38 the walk's edge weight follows the labeled slices' spacing, ``output_beta400`` the
  same weights fused with the walk at the fixed 400 of before) and
  ``output_lcc`` (its largest 3D component per
  class); ``--keep-probabilities DIR`` saves the network's and the prior's probabilities
  for ``fusion_variants.py``.

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
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, ROOT, machine, write_json
from _protocol import PROTOCOLS, load_case, protocol_slices, scored_dice, sparse

from src_models.area_profile import match_areas, volume_area_profile
from src_models.inference import DEFAULT_PRIOR_WEIGHT, predict_volume, prior_weight_for_fit
from src_models.interpolation import interpolate_volume
from src_models.method_choice import LONG_BUDGET_METHOD, SHORT_BUDGET_METHOD
from src_models.postprocess import largest_component_3d
from src_models.propagation import (
    DEFAULT_BETA,
    propagate_volume,
    propagation_prior,
    walk_beta,
)
from src_models.recipe import RunRecipe, build_run
from src_models.slice_smoothing import DEFAULT_SMOOTHING, smooth_across_slices
from src_models.training import train
from src_models.training.fit import labeled_fit, mean_slice_dice

FOLDER = RESULTS / "annotation_effort"
PLOT = ROOT / "docs" / "images" / "annotation_effort.png"


def zero_training(image, labels, axis, labeled) -> dict:
    """Dice and seconds of the three zero-training results."""
    given = sparse(labels, axis, labeled)
    k = int(labels.max()) + 1
    runs = {
        "interpolation": lambda: interpolate_volume(given, labeled, axis, k),
        # skimage's walk as a user runs it: its own mask (no area profile)
        "random_walker": lambda: propagate_volume(
            image,
            given,
            labeled,
            axis,
            k,
            beta=130.0,
            extend=0,
            flow_share=0.0,
            match_areas=False,
        ),
        "propagation": lambda: propagate_volume(image, given, labeled, axis, k),
        # the user said the outer labeled slices are the structure's ends (--ends-labeled)
        "propagation_ends": lambda: propagate_volume(
            image, given, labeled, axis, k, ends_labeled=True
        ),
    }
    rows = {}
    for name, run in runs.items():
        t = time.perf_counter()
        pred = run()
        rows[name] = {
            "dice": scored_dice(pred, labels, axis, labeled),
            "seconds": time.perf_counter() - t,
        }
    return rows


def predict_along_axis(bundle, image, **options):
    """``predict_volume`` of a multi-planar model along its own axis only."""
    planes, bundle.info["planes"] = bundle.info.get("planes"), 1
    try:
        return predict_volume(bundle, image, **options)
    finally:
        bundle.info["planes"] = planes


def trained(
    method, image, labels, axis, labeled, budgets, seed, overrides, separate, keep=None
) -> dict:
    """``method`` with the product's defaults; Dice at each budget: one run per budget
    (``separate``: what a user who sets that budget gets, its learning rate decayed to the
    end) or the weights of one run of the largest budget copied as the clock passes each.
    ``keep``: a file name prefix to save the network's and the prior's probabilities at each
    budget under (``--keep-probabilities``), to score other fusions later without training."""
    if not separate:
        return trained_run(method, image, labels, axis, labeled, budgets, seed, overrides, keep)
    result: dict = {"budgets": {}, "setup_seconds": [], "prior_seconds": [], "separate": True}
    for minutes in sorted(budgets):
        one = trained_run(method, image, labels, axis, labeled, [minutes], seed, overrides, keep)
        result["budgets"].update(one["budgets"])
        result["setup_seconds"].append(one["setup_seconds"])
        result["prior_seconds"].append(one["prior_seconds"])
    return result


def trained_run(method, image, labels, axis, labeled, budgets, seed, overrides, keep=None):
    """One run of ``method`` for ``max(budgets)`` minutes; Dice at each budget."""
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
    given = sparse(labels, axis, labeled)
    prior = propagation_prior(image, given, labeled, axis, k, recipe.ends_labeled)
    prior_seconds = time.perf_counter() - t
    # the same weights fused with the other propagation (stopping at / going beyond the ends)
    other = propagation_prior(image, given, labeled, axis, k, not recipe.ends_labeled)
    # the walk with the edge weight of every spacing before stop 38 (fixed, 400): the same
    # walk where the spacing already gives 400
    sharp = (
        prior
        if walk_beta(labeled) == DEFAULT_BETA
        else propagation_prior(image, given, labeled, axis, k, recipe.ends_labeled, DEFAULT_BETA)
    )
    # the mask leans towards the area the labeled slices say (stop 37 on)
    areas = volume_area_profile(given, labeled, axis)
    rows = {}
    for minutes, (iteration, elapsed, state) in sorted(snapshots.items()):
        bundle.method.load_state_dict(state, with_optimizers=False)
        # the network's own probabilities, then fused and smoothed as the product does
        net = dict(maps=(), return_probabilities=True, smoothing=0)
        model = predict_volume(bundle, image, **net).probabilities
        flipped = predict_volume(bundle, image, flips=True, **net).probabilities
        if keep is not None:
            np.savez_compressed(
                f"{keep}__{minutes:g}min.npz",
                model=model.astype(np.float16),
                prior=prior.astype(np.float16),
                labeled=np.asarray(labeled),
                axis=axis,
            )

        # the product's prior weight follows the network's fit on its labeled slices (the
        # trainer records it at the end of a run; a snapshot's is scored here alike: a
        # multi-planar network's along its axis, as the trainer looks at it)
        ids = model.argmax(0)
        if bundle.planes == 3:
            fit = labeled_fit(bundle.method, run.sampler)
            along_axis = predict_along_axis(bundle, image, **net).probabilities
        else:
            fit = mean_slice_dice(
                (np.take(ids, s, axis), np.take(labels, s, axis)) for s in labeled
            )
        weight = prior_weight_for_fit(fit)

        def fused(network, weight=weight, walk=prior, sigma=DEFAULT_SMOOTHING, profile=areas):
            blend = smooth_across_slices((1 - weight) * network + weight * walk, axis + 1, sigma)
            ids = blend.argmax(0)
            if profile is None:
                return ids
            slices = np.moveaxis(blend, axis + 1, 0)
            return np.moveaxis(match_areas(slices, np.moveaxis(ids, axis, 0), profile), 0, axis)

        def output(network, **variant):
            return scored_dice(fused(network, **variant), labels, axis, labeled)

        product = fused(model)
        rows[str(minutes)] = {
            "iteration": iteration,
            "elapsed": elapsed,
            "model": scored_dice(ids, labels, axis, labeled),
            "output": scored_dice(product, labels, axis, labeled),
            "output_lcc": scored_dice(largest_component_3d(product, k), labels, axis, labeled),
            "labeled_fit": fit,
            "prior_weight": weight,
            # variants of the output measured alongside (no smoothing across slices; weight
            # of the prior, the fixed one before stop 36 too; mirrored slices; the other
            # propagation)
            "output_w0.5": output(model, weight=DEFAULT_PRIOR_WEIGHT),
            "output_noarea": output(model, profile=None),
            "output_beta400": output(model, walk=sharp),
            "output_unsmoothed": output(model, sigma=0),
            "output_w0.3": output(model, weight=0.3),
            "output_w0.7": output(model, weight=0.7),
            "model_flips": scored_dice(flipped.argmax(0), labels, axis, labeled),
            "output_flips": output(flipped),
            "output_" + ("extended" if recipe.ends_labeled else "ends"): output(model, walk=other),
            "smoothing": DEFAULT_SMOOTHING,
        }
        if bundle.planes == 3:  # the network along its axis alone, and fused
            rows[str(minutes)]["planes"] = 3
            rows[str(minutes)]["model_axis"] = scored_dice(
                along_axis.argmax(0), labels, axis, labeled
            )
            rows[str(minutes)]["output_axis"] = output(along_axis)
    return {"budgets": rows, "setup_seconds": setup, "prior_seconds": prior_seconds}


def merged(saved: dict | None, result: dict) -> dict:
    """``result`` of a method, with the budgets of its ``saved`` runs it did not re-run when
    both are ``--separate`` runs of the same settings (one run per budget either way, so a
    5-minute run can join the 2-minute one of an earlier session); otherwise ``result``."""
    same = saved is not None and saved.get("separate") and result.get("separate")
    if not same or saved.get("overrides") != result.get("overrides"):
        return result
    out = {**result, "budgets": {**saved["budgets"], **result["budgets"]}}
    for key in ("setup_seconds", "prior_seconds"):
        out[key] = saved.get(key, []) + result[key]
    return out


def result_path(dataset: str, case: str, protocol: str, k: int):
    return FOLDER / f"{dataset}__{case}__{protocol}__k{k}.json"


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
                write_json(path, entry)
                for method in [] if args.zero_only else args.methods:
                    name = method + (f"+{args.tag}" if args.tag else "")
                    data = (image, labels, axis, labeled)
                    budgets = (args.budgets, args.seed, overrides, args.separate)
                    keep = None
                    if args.keep_probabilities:
                        args.keep_probabilities.mkdir(parents=True, exist_ok=True)
                        stem = f"{args.dataset}__{case}__{protocol}__k{k}__{name}"
                        keep = args.keep_probabilities / stem
                    result = trained(method, *data, *budgets, keep)
                    result["threads"] = torch.get_num_threads()
                    result["overrides"] = overrides
                    entry["methods"][name] = merged(entry["methods"].get(name), result)
                    curve = ", ".join(
                        f"{m} min: model {r['model']:.4f} output {r['output']:.4f} "
                        f"(it {r['iteration']})"
                        for m, r in result["budgets"].items()
                    )
                    print(f"  {name}: {curve}", flush=True)
                    write_json(path, entry)


def load_all() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(FOLDER.glob("*.json"))]


ZERO = ("interpolation", "random_walker", "propagation")
#: the tag of runs where the user said the outer labeled slices are the structure's ends
#: (``--overrides '{"ends_labeled": true}' --tag ends``: the CLI's --ends-labeled)
ENDS_TAG = "ends"
#: ... and the slices beyond them trained as background (``background_beyond_ends``, the
#: product's default with --ends-labeled since stop 33; the ``ends`` runs predate it)
ENDS_BACKGROUND_TAG = "endsbg"
#: ... and the propagation blended with the registration-guided interpolation (the
#: product's since stop 35; the zero-training columns of every row are re-run with it)
ENDS_FLOW_TAG = "flow"
#: ... and the prior's share in the fused output from the network's fit on its labeled
#: slices (the product's since stop 36; the flow only on slices of 64 pixels a side)
ENDS_FIT_TAG = "fitw"
#: ... and each slice's mask between labeled ones leaning towards the area they say
#: (:mod:`src_models.area_profile`, the product's since stop 37)
ENDS_AREA_TAG = "area"
#: ... and the walk's edge weight from the labeled slices' spacing
#: (:func:`src_models.propagation.walk_beta`, the product's since stop 38)
ENDS_BETA_TAG = "beta"
#: the summary table's row label of each of those tags
ENDS_ROWS = {
    ENDS_TAG: "ends, --ends-labeled (before stop 33)",
    ENDS_BACKGROUND_TAG: "ends, --ends-labeled, background beyond them (stops 33-34)",
    ENDS_FLOW_TAG: "ends, --ends-labeled, background beyond them, walk + flow (stop 35)",
    ENDS_FIT_TAG: "ends, --ends-labeled, background beyond them, walk + flow, prior's "
    "share from the fit (stop 36)",
    ENDS_AREA_TAG: "ends, --ends-labeled, background beyond them, walk + flow, prior's "
    "share from the fit, masks towards the labeled areas (stop 37)",
    ENDS_BETA_TAG: "ends, --ends-labeled, all of the above and the walk's edge weight from "
    "the labeled slices' spacing (stop 38's product, run in stop 39)",
}

#: the tags of runs strictly inside: stop 38's product (the walk's edge weight from the
#: labeled slices' spacing, :func:`src_models.propagation.walk_beta`) and its control,
#: stop 37's product (the fixed edge weight; a worktree of its commit, run right after)
INSIDE_ROWS = {
    "nobeta": "inside, stop 37's product (the walk's edge weight 400 at every spacing)",
    "beta": "inside, the walk's edge weight from the labeled slices' spacing (the default)",
}


#: the runs that are today's product, per (dataset, protocol) at k = 4: for 2 and 5 minutes,
#: the method row of what the default (``auto``) trains at that budget and the stop that
#: measured it (:func:`_walk_of` says which propagation it is fused with). Left atrium with
#: the ends: stop 36's supervised runs and stop 37's SDCL runs are today's product there (4
#: slices 17-20 apart keep the walk's edge weight at 400 and leave the areas out); the
#: hippocampus strictly inside at 5 minutes is an older recipe's ("before stop 33").
CURRENT = {
    ("hippocampus", "ends"): (("supervised+planes", "stop 41"), ("sdcl+beta", "stop 39")),
    ("hippocampus", "inside"): (("supervised+beta", "stop 38"), ("supervised", "before stop 33")),
    ("la", "ends"): (("supervised+planes", "stop 41"), ("sdcl+area", "stops 37, 39")),
    ("la", "inside"): (("supervised+reach", "stop 40"), ("supervised+reach", "stop 40")),
}
#: goal 3 (k labeled slices with the ends, the default at 5 minutes, against interpolation
#: with k + 2): the runs of each k beyond 4 and their stop
CURRENT_MORE_SLICES = {
    ("hippocampus", 5): ("sdcl+ends", "before stop 33"),
    ("hippocampus", 6): ("sdcl+ends", "before stop 33"),
    ("la", 5): ("sdcl+area", "stop 37"),
    ("la", 6): ("sdcl+area", "stop 37"),
}
CURRENT_K = 4
#: the goal's margin over the better zero-training baseline at each budget (issue 18)
GOAL_MARGINS = {"2.0": 0.03, "5.0": 0.05}
MINUTES_PLOT = ROOT / "docs" / "images" / "annotation_minutes.png"


def _walk_of(protocol: str) -> str:
    """The propagation a run of ``protocol`` is fused with: with the ends labeled the user
    ticks --ends-labeled and the walk stops at them."""
    return "propagation_ends" if protocol == "ends" else "propagation"


def _default_run(dataset: str, protocol: str, k: int, minutes: str) -> tuple[str, str]:
    """(method row, stop) of the default's runs with ``k`` slices at ``minutes``: k = 4 from
    :data:`CURRENT`, more slices (5 minutes only) from :data:`CURRENT_MORE_SLICES`; ``("",
    "")`` where none was run."""
    budgets = CURRENT.get((dataset, protocol))
    if budgets and k == CURRENT_K:
        return budgets[0 if minutes == "2.0" else 1]
    if protocol == "ends" and minutes == "5.0":
        return CURRENT_MORE_SLICES.get((dataset, k), ("", ""))
    return "", ""


def _runs_at(runs: list[dict], dataset: str, protocol: str, k: int) -> list[dict]:
    """The runs of ``runs`` on ``dataset`` with ``k`` slices of ``protocol``."""
    return [r for r in runs if (r["dataset"], r["protocol"], r["k"]) == (dataset, protocol, k)]


def _outputs(runs: list[dict], name: str, minutes: str) -> list[tuple[dict, float]]:
    """(run, output Dice) of the runs of ``runs`` with method row ``name`` at ``minutes``."""
    found = []
    for r in runs:
        out = r["methods"].get(name, {}).get("budgets", {}).get(minutes, {}).get("output")
        if out is not None:
            found.append((r, out))
    return found


def current_summary(runs: list[dict]) -> list[dict]:
    """Per (dataset, protocol) of :data:`CURRENT`, at k = :data:`CURRENT_K`: the means of the
    zero-training results and their seconds, of the default at 2 and 5 minutes (with the
    stop that measured them), the goals and the volumes meeting them."""
    rows = []
    for dataset, protocol in CURRENT:
        group = _runs_at(runs, dataset, protocol, CURRENT_K)
        if not group:
            continue
        walk = _walk_of(protocol)
        row = {"dataset": dataset, "protocol": protocol, "volumes": len(group), "zero": {}}
        for name, key in (
            ("interpolation", "interpolation"), ("random walker", "random_walker"),
            ("propagation", walk),
        ):  # fmt: skip
            zs = [r["zero_training"][key] for r in group if key in r["zero_training"]]
            row["zero"][name] = (_mean(z["dice"] for z in zs), max(z["seconds"] for z in zs))
        for minutes, margin in GOAL_MARGINS.items():
            name, stop = _default_run(dataset, protocol, CURRENT_K, minutes)
            found = _outputs(group, name, minutes)
            hits = sum(out >= _bar(r, margin) for r, out in found)
            row[minutes] = {
                "method": name.partition("+")[0],
                "stop": stop,
                "dice": _mean(out for _, out in found),
                "n": len(found),
                "goal": _mean(_bar(r, margin) for r, _ in found),
                "hits": hits,
            }
        more = {}
        for k in (CURRENT_K, 5, 6) if protocol == "ends" else ():
            name, stop = _default_run(dataset, protocol, k, "5.0")
            found = _outputs(_runs_at(runs, dataset, protocol, k), name, "5.0")
            plus_two = {
                r["case"]: r["zero_training"]["interpolation"]["dice"]
                for r in _runs_at(runs, dataset, protocol, k + 2)
            }
            paired = [(out, plus_two[r["case"]]) for r, out in found if r["case"] in plus_two]
            if paired:
                more[k] = {
                    "dice": _mean(o for o, _ in paired),
                    "interp_plus_two": _mean(i for _, i in paired),
                    "n": len(paired),
                    "stop": stop,
                }
        row["more_slices"] = more
        rows.append(row)
    return rows


def current_lines() -> list[str]:
    """The README's table: what the product gives today with 4 labeled slices, beside what
    the user gets without it, against the wall clock."""
    rows = current_summary(load_all())
    lines = [
        f"| dataset, protocol ({CURRENT_K} slices) | interpolation | random walker (skimage) "
        "| propagation (ours) | the default, 2 min (✓: mean ≥ goal) | the default, 5 min "
        "| goal 2 / 5 min (better baseline + 3 / + 5) | volumes at the goal, 2 / 5 min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        z = row["zero"]
        cells = []
        for name in ("interpolation", "random walker", "propagation"):
            dice, seconds = z[name]
            cells.append(f"{dice:.3f} ({'< 1' if seconds < 1 else f'{seconds:.0f}'} s)")
        two, five = row["2.0"], row["5.0"]
        for cell in (two, five):
            count = f", {cell['n']} volumes" if cell["n"] != row["volumes"] else ""
            mark = "✓" if cell["dice"] >= cell["goal"] else "✗"  # the mean against the goal's
            cells.append(f"**{cell['dice']:.3f}** {mark} ({cell['method']}, {cell['stop']}{count})")
        label = f"{row['dataset']}, {row['protocol']}" + (
            " (`--ends-labeled`)" if row["protocol"] == "ends" else ""
        )
        lines.append(
            f"| {label} | {' | '.join(cells)} | {two['goal']:.3f} / {five['goal']:.3f} | "
            f"{two['hits']}/{two['n']} / {five['hits']}/{five['n']} |"
        )
    lines += [
        "",
        "| dataset (ends labeled) | k | the default, 5 min | interpolation with k + 2 slices "
        "| volumes | measured |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        for k, m in sorted(row["more_slices"].items()):
            mark = "✓" if m["dice"] >= m["interp_plus_two"] else "✗"
            lines.append(
                f"| {row['dataset']} | {k} | {m['dice']:.3f} | {m['interp_plus_two']:.3f} {mark} "
                f"| {m['n']} | {m['stop']} |"
            )
    return lines


def plot_minutes() -> None:
    """Dice against wall-clock minutes at k = 4: what the user gets without training (at
    its seconds), the default at 2 and 5 minutes, and interpolation with 2 more slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_all()
    rows = current_summary(runs)
    fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 3.4), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        for name, marker in (("interpolation", "s"), ("random walker", "^"), ("propagation", "D")):
            dice, seconds = row["zero"][name]
            ax.plot([seconds / 60], [dice], marker=marker, linestyle="none", label=name)
        xs, ys, older = [0.0], [row["zero"]["propagation"][0]], []
        for minutes in ("2.0", "5.0"):
            cell = row[minutes]
            if cell["stop"].startswith("before"):  # an older recipe: a hollow point, off the line
                older.append((float(minutes), cell["dice"]))
            else:
                xs.append(float(minutes))
                ys.append(cell["dice"])
        ax.plot(xs, ys, marker="o", color="C3", label="the default (fused with the propagation)")
        if older:
            ax.plot(
                *zip(*older, strict=True),
                marker="o",
                linestyle="none",
                markerfacecolor="none",
                color="C3",
                label="the default, an older recipe",
            )
        plus_two = [
            r["zero_training"]["interpolation"]["dice"]
            for r in _runs_at(runs, row["dataset"], row["protocol"], CURRENT_K + 2)
        ]
        if plus_two:
            ax.axhline(
                np.mean(plus_two),
                color="grey",
                linestyle="--",
                label=f"interpolation, {CURRENT_K + 2} slices",
            )
        ax.set_title(f"{row['dataset']}, {row['protocol']} ({row['volumes']} volumes)", fontsize=9)
        ax.set_xlabel("minutes (2 CPU cores)")
        ax.set_ylabel(f"Dice, {CURRENT_K} labeled slices")
        ax.grid(alpha=0.3)
    legend = {}  # every panel's entries once, under the panels
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend), fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(MINUTES_PLOT, dpi=110)
    print(f"wrote {MINUTES_PLOT}")


def _rows(group: list[dict], method: str):
    """(row label, method name suffix, propagation entry) of a (dataset, protocol, k)
    group: the default, on the ``ends`` protocol also the runs with --ends-labeled, and
    strictly inside the tagged runs of :data:`INSIDE_ROWS`."""
    yield group[0]["protocol"], "", "propagation"
    if group[0]["protocol"] != "ends":
        for tag, label in INSIDE_ROWS.items():
            if any(f"{method}+{tag}" in r["methods"] for r in group):
                yield label, f"+{tag}", "propagation"
        return
    for tag, label in ENDS_ROWS.items():
        tagged = {f"{name}+{tag}" for name in (method, LONG_BUDGET_METHOD)}
        if any(tagged & set(r["methods"]) for r in group):
            yield label, f"+{tag}", "propagation_ends"


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def report_lines(method: str = SHORT_BUDGET_METHOD) -> list[str]:
    """The markdown of docs/benchmarks.md's annotation-effort section (also the README's)."""
    runs = load_all()
    if not runs:
        return []
    lines = []
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["protocol"], r["k"]), []).append(r)
    lines += [
        "| dataset | protocol | k | volumes | interpolation | random walker | propagation "
        f"(ours, no training) | {method}, 2 min | {method}, 5 min | {LONG_BUDGET_METHOD}, 5 min "
        "| goal 2 min / 5 min (better baseline + 3 / + 5) | the default (auto) meets it, "
        "2 / 5 min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (dataset, _protocol, k), group in sorted(groups.items()):
        for label, tag, walk in _rows(group, method):
            lines.append(_group_row(dataset, label, k, group, tag, walk, method))
    lines += _per_volume_lines(runs, method)
    return lines


def _bar(run: dict, margin: float) -> float:
    z = run["zero_training"]
    return max(z["interpolation"]["dice"], z["random_walker"]["dice"]) + margin


def _group_row(dataset, label, k, group, tag, walk, method) -> str:
    """One row of the summary table: the means over the volumes of ``group`` (the count of
    a method's volumes said when fewer than the row's); the default (``auto``) is ``method``
    at 2 minutes, and at 5 LONG_BUDGET_METHOD when the user said the labeled slices include
    the ends (``walk`` is the propagation stopping at them), ``method`` otherwise."""
    long = walk == "propagation_ends"
    zero = {
        n: _mean(r["zero_training"].get(walk if n == "propagation" else n, {}).get("dice")
                 for r in group)
        for n in ZERO
    }  # fmt: skip
    columns = [(method, minutes, margin) for minutes, margin in GOAL_MARGINS.items()]
    columns.append((LONG_BUDGET_METHOD, "5.0", GOAL_MARGINS["5.0"]))
    cells, goals, meets = [], [], []
    for name, minutes, margin in columns:
        trained = [r for r in group if name + tag in r["methods"]]
        out = [r["methods"][name + tag]["budgets"].get(minutes, {}).get("output") for r in trained]
        n = sum(o is not None for o in out)  # the volumes run at this budget
        more = f" ({n})" if n and n < len(group) else ""
        cells.append(f"{_mean(out):.3f}{more}" if n else "n/a")
        bars = [_bar(r, margin) for r in trained]
        goals.append(f"{_mean(bars):.3f}" if trained else "n/a")
        hits = sum(o is not None and o >= b for o, b in zip(out, bars, strict=True))
        meets.append(f"{hits}/{n}")
    return (
        f"| {dataset} | {label} | {k} | {len(group)} | {zero['interpolation']:.3f} | "
        f"{zero['random_walker']:.3f} | {zero['propagation']:.3f} | {' | '.join(cells)} | "
        f"{goals[0]} / {goals[2] if long else goals[1]} | {meets[0]} / "
        f"{meets[2] if long else meets[1]} |"
    )


def _per_volume_lines(runs: list[dict], method: str) -> list[str]:
    """The per-volume table and the other methods' table."""
    lines = [
        "",
        "Per volume (Dice on the non-labeled slices; `model` = the network alone, `output` = "
        "what the product hands back, fused with the propagation; iterations reached):",
        "",
        "| volume | protocol | k | labeled | interp. | RW | propagation | model 2 / 5 min | "
        "output 2 / 5 min | iterations 2 / 5 min | threads |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: (r["dataset"], r["protocol"], r["k"], r["case"])):
        z = r["zero_training"]
        m = r["methods"].get(method)
        b = m["budgets"] if m else {}
        two, five = b.get("2.0", {}), b.get("5.0", {})

        def pair(key, two=two, five=five):
            return f"{two.get(key, float('nan')):.3f} / {five.get(key, float('nan')):.3f}"

        lines.append(
            f"| {r['dataset']}/{r['case']} | {r['protocol']} | {r['k']} | {r['labeled']} | "
            f"{z['interpolation']['dice']:.3f} | {z['random_walker']['dice']:.3f} | "
            f"{z['propagation']['dice']:.3f} | {pair('model') if m else 'n/a'} | "
            f"{pair('output') if m else 'n/a'} | "
            f"{two.get('iteration', 'n/a')} / {five.get('iteration', 'n/a')} | "
            f"{m.get('threads', '?') if m else 'n/a'} |"
        )
    others = sorted({n for r in runs for n in r["methods"] if n != method})
    if others:
        lines += [
            "",
            "Other methods and variants on the same slices (output at 2 / 5 min, with the "
            "product's defaults: warm-up, propagation prior, fused prediction; `+ends`: "
            "`--ends-labeled`; `separate`: one run per budget, else the weights of the 5-minute "
            f"run at 2 minutes), beside {method} (with the same tag) at 5 min:",
            "",
            "| volume | protocol | k | method | output 2 / 5 min | iterations 2 / 5 min | "
            f"{method} 5 min | separate | note |",
            "|---|---|---:|---|---:|---:|---:|---|---|",
        ]
        for r in runs:
            for name in others:
                if name not in r["methods"]:
                    continue
                b = r["methods"][name]["budgets"]
                tag = name.partition("+")[2]
                same = f"{method}+{tag}" if tag and name != f"{method}+{tag}" else method
                ref = r["methods"].get(same, {}).get("budgets", {}).get("5.0", {})
                lines.append(
                    f"| {r['dataset']}/{r['case']} | {r['protocol']} | {r['k']} | {name} | "
                    f"{b.get('2.0', {}).get('output', float('nan')):.3f} / "
                    f"{b.get('5.0', {}).get('output', float('nan')):.3f} | "
                    f"{b.get('2.0', {}).get('iteration', 'n/a')} / "
                    f"{b.get('5.0', {}).get('iteration', 'n/a')} | "
                    f"{ref.get('output', float('nan')):.3f} | "
                    f"{'yes' if r['methods'][name].get('separate') else 'no'} | "
                    f"{r['methods'][name].get('handed_back') or ''} |"
                )
    return lines


def plot() -> None:
    """Dice against k: the zero-training results at every k, and the default (the runs of
    :data:`CURRENT` and :data:`CURRENT_MORE_SLICES`, today's product or the stop named in
    the README's table) at 2 and 5 minutes where it was trained."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_all()
    panels = sorted({(r["dataset"], r["protocol"]) for r in runs})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (dataset, protocol) in zip(axes[0], panels, strict=True):
        group = [r for r in runs if (r["dataset"], r["protocol"]) == (dataset, protocol)]
        ks = sorted({r["k"] for r in group})
        walk = _walk_of(protocol)
        for label, key in (
            ("interpolation", "interpolation"),
            ("random walker", "random_walker"),
            ("propagation (no training)", walk),
        ):
            ys = [_mean(r["zero_training"][key]["dice"] for r in group if r["k"] == k) for k in ks]
            ax.plot(ks, ys, linestyle="--", marker="o", label=label)
        for minutes in GOAL_MARGINS:
            xs, ys = [], []
            for k in ks:
                name, _ = _default_run(dataset, protocol, k, minutes)
                found = _outputs(_runs_at(group, dataset, protocol, k), name, minutes)
                if found:
                    xs.append(k)
                    ys.append(_mean(out for _, out in found))
            if xs:
                ax.plot(xs, ys, linestyle="-", marker="o", label=f"the default, {minutes[0]} min")
        ax.set_title(f"{dataset}, {protocol} ({len({r['case'] for r in group})} volumes)")
        ax.set_xlabel("labeled slices k")
        ax.set_ylabel("Dice on the other slices")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    print(f"wrote {PLOT}")


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
    parser.add_argument(
        "--separate",
        action="store_true",
        help="one run per budget (what a user who sets it gets) instead of the weights of one "
        "run of the largest budget copied as the clock passes each",
    )
    parser.add_argument("--zero-only", action="store_true", help="only the zero-training rows")
    parser.add_argument("--overrides", help="JSON of RunRecipe fields, e.g. a lever to test")
    parser.add_argument("--tag", default="", help="suffix of the method's row (a variant)")
    parser.add_argument("--report", action="store_true", help="only print the saved results")
    parser.add_argument(
        "--keep-probabilities",
        type=Path,
        help="folder to save each run's network and prior probabilities in (npz per budget)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.report:
        benchmark(args)
    print("\n".join(report_lines()))
    print("\n".join(["", "Today's product:", ""] + current_lines()))
    plot()
    plot_minutes()


if __name__ == "__main__":
    main()
