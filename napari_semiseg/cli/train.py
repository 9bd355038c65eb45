"""``semiseg train``: the checks of the arguments and of the run folder before any work, the
zero-training methods (``interpolate``, ``propagate``) that write their result at once, and
a training run (resume, ``--force``, Ctrl-C / SIGTERM with a checkpoint, torchrun)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from napari_semiseg.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    _check_at_least,
    _parse_set,
    _parse_slices,
    _ProgressPrinter,
    _refuse_labels_as_image,
    _refuse_overlap,
)
from src_models.errors import SemisegError

INTERPOLATE = "interpolate"
PROPAGATE = "propagate"
#: methods that train nothing: name -> (what they write, help)
ZERO_TRAINING = {
    INTERPOLATE: (
        "interpolation",
        "no training, instant: shape-based interpolation between the labeled slices, per "
        "class, along --axis (3D Slicer's / ITK-SNAP's 'fill between slices'). Writes "
        "<labels-stem>_interpolation.<ext> per labeled volume into --out.",
    ),
    PROPAGATE: (
        "propagation",
        "no training, seconds: a random walker seeded by the labeled slices follows the "
        "image's edges from one labeled slice to the next (Biomedisa's 'smart "
        "interpolation'; beyond the outer labeled ones by 0.7 of their mean spacing, none with "
        "--ends-labeled), blended between labeled slices with the labeled outlines carried "
        "along the image's optical flow; the best zero-training result and the bar every "
        "method must beat. "
        "Writes <labels-stem>_propagation.<ext>.",
    ),
}


#: files a training run writes into its folder
RUN_FILES = ("model.pt", "model.json", "train_log.jsonl", "train_config.json", "config.json")


def _zero_training(args: argparse.Namespace, volumes, label_metas, values) -> int:
    """``train --method interpolate|propagate``: write the result of each labeled volume."""
    from napari_semiseg.io import map_path, write_volumes
    from src_models.data.volumes import from_slices
    from src_models.interpolation import interpolate_slices
    from src_models.propagation import propagate

    suffix = ZERO_TRAINING[args.method][0]
    out = Path(args.out)
    targets = []
    for vol, meta, path in zip(volumes, label_metas, args.labels, strict=False):
        target = map_path(out / Path(str(path).rstrip("/\\")).name, suffix)
        if target.exists():
            raise SemisegError(f"{target} exists: choose another --out (nothing is overwritten)")
        _refuse_overlap("--out", target, [*args.image, *args.labels])
        targets.append((vol, meta, target))
    names = [t[2].name for t in targets]
    if len(set(names)) < len(names):  # case1/labels.nii.gz and case2/labels.nii.gz
        twice = sorted({n for n in names if names.count(n) > 1})
        raise SemisegError(
            f"two label files would both be written as {twice[0]} in {out}: give the label "
            "files distinct names or run one volume per --out folder"
        )
    items, notes = [], []
    for vol, meta, target in targets:
        t0 = time.perf_counter()
        labels = vol.labels.clip(min=0)
        if args.method == PROPAGATE:
            result = propagate(
                vol.slices,
                vol.labels,
                vol.labeled,
                values.num_classes,
                ends_labeled=args.ends_labeled,
                ratio=vol.slice_ratio,
            )
        else:
            result = interpolate_slices(labels, vol.labeled, values.num_classes)
        mask = values.decode(from_slices(result.labels, vol.axis))
        if meta.layout in ("YX", "CYX"):
            mask = mask[0]
        items.append((target, mask, meta, True))
        covered = int(result.covered.sum())
        notes.append(
            f"wrote {target}: {len(vol.labeled)} labeled slice(s), {covered - len(vol.labeled)} "
            f"filled between them, in {time.perf_counter() - t0:.2f} s"
        )
    write_volumes(items)
    print("\n".join(notes))
    return 0


#: the command line's name of each :class:`RunRecipe` field its check may refuse
RECIPE_FLAGS = {
    "iterations": "--iterations",
    "minutes": "--minutes",
    "batch_size": "--batch-size",
    "patch_size": "--patch",
    "checkpoint_every": "--checkpoint-every",
    "seed": "--seed",
    "warmup": "--warmup",
    "warmup_plateau": "--warmup-plateau",
    "prior_final": "--prior-final",
    "prior_fraction": "--prior-fraction",
    "prior_refresh": "--prior-refresh",
    "foreground_crops": "--foreground-crops",
    "context_slices": "--context-slices",
    "planes": "--planes",
}


def _recipe(args: argparse.Namespace, params: dict[str, str]):
    """The :class:`RunRecipe` of ``semiseg train``'s arguments."""
    from src_models.recipe import DEFAULT_FOREGROUND_CROPS, DEFAULT_PRIOR_FRACTION, RunRecipe

    return RunRecipe(
        method=args.method,
        params=params,
        axis=args.axis,
        iterations=args.iterations,
        minutes=args.minutes,
        batch_size=args.batch_size,
        patch_size=args.patch,
        seed=args.seed,
        foreground_crops=DEFAULT_FOREGROUND_CROPS
        if args.foreground_crops is None
        else args.foreground_crops,
        prior=args.prior,
        prior_fraction=DEFAULT_PRIOR_FRACTION
        if args.prior_fraction is None
        else args.prior_fraction,
        warmup=args.warmup,
        warmup_plateau=args.warmup_plateau,
        prior_final=args.prior_final,
        prior_refresh=args.prior_refresh,
        checkpoint_every=args.checkpoint_every,
        ends_labeled=args.ends_labeled,
        context_slices=args.context_slices,
        planes=args.planes,
    )


def _check_train_args(args: argparse.Namespace) -> None:
    if len(args.labels) != len(args.image):
        raise SemisegError(
            f"{len(args.image)} --image but {len(args.labels)} --labels: give one labels file "
            "per image (use --unlabeled for volumes without labels)"
        )
    for image, labels in zip(args.image, args.labels, strict=True):
        _refuse_labels_as_image(image, labels)
    if args.method not in ZERO_TRAINING:  # the run's own values: the core's one rule
        _recipe(args, _parse_set(args.set)).check(RECIPE_FLAGS)
    _check_at_least("--log-every", args.log_every, 1)
    _check_at_least("--classes", args.classes, 2)
    _check_at_least("--ignore-label", args.ignore_label, 1)
    if args.resume and args.force:
        raise SemisegError("--resume continues the run in --out, --force replaces it: pick one")
    if args.binary and args.classes not in (None, 2):
        raise SemisegError("--binary trains 2 classes: drop --classes")
    from src_models.data.volumes import check_axis

    check_axis(args.axis)
    if args.method in ZERO_TRAINING and args.resume:
        raise SemisegError(f"--method {args.method} trains nothing: drop --resume")


def _prepare_run_folder(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Check, before any work, that the run folder can be written and that training it
    replaces nothing; returns the folder and the run files it already holds."""
    from src_models.files import check_writable

    out = Path(args.out).expanduser()
    _refuse_overlap("--out", out, [*args.image, *args.labels, *(args.unlabeled or [])])
    check_writable(out, "run folder")
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if args.resume and "model.json" not in existing:
        raise SemisegError(f"--resume: no model in {out} to continue; drop --resume")
    if existing and not (args.resume or args.force):
        held = "a trained model" if "model.json" in existing else "files of an earlier run"
        raise SemisegError(
            f"{out} already holds {held} ({', '.join(existing)}): continue it with --resume, "
            "replace it with --force (the old files are moved to a 'replaced-...' subfolder), "
            "or choose another --out"
        )
    return out, existing


def _resume_values(args, meta: dict, labels: list):
    """The label values of the run being resumed, after checking the new data fits it."""
    from src_models.data.label_values import LabelValues, present_values

    if meta["axis"] != args.axis:
        raise SemisegError(
            f"--resume: the model in {args.out} slices along axis {meta['axis']}, not "
            f"--axis {args.axis}: use --axis {meta['axis']} or train a new run"
        )
    values = LabelValues.from_info(meta.get("info", {}), meta["num_classes"])
    if args.ignore_label is not None and args.ignore_label != values.ignore:
        raise SemisegError(
            f"--resume: the run was trained with ignore label {values.ignore}, not "
            f"{args.ignore_label}: drop --ignore-label or train a new run"
        )
    if not values.binary:
        new = sorted(set(present_values(labels, values.ignore).tolist()) - set(values.values))
        if new:
            raise SemisegError(
                f"--resume: the labels hold value(s) {new} that the model in {args.out} does "
                f"not know (its classes: {list(values.values)}): train a new run (another "
                "--out, or --force) to add classes"
            )
    return values


def _move_aside(out: Path, existing: list[str]) -> Path:
    """--force: the previous run's files go to a subfolder; nothing is deleted."""
    aside = out / time.strftime("replaced-%Y%m%d-%H%M%S")
    aside.mkdir()
    for name in existing:
        (out / name).replace(aside / name)
    print(f"moved the previous run's files to {aside}")
    return aside


def _chosen_method(args: argparse.Namespace) -> str:
    """``--method``, or what ``auto`` trains: the method of the run ``--resume`` continues,
    else the one measured best at the budget (said on the terminal)."""
    from src_models.method_choice import AUTO, method_for_budget
    from src_models.training.checkpoint import read_metadata

    if args.method != AUTO:
        return args.method
    model = Path(args.out).expanduser() / "model.json"
    if args.resume and model.exists():
        return str(read_metadata(model)["method"])
    method = method_for_budget(args.minutes, args.ends_labeled)
    budget = "an iteration budget" if args.minutes is None else f"{args.minutes:g} minutes"
    ends = ", the labeled ends" if args.ends_labeled else ""
    print(f"method auto: {method} for {budget}{ends} (semiseg methods says when each pays off)")
    return method


def cmd_train(args: argparse.Namespace) -> int:
    """``semiseg train``: a trained method holds the run folder's lock for the whole run
    (rank 0 under torchrun), so a second training into it is refused."""
    from src_models.files import folder_lock

    args.method = _chosen_method(args)
    _check_train_args(args)
    if args.method in ZERO_TRAINING or os.environ.get("RANK", "0") != "0":
        return _train(args)
    _prepare_run_folder(args)  # the user's mistakes first, before any folder is made
    with folder_lock(Path(args.out).expanduser(), "semiseg train"):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from napari_semiseg.training_data import load_training_data
    from src_models.data.label_values import interpret_labels
    from src_models.device import select_device
    from src_models.files import atomic_write
    from src_models.methods.base import config_to_dict, get_method
    from src_models.recipe import build_run
    from src_models.training import TrainingControl, distributed, train
    from src_models.training.checkpoint import load_model, read_metadata

    method_cls = None if args.method in ZERO_TRAINING else get_method(args.method)
    params = _parse_set(args.set)  # (checked with the recipe by _check_train_args)
    device = select_device(args.device)
    processes = 1
    if method_cls is not None and distributed.launched():
        processes = distributed.init_from_env(device)
        device = distributed.local_device(device)
        if not distributed.is_main():  # one process speaks for all
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        print(f"training with {processes} processes (torchrun), rank 0 writes the run")
    if method_cls is not None:
        out, existing = _prepare_run_folder(args)
        distributed.barrier()  # every rank has checked the folder before rank 0 writes
    chosen = _parse_slices(args.labeled_slices, len(args.labels))
    run_meta = read_metadata(out) if method_cls is not None and args.resume else None

    def decide_values(given):
        if run_meta is not None:
            return _resume_values(args, run_meta, given)
        return interpret_labels(given, args.classes, args.ignore_label, args.binary)

    ignore = args.ignore_label
    if run_meta is not None and ignore is None:
        ignore = run_meta.get("info", {}).get("ignore_label")
    data = load_training_data(
        args.image,
        args.labels,
        args.unlabeled or [],
        args.axis,
        chosen,
        decide_values,
        ignore=ignore,
        ignore_geometry=args.ignore_geometry,
    )
    volumes, values, label_metas, spacing = (
        data.volumes,
        data.values,
        data.label_metas,
        data.spacing,
    )
    num_classes = values.num_classes
    channels = volumes[0].slices.shape[1]
    trained_on = None  # its input channels hold each slice's neighbours too
    if run_meta is not None:
        from src_models.data.context import slice_channels

        context = int(run_meta.get("info", {}).get("context_slices", 0))
        trained_on = slice_channels(run_meta["in_channels"], context)
    if trained_on is not None and trained_on != channels:
        raise SemisegError(
            f"--resume: the model in {args.out} was trained on {trained_on}-channel "
            f"images, this image has {channels}: use the same kind of image or train a new run"
        )
    if values.remapped and not args.resume:
        shown = (
            "every nonzero value -> 1"
            if values.binary
            else ", ".join(f"{v} -> {i}" for i, v in enumerate(values.values))
        )
        print(f"label values as classes: {shown} (predictions use the original values)")
    if data.lazy:
        print("volumes larger than memory are read slab by slab (only labeled slices kept)")
    if method_cls is None:
        if data.lazy:
            raise SemisegError(
                f"--method {args.method} needs the volume in memory: this one is larger than "
                "memory allows; train a method instead"
            )
        return _zero_training(args, volumes, label_metas, values)
    n_lab = sum(len(v.labeled) for v in volumes)
    n_unl = sum(len(v.unlabeled) for v in volumes)
    print(
        f"{len(volumes)} volume(s), axis {args.axis}: {n_lab} labeled slice(s), "
        f"{n_unl} unlabeled, {num_classes} classes; method {args.method} on {device}"
    )
    recipe = _recipe(args, params)
    resumed = None
    if args.resume:
        resumed = load_model(out, device=device, expect_method=args.method)
        print(f"resuming from iteration {resumed.iteration}")
        resumed.info["processes"] = processes
    if recipe.prior_fraction > 0:
        print(f"propagating the labeled slices along the image ({recipe.prior} prior)...")
    t_setup = time.perf_counter()
    run = build_run(
        recipe,
        volumes=volumes,
        num_classes=num_classes,
        device=device,
        resume=resumed,
        bundle_fields={
            "info": {
                "spacing": list(spacing or ()),
                "unit": label_metas[0].unit,
                **values.info(),
                "processes": processes,
            },
            "class_names": [str(v) for v in values.values],
        },
    )
    sampler, bundle, config = run.sampler, run.bundle, run.config
    if recipe.prior_fraction > 0:
        print(f"prior and model ready in {time.perf_counter() - t_setup:.1f} s; training")
    if processes > 1:  # each process its own stream of batches (the hold-out is shared)
        sampler.generator.manual_seed(args.seed + 1_000_003 * distributed.rank())
    if sampler.patch_size != args.patch:
        print(f"training crops of {sampler.patch_size} pixels (the slices are no larger)")
    distributed.distribute(bundle.method)
    control = TrainingControl()
    printer = _ProgressPrinter(every=max(1, args.log_every))

    terminated = []

    def stop_gracefully(signum, frame):  # first Ctrl-C: checkpoint and stop; second: abort
        print("\nstopping after this iteration (Ctrl-C again to abort)...", file=sys.stderr)
        control.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def stop_on_term(signum, frame):  # SLURM, systemd, kill: checkpoint and stop
        print("\nSIGTERM: stopping after this iteration with a checkpoint...", file=sys.stderr)
        terminated.append(signum)
        control.stop()

    created = not out.exists()
    if args.force and existing and distributed.is_main():
        _move_aside(out, existing)
    distributed.barrier()
    previous = signal.signal(signal.SIGINT, stop_gracefully)
    previous_term = signal.signal(signal.SIGTERM, stop_on_term)
    start = bundle.iteration
    try:
        train(bundle, sampler, config, out_dir=out, callback=printer, control=control)
    except BaseException:
        if distributed.is_main() and not (out / "model.json").exists():
            # nothing worth keeping: undo this command
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
    final = {
        "method": args.method,
        "params": config_to_dict(bundle.method.config),
        "train": asdict(config),
        "data": {
            "images": [str(p) for p in args.image],
            "labels": [str(p) for p in args.labels],
            "unlabeled": [str(p) for p in args.unlabeled or []],
            "labeled_slices": [v.labeled for v in volumes],
            "axis": args.axis,
            "num_classes": num_classes,
            "label_values": list(values.values),
        },
    }
    text = json.dumps(final, indent=2)
    if distributed.is_main():
        atomic_write(out / "config.json", lambda tmp: tmp.write_text(text))
    if control.stop_requested:
        print(
            f"stopped at iteration {bundle.iteration}: checkpoint in {out} "
            "(continue with the same command and --resume)"
        )
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    refreshed = bundle.info.get("prior_refreshed_at")
    if isinstance(refreshed, int) and refreshed >= start:
        print(
            f"from iteration {refreshed} the prior's targets were the model's own output (the "
            "network fused with the propagation, smoothed across slices; --prior-refresh)"
        )
    if bundle.planes == 3:
        from src_models.data.planes import describe_planes

        print(describe_planes(bundle.axis, bundle.info.get("plane_fits")))
    print(f"model written to {out} (iteration {bundle.iteration})")
    return 0
