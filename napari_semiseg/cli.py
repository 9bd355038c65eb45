"""The ``semiseg`` command line: train, predict, evaluate, methods.

Runs headless (no Qt import). Every user-fixable problem ends with a one-line
``semiseg: error: ...`` on stderr and exit code 2, no traceback (``--debug`` shows one).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from src_models.errors import SemisegError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _parse_slices(text: str | None, n_images: int) -> list[list[int] | None] | None:
    """ "3,17,30" (every image) or "3,17;5,9" (one group per image, ';'-separated)."""
    if text is None:
        return None
    groups = [g for g in text.split(";")]
    try:
        parsed = [[int(s) for s in g.split(",") if s.strip()] for g in groups]
    except ValueError:
        raise SemisegError(
            f"--labeled-slices {text!r} is not a list of slice numbers: use e.g. 3,17,30 "
            "(or 3,17;5,9 with one group per image)"
        ) from None
    if len(parsed) == 1:
        return parsed * n_images
    if len(parsed) != n_images:
        raise SemisegError(
            f"--labeled-slices has {len(parsed)} groups for {n_images} images: give one group "
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
INTERPOLATE_HELP = (
    "no training, instant: shape-based interpolation between the labeled slices, per class, "
    "along --axis (3D Slicer's / ITK-SNAP's 'fill between slices'); the bar every method "
    "must beat. Writes <labels-stem>_interpolation.<ext> per labeled volume into --out."
)


def _check_fraction(name: str, value: float, high_open: bool = False) -> None:
    ok = math.isfinite(value) and 0.0 <= value and (value < 1.0 if high_open else value <= 1.0)
    if not ok:
        bound = "[0, 1)" if high_open else "[0, 1]"
        raise SemisegError(f"{name} must be a number in {bound}, got {value}")


def _interpolate(args: argparse.Namespace, volumes, label_metas, num_classes: int) -> int:
    """``train --method interpolate``: write the interpolation of each labeled volume."""
    from napari_semiseg.io import map_path, write_volume
    from src_models.data.volumes import from_slices
    from src_models.interpolation import interpolate_slices

    out = Path(args.out)
    targets = []
    for vol, meta, path in zip(volumes, label_metas, args.labels, strict=False):
        target = map_path(out / Path(str(path).rstrip("/\\")).name, "interpolation")
        if target.exists():
            raise SemisegError(f"{target} exists: choose another --out (nothing is overwritten)")
        targets.append((vol, meta, target))
    out.mkdir(parents=True, exist_ok=True)
    for vol, meta, target in targets:
        t0 = time.perf_counter()
        interp = interpolate_slices(vol.labels, vol.labeled, num_classes)
        mask = from_slices(interp.labels, vol.axis).astype(
            np.uint8 if num_classes <= 256 else np.uint16
        )
        write_volume(target, mask, meta, labels=True)
        covered = int(interp.covered.sum())
        print(
            f"wrote {target}: {len(vol.labeled)} labeled slice(s), {covered - len(vol.labeled)} "
            f"filled between them, in {time.perf_counter() - t0:.2f} s"
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from napari_semiseg.io import read_labels, read_volume
    from src_models.data import SliceSampler, make_volumes
    from src_models.data.sampler import DEFAULT_FOREGROUND_CROPS, DEFAULT_PRIOR_FRACTION
    from src_models.device import select_device
    from src_models.methods.base import config_to_dict, get_method
    from src_models.training import TrainConfig, TrainingControl, train
    from src_models.training.checkpoint import create_model, load_model

    if len(args.labels) != len(args.image):
        raise SemisegError(
            f"{len(args.image)} --image but {len(args.labels)} --labels: give one labels file "
            "per image (use --unlabeled for volumes without labels)"
        )
    if args.iterations is not None and args.iterations < 1:
        raise SemisegError("--iterations must be at least 1")
    if args.minutes is not None and not (math.isfinite(args.minutes) and args.minutes > 0):
        raise SemisegError("--minutes must be a positive number")
    _check_fraction("--warmup", args.warmup)
    _check_fraction("--warmup-plateau", args.warmup_plateau)
    _check_fraction("--prior-final", args.prior_final)
    if args.prior_fraction is not None:
        _check_fraction("--prior-fraction", args.prior_fraction, high_open=True)
    if args.foreground_crops is not None:
        _check_fraction("--foreground-crops", args.foreground_crops)
    if args.method == INTERPOLATE and args.resume:
        raise SemisegError("--method interpolate trains nothing: drop --resume")
    method_cls = None if args.method == INTERPOLATE else get_method(args.method)
    params = _parse_set(args.set)
    device = select_device(args.device)
    images, labels, spacing, label_metas = [], [], None, []
    for img_path, lbl_path in zip(args.image, args.labels, strict=True):
        img, meta = read_volume(img_path)
        lbl, lbl_meta = read_labels(lbl_path)
        images.append(img)
        labels.append(lbl)
        label_metas.append(lbl_meta)
        spacing = spacing or meta.spacing
    for path in args.unlabeled or []:
        images.append(read_volume(path)[0])
        labels.append(None)
    chosen = _parse_slices(args.labeled_slices, len(args.labels))
    if chosen is not None:
        chosen = chosen + [None] * (len(images) - len(chosen))
    volumes, num_classes = make_volumes(
        images, labels, axis=args.axis, labeled_slices=chosen, num_classes=args.classes
    )
    if method_cls is None:
        return _interpolate(args, volumes, label_metas, num_classes)
    n_lab = sum(len(v.labeled) for v in volumes)
    n_unl = sum(len(v.unlabeled) for v in volumes)
    print(
        f"{len(volumes)} volume(s), axis {args.axis}: {n_lab} labeled slice(s), "
        f"{n_unl} unlabeled, {num_classes} classes; method {args.method} on {device}"
    )
    sampler = SliceSampler(
        volumes,
        patch_size=args.patch,
        batch_size=args.batch_size,
        device=device,
        seed=args.seed,
        holdout_fraction=method_cls.holdout_fraction,
        foreground_crops=DEFAULT_FOREGROUND_CROPS
        if args.foreground_crops is None
        else args.foreground_crops,
        prior_fraction=DEFAULT_PRIOR_FRACTION
        if args.prior_fraction is None
        else args.prior_fraction,
    )
    if sampler.patch_size != args.patch:
        print(f"training crops of {sampler.patch_size} pixels (the slices are no larger)")
    out = Path(args.out)
    if args.resume:
        bundle = load_model(out, device=device, expect_method=args.method)
        print(f"resuming from iteration {bundle.iteration}")
    else:
        bundle = create_model(
            args.method,
            params,
            volumes[0].slices.shape[1],
            num_classes,
            device,
            seed=args.seed,
            axis=args.axis,
            patch_size=args.patch,
            info={"spacing": list(spacing or ())},
        )
    iterations = (
        args.iterations if args.iterations is not None else (1000 if args.minutes is None else 0)
    )
    config = TrainConfig(
        iterations=iterations,
        minutes=args.minutes,
        batch_size=args.batch_size,
        patch_size=args.patch,
        seed=args.seed,
        device=str(device),
        checkpoint_every=args.checkpoint_every,
        warmup=args.warmup,
        warmup_plateau=args.warmup_plateau,
        prior_final=args.prior_final,
    )
    control = TrainingControl()
    printer = _ProgressPrinter(every=max(1, args.log_every))

    def stop_gracefully(signum, frame):  # first Ctrl-C: checkpoint and stop; second: abort
        print("\nstopping after this iteration (Ctrl-C again to abort)...", file=sys.stderr)
        control.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, stop_gracefully)
    try:
        train(bundle, sampler, config, out_dir=out, callback=printer, control=control)
    finally:
        signal.signal(signal.SIGINT, previous)
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
        },
    }
    (out / "config.json").write_text(json.dumps(final, indent=2))
    if control.stop_requested:
        print(
            f"stopped at iteration {bundle.iteration}: checkpoint in {out} "
            "(continue with the same command and --resume)"
        )
        return EXIT_INTERRUPTED
    print(f"model written to {out} (iteration {bundle.iteration})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from napari_semiseg.io import map_path, read_volume, volume_format, write_volume
    from src_models.device import select_device
    from src_models.inference import predict_volume
    from src_models.training.checkpoint import load_model

    volume_format(args.out)  # fail early on an unsupported extension
    maps = [m.strip() for m in (args.maps or "").split(",") if m.strip()]
    bundle = load_model(args.model, device=select_device(args.device))
    image, meta = read_volume(args.image)
    pred = predict_volume(bundle, image, maps, batch_size=args.batch_size)
    if args.largest_component:
        from src_models.postprocess import largest_component_3d

        pred.labels = largest_component_3d(pred.labels, bundle.num_classes)
    written: list[Path] = []
    try:
        written.append(write_volume(args.out, pred.labels, meta, labels=True))
        for name in maps:
            written.append(write_volume(map_path(args.out, name), pred.maps[name], meta))
    except BaseException:
        for path in written:
            _remove(path)
        raise
    counts = np.bincount(pred.labels.ravel(), minlength=bundle.num_classes)
    print(f"wrote {written[0]} (voxels per class: {counts.tolist()})")
    for path in written[1:]:
        print(f"wrote {path}")
    return 0


def _remove(path: Path) -> None:
    import shutil

    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_semiseg.io import read_labels
    from src_models.metrics import evaluate, json_ready

    pred, _ = read_labels(args.pred)
    truth, meta = read_labels(args.truth)
    if args.exclude_slices:
        from src_models.data.volumes import check_axis

        check_axis(args.axis)
        if pred.shape != truth.shape or pred.ndim != 3:
            raise SemisegError(
                f"prediction {pred.shape} and truth {truth.shape} must be 3D volumes of one "
                "shape to exclude slices"
            )
        (skip,) = _parse_slices(args.exclude_slices, 1)
        bad = [i for i in skip if not 0 <= i < truth.shape[args.axis]]
        if bad:
            raise SemisegError(f"--exclude-slices {bad} out of range along axis {args.axis}")
        keep = np.ones(truth.shape[args.axis], bool)
        keep[skip] = False
        pred, truth = np.compress(keep, pred, args.axis), np.compress(keep, truth, args.axis)
        print(
            f"scoring the {int(keep.sum())} slices along axis {args.axis} not excluded",
            file=sys.stderr,
        )
    result = evaluate(pred, truth, num_classes=args.classes, spacing=meta.spacing)
    if args.json:
        print(json.dumps(json_ready(result), indent=2))
        return 0
    print(f"{'class':>6} {'dice':>7} {'jaccard':>8} {'hd95':>8} {'asd':>8}  (distances in mm)")
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
    from src_models.methods.base import METHODS, config_params, method_names

    print(f"{INTERPOLATE}: {INTERPOLATE_HELP}\n")
    for name in method_names():
        cls = METHODS[name]
        print(f"{name}: {cls.description}")
        print(f"  maps: {', '.join(cls.map_names)}")
        for p in config_params(cls.Config):
            choices = f" {{{'|'.join(map(str, p.choices))}}}" if p.choices else ""
            default = ",".join(map(str, p.default)) if isinstance(p.default, tuple) else p.default
            print(f"  --set {p.name}={default}{choices}  {p.help}")
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="method hyperparameters (see 'semiseg methods')",
    )
    t.add_argument("--checkpoint-every", type=int, default=250)
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
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
        help="share of each labeled batch taken from interpolated slices between labeled "
        "ones (0: off; default 0.5)",
    )
    t.add_argument(
        "--prior-final",
        type=float,
        default=0.5,
        help="weight of the interpolation prior at the end of a semi-supervised run",
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
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--largest-component",
        action="store_true",
        help="keep only the largest 3D connected component of each class (for one "
        "structure per class, e.g. an organ; not for many objects such as cells)",
    )
    p.set_defaults(func=cmd_predict)

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
    e.set_defaults(func=cmd_evaluate)

    m = sub.add_parser("methods", help="list methods, their maps and parameters")
    m.set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SemisegError as exc:
        if args.debug:
            raise
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
