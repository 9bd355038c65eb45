"""The viewer's memory and event loop while the Review dock's *Predict volume* runs.

Issue 22, item 4: on a 64 x 512 x 512 float32 volume (64 MiB) the viewer peaked at
3.35-3.73 GB during Predict volume and kept 1.7-1.9 GB afterwards, and the GUI froze for
0.85 s. This benchmark opens napari with both docks, adds such a volume (a noisy synthetic
structure) and sparse labels on 4 of its slices, loads a model of the product's default
size (``--method``: ``supervised`` or ``dfcps`` for the two-network maps), and clicks
*Predict volume* while a 10 ms timer on the GUI thread records the event loop's gaps.
Reported: the viewer's resident memory before, at its peak during the prediction (the
kernel's high-water mark, reset just before) and after, the seconds it took and the p99 /
max stall of the event loop. Goal: peak <= 1 GB over the viewer's baseline, no stall over
~100 ms.

    xvfb-run -a python benchmarks/predict_memory.py [--method dfcps] [--shape 64 512 512]

Writes ``benchmarks/results/predict_memory[_<method>].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
TICK_MS = 10


def status_mb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MB (Linux), None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset the kernel's resident-memory high-water mark (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def volume(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid in noise, float32, and its labels (uint8) on 4 slices."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    zz, yy, xx = np.ogrid[:z, :y, :x]
    inside = ((zz - z / 2) / (z / 3)) ** 2 + ((yy - y / 2) / (y / 4)) ** 2 + (
        (xx - x / 2) / (x / 5)
    ) ** 2 < 1
    image = (inside * 80.0 + 100.0 + rng.normal(0, 20, shape)).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    for s in np.linspace(z / 4, 3 * z / 4, 4).round().astype(int):
        labels[s] = inside[s]
    return image, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="supervised")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 512, 512])
    args = parser.parse_args(argv)

    import napari
    import torch
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_semiseg._qt import ReviewDock, TrainingDock
    from src_models.training.checkpoint import create_model, save_model

    image, labels = volume(tuple(args.shape))
    folder = Path(tempfile.mkdtemp(prefix="semiseg-predict-memory-"))
    bundle = create_model(args.method, {}, 1, 2, "cpu", seed=0, axis=0, patch_size=128)
    save_model(bundle, folder / "model")
    del bundle

    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name="volume")
    viewer.add_labels(labels, name="labels")
    training, review = TrainingDock(viewer), ReviewDock(viewer)
    viewer.window.add_dock_widget(training, name="Training")
    viewer.window.add_dock_widget(review, name="Review")
    app = QApplication.instance()
    assert training.load_model_from(folder / "model") is not None

    stamps: list[float] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))

    def settle(seconds: float) -> None:
        t = time.perf_counter()
        while time.perf_counter() - t < seconds:
            app.processEvents()
            time.sleep(0.005)

    settle(2.0)
    before = status_mb("VmRSS")
    peak_reset = reset_peak()
    timer.start()
    t0 = time.perf_counter()
    if not review.predict():
        print("Predict volume did not start", file=sys.stderr)
        return 1
    while review.worker is not None and time.perf_counter() - t0 < 900:
        app.processEvents()
        time.sleep(0.002)
    computed = time.perf_counter()  # the worker is done; the layers are being added
    while review.session.busy and time.perf_counter() - t0 < 900:
        app.processEvents()
        time.sleep(0.002)
    seconds = time.perf_counter() - t0
    settle(1.0)  # the layers drawn once
    timer.stop()
    peak = status_mb("VmHWM") if peak_reset else None
    settle(2.0)
    after = status_mb("VmRSS")
    gaps = np.diff(stamps) * 1000 if len(stamps) > 1 else np.zeros(1)
    stall = np.maximum(gaps - TICK_MS, 0)
    ends = np.asarray(stamps[1:]) if len(stamps) > 1 else np.zeros(1)
    during = stall[ends <= computed] if np.any(ends <= computed) else np.zeros(1)
    showing = stall[ends > computed] if np.any(ends > computed) else np.zeros(1)
    shown = [ly.name for ly in viewer.layers]
    viewer.close()
    result = {
        "method": args.method,
        "shape": list(args.shape),
        "image_mb": round(image.nbytes / 2**20, 1),
        "rss_before_mb": before,
        "rss_peak_mb": peak,
        "rss_after_mb": after,
        "peak_over_baseline_mb": round(peak - before, 1) if peak and before else None,
        "kept_after_mb": round(after - before, 1) if after and before else None,
        "predict_seconds": round(seconds, 2),
        "stall_p99_ms": round(float(np.percentile(stall, 99)), 1),
        "stall_max_ms": round(float(stall.max()), 1),
        "stall_max_computing_ms": round(float(during.max()), 1),
        "stall_max_showing_ms": round(float(showing.max()), 1),
        "layers": shown,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "goal": "peak <= 1024 MB over the baseline; no stall over ~100 ms",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "predict_memory" + (f"_{args.method}" if args.method != "supervised" else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
