"""Hippocampus protocol: k labeled volumes, the rest of `train` unlabeled, test on `test`.

The first ``k`` volumes of ``splits.json['train_order']`` are fully labeled (every slice
along ``--axis``), the other training volumes are unlabeled; the model is evaluated on the 60
``test`` volumes (per-class Dice, HD95 in mm). No model or threshold is selected on ``test``:
the last iteration is evaluated (methods that select checkpoints use held-out *labeled*
training slices). Every method runs at the same iteration budget, batch size and patch.

Usage: python benchmarks/accuracy.py --method crossmatch [--iterations 1000] [--labeled 5]
       [--set key=value ...] [--threads 2]
Writes benchmarks/results/accuracy_<method>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HIPPOCAMPUS, write_result  # noqa: E402

from napari_semiseg.io import read_labels, read_volume  # noqa: E402
from src_models.data import SliceSampler, make_volumes  # noqa: E402
from src_models.inference import predict_volume  # noqa: E402
from src_models.methods.base import METHODS, get_method  # noqa: E402
from src_models.metrics import evaluate  # noqa: E402
from src_models.training import TrainConfig, train  # noqa: E402
from src_models.training.checkpoint import create_model  # noqa: E402


def load(names: list[str], root: Path, with_labels: bool = True):
    images, labels, spacings = [], [], []
    for n in names:
        img, meta = read_volume(root / "images" / f"{n}.nii.gz")
        images.append(img)
        spacings.append(meta.spacing)
        labels.append(read_labels(root / "labels" / f"{n}.nii.gz")[0] if with_labels else None)
    return images, labels, spacings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="supervised")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--labeled", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--axis", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--tag", default="")
    ap.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="supervised warm-up share (the protocol predates the warm-up: 0 keeps it)",
    )
    ap.add_argument("--data", default=str(HIPPOCAMPUS))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data)
    splits = json.loads((root / "splits.json").read_text())
    labeled = splits["train_order"][: args.labeled]
    unlabeled = [n for n in splits["train"] if n not in labeled]
    cls = get_method(args.method)
    params = dict(kv.split("=", 1) for kv in args.set)

    li, ll, _ = load(labeled, root)
    ui, ul, _ = load(unlabeled, root, with_labels=False)
    if args.method == "supervised":  # the baseline never sees the unlabeled volumes
        ui, ul = [], []
    vols, k = make_volumes(li + ui, ll + ul, axis=args.axis, num_classes=3)
    sampler = SliceSampler(
        vols,
        patch_size=args.patch,
        batch_size=args.batch_size,
        seed=args.seed,
        holdout_fraction=cls.holdout_fraction,
    )
    bundle = create_model(
        args.method, params, 1, k, "cpu", seed=args.seed, axis=args.axis, patch_size=args.patch
    )
    t0 = time.perf_counter()
    last = {}

    def log(p):
        last.update(p.logs)
        if p.iteration % 100 == 0 or p.done:
            scalars = " ".join(f"{k}={v:.3g}" for k, v in p.logs.items())
            print(f"[{args.method}] {p.iteration}/{p.total} {p.elapsed:.0f}s {scalars}", flush=True)

    train(
        bundle,
        sampler,
        TrainConfig(
            iterations=args.iterations,
            batch_size=args.batch_size,
            patch_size=args.patch,
            seed=args.seed,
            checkpoint_every=0,
            warmup=args.warmup,
        ),
        callback=log,
    )
    train_s = time.perf_counter() - t0

    ti, tl, ts = load(splits["test"], root)
    rows = []
    t1 = time.perf_counter()
    for img, lbl, sp in zip(ti, tl, ts, strict=True):
        pred = predict_volume(bundle, img, [])
        rows.append(evaluate(pred.labels, lbl, num_classes=3, spacing=sp))
    infer_s = time.perf_counter() - t1
    per_class = {}
    for c in (1, 2):
        d = np.array([r["per_class"][c]["dice"] for r in rows])
        h = np.array([r["per_class"][c]["hd95"] for r in rows], dtype=float)
        per_class[c] = {
            "dice": float(d.mean()),
            "dice_std": float(d.std()),
            "hd95": float(np.nanmean(h)),
            "hd95_undefined": int(np.isnan(h).sum()),
        }
    mean_dice = float(np.mean([per_class[c]["dice"] for c in (1, 2)]))
    mean_hd = float(np.mean([per_class[c]["hd95"] for c in (1, 2)]))
    name = args.method + (f"_{args.tag}" if args.tag else "")
    result = {
        "method": args.method,
        "tag": args.tag,
        "params": params,
        "labeled_volumes": args.labeled,
        "labeled_slices": sum(len(v.labeled) for v in vols),
        "unlabeled_slices": sum(len(v.unlabeled) for v in vols) if ui else 0,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "patch": args.patch,
        "seed": args.seed,
        "train_seconds": train_s,
        "ms_per_iteration": 1000 * train_s / args.iterations,
        "inference_seconds": infer_s,
        "test_volumes": len(rows),
        "per_class": per_class,
        "mean_dice": mean_dice,
        "mean_hd95": mean_hd,
        "final_logs": last,
        "threads": torch.get_num_threads(),
        "map_names": list(METHODS[args.method].map_names),
    }
    path = write_result(f"accuracy_{name}", result)
    print(
        f"{name}: Dice ant {per_class[1]['dice']:.4f} post {per_class[2]['dice']:.4f} "
        f"mean {mean_dice:.4f}; HD95 {mean_hd:.2f} mm; train {train_s:.0f}s -> {path}"
    )


if __name__ == "__main__":
    main()
