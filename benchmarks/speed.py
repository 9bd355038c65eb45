"""Speed of the default configuration on this CPU.

- training step time (median ms/iteration) of every registered method at the same batch
  size and patch, and its ratio to the supervised step measured in the same run;
- the supervised step's achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode) as a
  fraction of a float32 matmul peak measured in the same run, with and without
  channels_last / bf16 autocast;
- inference throughput (slices/s) of the supervised U-Net on 128x128 slices.

Usage: python benchmarks/speed.py [--batch-size 8] [--patch 128] [--repeats 7]
       [--methods supervised,crossmatch,...]
Writes benchmarks/results/speed.json; benchmarks/report.py renders docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import matmul_peak_gflops, median_time, synthetic_batch_volume, write_result  # noqa: E402

from src_models.data import SliceSampler, make_volumes  # noqa: E402
from src_models.inference import predict_volume  # noqa: E402
from src_models.methods.base import METHODS, method_names  # noqa: E402
from src_models.training.checkpoint import create_model  # noqa: E402

#: methods with two training phases are timed in each (fraction of the run where it is timed)
PHASES = {"sdcl": {"phase A": 0.0, "phase B": 0.9}, "diffusion": {"phase 1": 0.0, "phase 2": 0.9}}


def make_sampler(batch: int, patch: int, seed: int = 0) -> tuple[SliceSampler, int]:
    image, labels = synthetic_batch_volume(size=max(patch, 64))
    sparse = np.zeros_like(labels)
    sparse[::6] = labels[::6]
    vols, k = make_volumes([image], [sparse])
    return SliceSampler(
        vols, patch_size=patch, batch_size=batch, seed=seed, holdout_fraction=0.0
    ), k


def step_time(
    method: str, batch: int, patch: int, repeats: int, params=None, iteration_fraction: float = 0.0
) -> float:
    sampler, k = make_sampler(batch, patch)
    bundle = create_model(method, params or {}, 1, k, seed=0, patch_size=patch)
    m = bundle.method
    m.train()
    total = 10_000
    it = [int(iteration_fraction * total)]

    def one():
        m.set_lr(it[0], total)
        m.train_step(sampler, it[0], total)
        it[0] += 1

    t, _ = median_time(one, repeats, warmup=2)
    return t


def supervised_flops(batch: int, patch: int) -> float:
    sampler, k = make_sampler(batch, patch)
    m = create_model("supervised", {}, 1, k, seed=0).method
    m.train()
    with FlopCounterMode(display=False) as counter:
        m.train_step(sampler, 0, 100)
    return float(counter.get_total_flops())


def supervised_variant_time(
    batch: int, patch: int, repeats: int, channels_last: bool, bf16: bool
) -> float:
    sampler, k = make_sampler(batch, patch)
    m = create_model("supervised", {}, 1, k, seed=0).method
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m.net.to(memory_format=fmt)
    m.train()
    from src_models.losses import ce_dice_loss

    opt = m.optimizers["net"]

    def one():
        b = sampler.labeled()
        x = b.image.contiguous(memory_format=fmt)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            logits = m.net(x)
        loss = ce_dice_loss(logits.float(), b.label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t, _ = median_time(one, repeats)
    return t


def inference_throughput(patch: int) -> float:
    image, labels = synthetic_batch_volume(z=64, size=patch)
    _, k = make_volumes([image], [labels])
    bundle = create_model("supervised", {}, 1, k, seed=0)
    t, _ = median_time(lambda: predict_volume(bundle, image, ["confidence"]), 3, warmup=1)
    return image.shape[0] / t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--methods", default=",".join(method_names()))
    ap.add_argument("--methods-only", action="store_true", help="only the method step times")
    ap.add_argument("--tag", default="", help="suffix of the results file (speed_<tag>.json)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    b, p, r = args.batch_size, args.patch, args.repeats
    peak = matmul_peak_gflops()
    flops = supervised_flops(b, p)
    variants = {}
    for cl in () if args.methods_only else (False, True):
        for bf in (False, True):
            t = supervised_variant_time(b, p, r, cl, bf)
            variants[f"channels_last={cl},bf16={bf}"] = {
                "ms": t * 1000,
                "gflops": flops / t / 1e9,
                "fraction_of_peak": flops / t / 1e9 / peak,
            }
            print(
                f"supervised channels_last={cl} bf16={bf}: {t * 1000:.1f} ms "
                f"{flops / t / 1e9:.1f} GFLOP/s ({flops / t / 1e9 / peak:.0%} of peak)"
            )
    methods = {}
    sup = None
    for name in args.methods.split(","):
        if name not in METHODS:
            continue
        fractions = PHASES.get(name, {"": 0.0})
        for phase, frac in fractions.items():
            t = step_time(name, b, p, r, iteration_fraction=frac)
            key = name + (f" ({phase})" if phase else "")
            if name == "supervised":
                sup = t
            methods[key] = {"ms": t * 1000}
            print(f"{key}: {t * 1000:.1f} ms/iteration")
    for v in methods.values():
        v["ratio_to_supervised"] = v["ms"] / (sup * 1000) if sup else None
    thr = float("nan") if args.methods_only else inference_throughput(p)
    print(
        f"inference: {thr:.1f} slices/s at {p}x{p}; matmul peak {peak:.1f} GFLOP/s; "
        f"supervised step {flops / 1e9:.2f} GFLOP"
    )
    write_result(
        "speed" + (f"_{args.tag}" if args.tag else ""),
        {
            "batch_size": b,
            "patch": p,
            "repeats": r,
            "matmul_peak_gflops": peak,
            "supervised_step_gflop": flops / 1e9,
            "supervised_variants": variants,
            "methods": methods,
            "inference_slices_per_s": thr,
        },
    )


if __name__ == "__main__":
    main()
