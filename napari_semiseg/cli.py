"""The ``semiseg`` command line: train, predict, evaluate, methods.

Runs headless (no Qt import). Every user-fixable problem ends with a one-line
``semiseg: error: ...`` on stderr and exit code 2, no traceback (``--debug`` shows one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from src_models.errors import SemisegError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
#: ``semiseg suggest --strategy`` (src_models.suggest.STRATEGIES, without importing torch)
STRATEGY_CHOICES = ("strided", "uncertainty", "uncertainty-distance")
#: stopped by SIGTERM (128 + 15), with a checkpoint
EXIT_TERMINATED = 143


def _parse_slices(
    text: str | None, n_images: int, flag: str = "--labeled-slices"
) -> list[list[int] | None] | None:
    """ "3,17,30" (every image) or "3,17;5,9" (one group per image, ';'-separated)."""
    if text is None:
        return None
    groups = [g for g in text.split(";")]
    try:
        parsed = [[int(s) for s in g.split(",") if s.strip()] for g in groups]
    except ValueError:
        raise SemisegError(
            f"{flag} {text!r} is not a list of slice numbers: use e.g. 3,17,30"
            + (" (or 3,17;5,9 with one group per image)" if n_images > 1 else "")
        ) from None
    if len(parsed) == 1:
        return parsed * n_images
    if len(parsed) != n_images:
        raise SemisegError(
            f"{flag} has {len(parsed)} groups for {n_images} images: give one group "
            "per image separated by ';' or a single group for all"
        )
    return parsed


def _parse_set(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SemisegError(f"--set {item!r}: use key=value (see 'semiseg methods')")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


class _ProgressPrinter:
    """A one-line progress bar on a terminal, plain lines every ``every`` iterations else."""

    def __init__(self, every: int = 50, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every = every
        self.last = 0.0

    def __call__(self, p) -> None:
        logs = " ".join(f"{k}={v:.4g}" for k, v in p.logs.items())
        eta = "?" if math.isnan(p.eta) else f"{p.eta:.0f}s"
        if self.tty:
            now = time.monotonic()
            if now - self.last < 0.2 and not p.done:
                return
            self.last = now
            width = 24
            fill = int(width * p.iteration / max(p.total, 1))
            bar = "#" * fill + "-" * (width - fill)
            line = f"\r[{bar}] {p.iteration}/{p.total} eta {eta} lr {p.lr:.2e} {logs}"
            self.stream.write(line[:200].ljust(80))
            if p.done:
                self.stream.write("\n")
        elif p.done or p.iteration % self.every == 0 or p.iteration == 1:
            self.stream.write(
                f"iter {p.iteration}/{p.total} elapsed {p.elapsed:.0f}s eta {eta} "
                f"lr {p.lr:.2e} {logs}\n"
            )
        self.stream.flush()


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
        "interpolation'; nothing beyond the outer labeled slices); the best zero-training "
        "result and the bar every method must beat. Writes <labels-stem>_propagation.<ext>.",
    ),
}


def _check_at_least(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise SemisegError(f"{name} must be at least {low}, got {value}")


def _resolved(path: str | Path) -> Path:
    return Path(str(path).rstrip("/\\")).expanduser().resolve()


def _refuse_labels_as_image(image: str | Path, labels: str | Path) -> None:
    """``--labels`` naming the image file itself: its intensities are not class ids."""
    if _resolved(image) == _resolved(labels):
        raise SemisegError(
            f"--labels {labels} is the image itself: give the mask painted on it (class ids, "
            "0 = background), a separate file"
        )


def _refuse_overlap(flag: str, output: str | Path, inputs: list[str | Path]) -> None:
    """An output that is, contains or lies inside an input would overwrite or delete it."""
    out = _resolved(output)
    for given in inputs:
        inp = _resolved(given)
        how = (
            "is"
            if out == inp
            else "is inside"
            if inp in out.parents
            else "contains"
            if out in inp.parents
            else ""
        )
        if how:
            raise SemisegError(
                f"{flag} {output} {how} the input {given}: it would be overwritten; choose "
                "another output path (inputs are never written)"
            )


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
            result = propagate(vol.slices, vol.labels, vol.labeled, values.num_classes)
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
    "foreground_crops": "--foreground-crops",
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
        checkpoint_every=args.checkpoint_every,
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


def cmd_train(args: argparse.Namespace) -> int:
    """``semiseg train``: a trained method holds the run folder's lock for the whole run
    (rank 0 under torchrun), so a second training into it is refused."""
    from src_models.files import folder_lock

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
    if run_meta is not None and run_meta["in_channels"] != channels:
        raise SemisegError(
            f"--resume: the model in {args.out} was trained on {run_meta['in_channels']}-channel "
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
    print(f"model written to {out} (iteration {bundle.iteration})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from napari_semiseg.io import is_zarr_store, map_path, open_image, volume_format
    from src_models.data.label_values import LabelValues
    from src_models.data.lazy import is_lazy
    from src_models.device import select_device
    from src_models.files import check_writable
    from src_models.training.checkpoint import META_FILE, WEIGHTS_FILE, load_model

    volume_format(args.out)  # fail early on an unsupported extension
    _check_at_least("--batch-size", args.batch_size, 1)
    maps = [m.strip() for m in (args.maps or "").split(",") if m.strip()]
    not_names = [m for m in maps if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", m)]
    if not_names:  # a map's name becomes part of a file name: never a path
        raise SemisegError(
            f"--maps {not_names[0]!r} is not a map name: give names such as "
            "confidence,discrepancy (`semiseg methods` lists each method's maps)"
        )
    twice = sorted({m for m in maps if maps.count(m) > 1})
    if twice:
        raise SemisegError(f"--maps lists {', '.join(twice)} more than once: name each map once")
    targets = [Path(args.out).expanduser()] + [map_path(args.out, m) for m in maps]
    model_files = [Path(args.model) / META_FILE, Path(args.model) / WEIGHTS_FILE]
    for target in targets:
        _refuse_overlap("--out", target, [args.image, *model_files])
        if target.exists() and not args.force:
            raise SemisegError(
                f"{target} exists: choose another --out, or pass --force to replace it"
            )
        if target.is_dir() and not is_zarr_store(target):
            raise SemisegError(
                f"{target} is a folder holding files that are not a zarr store's (--force "
                "replaces a store, never other files): choose another --out"
            )
    check_writable(targets[0].parent)
    bundle = load_model(args.model, device=select_device(args.device))
    img, meta = open_image(args.image)
    lazy = is_lazy(img)
    if lazy and args.largest_component:
        raise SemisegError(
            "--largest-component needs the whole mask in memory: this volume is larger; drop it"
        )
    values = LabelValues.from_info(bundle.info, bundle.num_classes)
    prior = None
    if args.labels:
        if lazy:
            raise SemisegError(
                "--labels needs the volume in memory (the propagation is computed on the whole "
                "volume): this one is larger; drop --labels"
            )
        prior = _fused_prior(args, bundle, img)
    if lazy and volume_format(args.out) == ".zarr":
        counts = _predict_streaming(args, bundle, img, meta, maps, targets, values)
        written = targets
    else:
        counts, written = _predict_in_memory(args, bundle, img, meta, maps, targets, values, prior)
    shown = ", ".join(f"{v}: {c}" for v, c in zip(values.values, counts.tolist(), strict=False))
    print(f"wrote {written[0]} (voxels per label value: {shown})")
    for path in written[1:]:
        print(f"wrote {path}")
    return 0


def _model_labels(args, bundle, img) -> tuple[np.ndarray, list[int]]:
    """``--labels`` as the model's class ids (unannotated voxels -1) and their labeled slices
    along the model's axis; values the model does not know are refused."""
    from napari_semiseg.io import label_volume, read_labels
    from src_models.data.label_values import LabelValues
    from src_models.data.volumes import check_labels, detect_labeled_slices, to_slices

    values = LabelValues.from_info(bundle.info, bundle.num_classes)
    _refuse_labels_as_image(args.image, args.labels)
    raw, label_meta = read_labels(args.labels)
    raw = label_volume(raw, label_meta)
    if raw.shape != tuple(img.shape[1:]):
        raise SemisegError(
            f"--labels has shape {raw.shape}, the image {tuple(img.shape[1:])}: give the "
            "sparse labels of this image"
        )
    unknown = sorted(set(np.unique(raw).tolist()) - {*values.values, values.ignore})
    if unknown and not values.binary:
        raise SemisegError(
            f"--labels holds value(s) {unknown[:5]} that the model does not know (its classes: "
            f"{list(values.values)}): give the labels the model was trained with"
        )
    ids = check_labels(values.encode(raw), bundle.num_classes, allow_ignore=True)
    labeled = detect_labeled_slices(to_slices(ids[None], bundle.axis)[:, 0])
    if not labeled:
        raise SemisegError(f"--labels {args.labels} has no labeled slice along axis {bundle.axis}")
    return ids, labeled


def _fused_prior(args, bundle, img) -> np.ndarray:
    """The propagation of the labeled slices of ``--labels`` over ``img`` (K, Z, Y, X)."""
    from src_models.propagation import propagation_prior

    _refuse_overlap("--out", args.out, [args.labels])
    ids, labeled = _model_labels(args, bundle, img)
    t0 = time.perf_counter()
    prior = propagation_prior(np.asarray(img), ids, labeled, bundle.axis, bundle.num_classes)
    print(
        f"fused with the propagation of {len(labeled)} labeled slice(s) of {args.labels} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return prior


def _predict_in_memory(args, bundle, img, meta, maps, targets, values, prior=None):
    """Predict, then write the mask and the maps all or none."""
    from napari_semiseg.io import write_volumes
    from src_models.inference import predict_volume

    pred = predict_volume(bundle, img, maps, batch_size=args.batch_size, prior=prior)
    if pred.note:
        print(pred.note)
    if args.largest_component:
        from src_models.postprocess import largest_component_3d

        pred.labels = largest_component_3d(pred.labels, bundle.num_classes)
    counts = np.bincount(pred.labels.ravel(), minlength=bundle.num_classes)
    arrays = [(targets[0], values.decode(pred.labels), True)]
    arrays += [(t, pred.maps[m], False) for t, m in zip(targets[1:], maps, strict=True)]
    flat = meta.layout in ("YX", "CYX")  # a 2D image gets a 2D mask
    written = write_volumes([(t, a[0] if flat else a, meta, lab) for t, a, lab in arrays])
    return counts, written


def _predict_streaming(args, bundle, img, meta, maps, targets, values) -> np.ndarray:
    """A volume larger than memory into zarr stores filled slab by slab (staged, renamed
    when all are complete)."""
    from napari_semiseg.io import stage_zarr
    from src_models.files import commit, discard
    from src_models.inference import predict_volume

    spatial = tuple(img.shape[1:])
    # the dtype of the user's values (what LabelValues.decode gives back)
    ids = np.arange(bundle.num_classes, dtype=np.uint8 if bundle.num_classes <= 256 else np.uint16)
    dtype = values.decode(ids).dtype
    staged, outs = [], {}
    try:
        try:
            for target, key in zip(targets, ["labels", *maps], strict=True):
                is_labels = key == "labels"
                st, arr = stage_zarr(
                    target, spatial, dtype if is_labels else np.float32, meta, is_labels
                )
                staged.append(st)
                outs[key] = arr
            predict_volume(bundle, img, maps, batch_size=args.batch_size, out=outs)
            counts = np.zeros(bundle.num_classes, np.int64)
            labels = outs["labels"]
            for z0 in range(0, spatial[0], 16):  # class counts, and the user's values back
                part = np.asarray(labels[z0 : z0 + 16])
                counts += np.bincount(part.ravel(), minlength=bundle.num_classes)
                if values.remapped:
                    labels[z0 : z0 + 16] = values.decode(part)
        except OSError as exc:  # e.g. a full disk while the chunks stream out
            raise SemisegError(
                f"could not write the prediction into {targets[0].parent} "
                f"({exc.strerror or exc}): free space and predict again; nothing was written"
            ) from None
        commit(staged)
        return counts
    finally:
        discard(staged)  # what was committed is gone from its temporary name


def cmd_suggest(args: argparse.Namespace) -> int:
    """``semiseg suggest``: the next slices to annotate, ranked, with scores and reasons."""
    from napari_semiseg.io import open_image
    from src_models.device import select_device
    from src_models.inference import predict_volume
    from src_models.suggest import suggest
    from src_models.training.checkpoint import load_model

    _check_at_least("-n", args.n, 1)
    bundle = load_model(args.model, device=select_device(args.device))
    img, _ = open_image(args.image)
    axis = bundle.axis
    if args.labels:
        _, labeled = _model_labels(args, bundle, img)
    else:
        labeled = bundle.info.get("labeled_slices")
        if not isinstance(labeled, list) or not all(isinstance(s, int) for s in labeled):
            raise SemisegError(
                f"the model in {args.model} does not record the labeled slices of one volume: "
                "give the labels so far with --labels"
            )
    method = bundle.method
    name = "discrepancy" if "discrepancy" in method.map_names else "confidence"
    pred = predict_volume(bundle, img, maps=[name] if args.strategy != "strided" else [])
    others = tuple(a for a in range(3) if a != axis)
    structure = np.asarray(pred.labels).astype(bool).any(axis=others)
    uncertainty = None
    if args.strategy != "strided":
        score = np.asarray(pred.maps[name], np.float64).mean(axis=others)
        uncertainty = score if name == "discrepancy" else 1.0 - score
    n_slices = int(img.shape[1 + axis])
    picks = suggest(labeled, n_slices, uncertainty, structure, args.n, args.strategy)
    if args.json:
        rows = [{"slice": p.index, "score": p.score, "why": p.why} for p in picks]
        print(json.dumps({"axis": axis, "labeled": labeled, "strategy": args.strategy,
                          "map": name if uncertainty is not None else None,
                          "suggestions": rows}))  # fmt: skip
        return 0
    print(
        f"{len(labeled)} labeled slice(s) along axis {axis}; next to annotate "
        f"({args.strategy}{', from the ' + name + ' map' if uncertainty is not None else ''}):"
    )
    for rank, p in enumerate(picks, 1):
        print(f"{rank}. {p.why}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_semiseg.io import label_volume, read_labels
    from src_models.metrics import evaluate, json_ready

    _check_at_least("--classes", args.classes, 2)
    _check_at_least("--ignore-label", args.ignore_label, 1)
    from napari_semiseg.io import geometry_mismatch
    from src_models.data.label_values import check_unannotated_marker, present_values

    pred, pred_meta = read_labels(args.pred)
    truth, meta = read_labels(args.truth)
    problem = "" if args.ignore_geometry else geometry_mismatch(meta, pred_meta)
    if problem:  # the rule `train` applies to an image and its labels
        raise SemisegError(
            f"{args.pred} and {args.truth} are not on the same voxel grid ({problem}): a "
            "voxel-by-voxel score would compare different places; resample one onto the "
            "other, or pass --ignore-geometry if only the headers differ"
        )
    check_unannotated_marker(present_values([truth], args.ignore_label), args.ignore_label, "truth")
    if args.ignore_label is not None:  # unannotated voxels of the truth are not scored
        unknown = truth == args.ignore_label
        if pred.shape == truth.shape:
            pred = np.where(unknown, 0, pred)
        truth = np.where(unknown, 0, truth)
    if args.exclude_slices:
        from src_models.data.volumes import check_axis

        check_axis(args.axis)
        pred, truth = label_volume(pred, pred_meta), label_volume(truth, meta)
        if pred.shape != truth.shape:
            raise SemisegError(
                f"prediction {pred.shape} and truth {truth.shape} must be volumes of one "
                "shape to exclude slices"
            )
        (skip,) = _parse_slices(args.exclude_slices, 1, "--exclude-slices")
        bad = [i for i in skip if not 0 <= i < truth.shape[args.axis]]
        if bad:
            raise SemisegError(f"--exclude-slices {bad} out of range along axis {args.axis}")
        keep = np.ones(truth.shape[args.axis], bool)
        keep[skip] = False
        if not keep.any():
            raise SemisegError(
                f"--exclude-slices leaves none of the {truth.shape[args.axis]} slices along "
                f"axis {args.axis} to score: exclude fewer"
            )
        pred, truth = np.compress(keep, pred, args.axis), np.compress(keep, truth, args.axis)
        print(
            f"scoring the {int(keep.sum())} slices along axis {args.axis} not excluded",
            file=sys.stderr,
        )
    result = evaluate(pred, truth, num_classes=args.classes, spacing=meta.spacing)
    if args.json:
        print(json.dumps(json_ready(result), indent=2))
        return 0
    unit = meta.unit if meta.calibrated else None
    unit = unit or ("voxels" if not meta.calibrated else "the file's spacing units")
    print(f"{'class':>6} {'dice':>7} {'jaccard':>8} {'hd95':>8} {'asd':>8}  (distances in {unit})")
    for cls, row in result["per_class"].items():
        print(
            f"{cls:>6} {row['dice']:7.4f} {row['jaccard']:8.4f} {_fmt(row['hd95']):>8} "
            f"{_fmt(row['asd']):>8}"
        )
    m = result["mean"]
    print(
        f"{'mean':>6} {m['dice']:7.4f} {m['jaccard']:8.4f} {_fmt(m['hd95']):>8} {_fmt(m['asd']):>8}"
    )
    return 0


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def cmd_methods(args: argparse.Namespace) -> int:
    from src_models.methods.base import METHODS, config_params, method_names, param_words

    for name, (_, text) in ZERO_TRAINING.items():
        print(f"{name}: {text}\n")
    for name in method_names():
        cls = METHODS[name]
        print(f"{name}: {cls.description}")
        if cls.budget_note:
            print(f"  when it pays off: {cls.budget_note}")
        print(f"  maps: {', '.join(cls.map_names)}")
        for p in config_params(cls.Config):
            choices = f" {{{'|'.join(map(str, p.choices))}}}" if p.choices else ""
            default = ",".join(map(str, p.default)) if isinstance(p.default, tuple) else p.default
            words = param_words(p.name)
            plain = words == p.name.replace("_", " ") or words.lower() in p.help.lower()
            said = "" if plain else f"{words}: "
            print(f"  --set {p.name}={default}{choices}  {said}{p.help}")
        print()
    return 0


def _launched_rank() -> int:
    """This process's rank under torchrun (``RANK``), 0 otherwise."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class _Parser(argparse.ArgumentParser):
    """Under torchrun every rank parses the same command line: rank 0 alone says what is
    wrong with it, the others exit with the same code silently."""

    def error(self, message: str):
        if _launched_rank() != 0:
            sys.exit(EXIT_USER_ERROR)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="semiseg",
        description="Semi-supervised segmentation of 3D volumes from a few labeled slices.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a method on labeled slices + unlabeled slices")
    t.add_argument("--image", nargs="+", required=True, help="image volume(s)")
    t.add_argument("--labels", nargs="+", required=True, help="label volume(s), one per image")
    t.add_argument("--unlabeled", nargs="*", default=[], help="extra volumes without labels")
    t.add_argument("--labeled-slices", help="e.g. 3,17,30 (default: slices with any label)")
    t.add_argument("--axis", type=int, default=0, help="slicing axis 0, 1 or 2 (default 0)")
    t.add_argument("--method", default="supervised", help="see 'semiseg methods'")
    t.add_argument("--out", required=True, help="run directory (model, log, config)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, help="iteration budget (default 1000)")
    budget.add_argument("--minutes", type=float, help="wall-clock budget in minutes")
    t.add_argument("--patch", type=int, default=128, help="training crop size (multiple of 16)")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    t.add_argument("--classes", type=int, help="class count incl. background (default max+1)")
    t.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="method hyperparameters (see 'semiseg methods'); repeat --set or list several",
    )
    t.add_argument("--checkpoint-every", type=int, default=250)
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument(
        "--force",
        action="store_true",
        help="start over in an --out that holds a run; its files move to a 'replaced-<time>' "
        "subfolder (nothing is deleted)",
    )
    t.add_argument(
        "--ignore-label",
        type=int,
        help="label value of unannotated voxels (nnU-Net's 'ignore label', e.g. 255): not "
        "trained on; slices holding only this value are unlabeled",
    )
    t.add_argument(
        "--binary",
        action="store_true",
        help="train every nonzero label value as one foreground class (e.g. instance masks)",
    )
    t.add_argument(
        "--ignore-geometry",
        action="store_true",
        help="train even when the image's and the labels' headers (affine/spacing) differ",
    )
    t.add_argument(
        "--warmup",
        type=float,
        default=0.4,
        help="share of the budget for the supervised warm-up of semi-supervised methods",
    )
    t.add_argument(
        "--warmup-plateau",
        type=float,
        default=0.0,
        help="with > 0 (e.g. 0.05), the warm-up also ends once the supervised loss falls by "
        "less than this share from one window of iterations to the next (default 0: off)",
    )
    t.add_argument(
        "--prior-fraction",
        type=float,
        default=None,
        help="share of each labeled batch whose targets come from the zero-training --prior "
        "on the unlabeled slices, weighted by its confidence (0: off; default 0.5)",
    )
    t.add_argument(
        "--prior",
        choices=("propagation", "interpolation"),
        default="propagation",
        help="the zero-training result the prior's targets come from: the random-walker "
        "propagation (default) or the shape interpolation",
    )
    t.add_argument(
        "--prior-final",
        type=float,
        default=0.5,
        help="weight of the prior at the end of a semi-supervised run",
    )
    t.add_argument(
        "--foreground-crops",
        type=float,
        default=None,
        help="share of labeled crops placed over the labeled structure (default 0.5)",
    )
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment a volume with a trained model")
    p.add_argument("--model", required=True, help="run directory written by 'train'")
    p.add_argument("--image", required=True)
    p.add_argument("--out", required=True, help="OUT.(nii.gz|nii|zarr|tif|npy)")
    p.add_argument(
        "--maps",
        default="",
        help="comma-separated maps, e.g. confidence,discrepancy;"
        " each written beside OUT as OUT-stem_<map>.<ext>",
    )
    p.add_argument(
        "--labels",
        help="the sparse labels the model was trained from: the prediction is fused with "
        "their random-walker propagation (what the plugin shows; measured better than the "
        "network alone, docs/benchmarks.md)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument(
        "--largest-component",
        action="store_true",
        help="keep only the largest 3D connected component of each class (for one "
        "structure per class, e.g. an organ; not for many objects such as cells)",
    )
    p.set_defaults(func=cmd_predict)

    g = sub.add_parser("suggest", help="the next slices to annotate, ranked, with reasons")
    g.add_argument("--model", required=True, help="run directory written by 'train'")
    g.add_argument("--image", required=True)
    g.add_argument(
        "--labels", help="the labels so far (default: the slices the model was trained on)"
    )
    g.add_argument("-n", type=int, default=5, help="how many slices (default 5)")
    g.add_argument(
        "--strategy",
        choices=STRATEGY_CHOICES,
        default="strided",
        help="strided: ends of the predicted structure, then the middles of the largest gaps "
        "(default: evenly spaced choices are the baseline active learning rarely beats); "
        "uncertainty: the method's discrepancy (or 1 - confidence); uncertainty-distance: "
        "that times the distance to the nearest labeled slice",
    )
    g.add_argument("--device", default="auto")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.set_defaults(func=cmd_suggest)

    e = sub.add_parser("evaluate", help="per-class Dice/Jaccard/HD95/ASD of a prediction")
    e.add_argument("--pred", required=True)
    e.add_argument("--truth", required=True)
    e.add_argument("--classes", type=int, help="class count incl. background")
    e.add_argument("--json", action="store_true")
    e.add_argument(
        "--exclude-slices",
        help="e.g. 10,16,22: score only the other slices along --axis (the ones not labeled)",
    )
    e.add_argument("--axis", type=int, default=0, help="axis of --exclude-slices (default 0)")
    e.add_argument("--ignore-label", type=int, help="truth value of unannotated voxels: not scored")
    e.add_argument(
        "--ignore-geometry",
        action="store_true",
        help="score even when the two files' headers (affine/spacing) differ",
    )
    e.set_defaults(func=cmd_evaluate)

    m = sub.add_parser("methods", help="list methods, their maps and parameters")
    m.set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from napari_semiseg.io import LAZY_VOXELS_PROBLEM

        if LAZY_VOXELS_PROBLEM:
            raise SemisegError(LAZY_VOXELS_PROBLEM)
        return args.func(args)
    except SemisegError as exc:
        if args.debug:
            raise
        if _launched_rank() == 0:  # under torchrun: said once, by rank 0
            print(f"semiseg: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("semiseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("semiseg: error: out of memory: lower --batch-size or --patch", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # never a traceback in the user's face
        if args.debug:
            raise
        print(
            f"semiseg: internal error: {type(exc).__name__}: {exc} "
            "(rerun with --debug for details and report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
