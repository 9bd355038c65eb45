"""Shared helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HIPPOCAMPUS = ROOT.parent / "shared" / "data" / "hippocampus"


def machine() -> dict:
    return {
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def median_time(fn, repeats: int, warmup: int = 2) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 GEMM throughput, the peak the step's GFLOP/s is compared with."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t, _ = median_time(lambda: a @ b, repeats)
    return 2 * n**3 / t / 1e9


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=_default))
    return path


def write_json(path: Path, data: dict) -> Path:
    """``data`` as JSON into ``path`` (its folder made), atomically: an interrupted benchmark
    never leaves a half-written result (:func:`src_models.files.atomic_write`)."""
    from src_models.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


def _default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


def synthetic_batch_volume(z: int = 24, size: int = 128, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((z, size, size), np.uint8)
    for k in range(z):
        labels[k][(yy - size / 3) ** 2 + (xx - size / 3 - k) ** 2 < (size / 6) ** 2] = 1
        labels[k, size // 2 : size // 2 + size // 4, size // 2 : size // 2 + size // 5] = 2
    image = np.where(labels == 1, 200.0, np.where(labels == 2, 40.0, 110.0))
    return (image + rng.normal(0, 15, labels.shape)).astype(np.float32), labels
