"""GUI responsiveness while the training dock trains a default-size model in its worker.

A 10 ms QTimer on the GUI thread records the time between its ticks; a tick that comes late
means the event loop was stalled (by the GIL, by CPU contention, or by work done on the GUI
thread such as the preview layer updates). Meanwhile the slice slider moves every 200 ms, so
the canvas redraws as it would under a user. Reported: p50/p99/max of the tick gaps, and the
stall (gap - 10 ms), for an idle baseline and during training.

Run under a display (``xvfb-run -a python benchmarks/gui_responsiveness.py``, ~60 s); writes
``benchmarks/results/gui_responsiveness.json`` and a markdown table ``...md``.
Goal: p99 stall <= 50 ms, max <= 200 ms.

Findings on the 2-CPU test machine (shared with other jobs, 1-min load ~5, xvfb + Mesa
software OpenGL):

- The GIL is not the limit. The trainer releases it inside every torch kernel; the event loop
  during training stalls p99 ~11 ms, max ~57 ms (idle: p99 ~4 ms). No training subprocess
  is needed for the goal; the worker thread stays.
- What did hurt was CPU contention: with torch's default two intra-op threads on two busy
  cores the OpenMP workers oversubscribe the machine (1-2 iterations per 20 s instead of ~9),
  and the GUI thread waits for a core. The dock therefore trains with all CPUs but one
  (``TrainRequest.threads``) and at a lower per-thread priority (``TrainRequest.nice``, +10,
  Linux), so the GUI thread wins the CPU whenever it needs it.
- With the slider moving, each redraw costs ~150-200 ms of software rendering in xvfb whether
  or not training runs (idle p99 ~170 ms); training adds nothing measurable on top. On a
  machine with a GPU-backed OpenGL these redraws take a few ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
TICK_MS = 10


def summarise(gaps_ms: list[float]) -> dict[str, float]:
    g = np.asarray(gaps_ms, dtype=float)
    stall = np.maximum(g - TICK_MS, 0.0)
    return {
        "ticks": int(g.size),
        "gap_p50_ms": round(float(np.percentile(g, 50)), 2),
        "gap_p99_ms": round(float(np.percentile(g, 99)), 2),
        "gap_max_ms": round(float(g.max()), 2),
        "stall_p50_ms": round(float(np.percentile(stall, 50)), 2),
        "stall_p99_ms": round(float(np.percentile(stall, 99)), 2),
        "stall_max_ms": round(float(stall.max()), 2),
        "stalls_over_50ms": int((stall > 50).sum()),
        "stalls_over_200ms": int((stall > 200).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=24.0,
        help="measured training time (half without, half with redraws)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=4.0,
        help="seconds of training before measuring (first-iteration set-up)",
    )
    parser.add_argument("--method", default="supervised")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of the training thread (0: the dock's default, all CPUs but one)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument(
        "--nice",
        type=int,
        default=None,
        help="CPU priority drop of the training thread (default: the dock's)",
    )
    args = parser.parse_args(argv)

    import napari
    import torch
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_semiseg._training_dock import TrainingDock
    from src_models.methods.base import config_params, get_method

    run_root = tempfile.mkdtemp(prefix="semiseg-bench-")
    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-semiseg", "hippocampus")
    dock = TrainingDock(viewer)
    dock.session.run_root = Path(run_root)
    viewer.window.add_dock_widget(dock, name="Training")
    dock.labels_combo.set_layer("labels")
    dock.method_combo.setCurrentText(args.method)
    defaults = {p.name: p.default for p in config_params(get_method(args.method).Config)}
    dock.iterations.setValue(1_000_000)
    dock.batch_size.setValue(args.batch_size)
    dock.patch_size.setValue(args.patch)
    dock.device_combo.setCurrentText("cpu")
    app = QApplication.instance()

    stamps: list[float] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))

    slider = QTimer()
    slider.setInterval(200)
    position = {"step": 0}

    def move_slider() -> None:
        position["step"] = (position["step"] + 1) % viewer.dims.nsteps[0]
        viewer.dims.set_current_step(0, position["step"])

    slider.timeout.connect(move_slider)

    def run_loop(seconds: float, redraw: bool) -> list[float]:
        """Run the real Qt event loop for ``seconds``; returns the 10 ms tick gaps."""
        stamps.clear()
        loop = QEventLoop()
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        timer.start()
        if redraw:
            slider.start()
        loop.exec_()
        timer.stop()
        slider.stop()
        return list(np.diff(stamps) * 1000)

    def last_iteration() -> int:
        xs = dock.session.history.series.get("loss", ([], []))[0]
        return xs[-1] if xs else 0

    run_loop(2.0, False)  # first draws and dock layout settle
    phases = {"idle": run_loop(3.0, False), "idle, slider moving": run_loop(3.0, True)}
    make_request = dock.request

    def request_with_overrides():
        req = make_request()
        if args.nice is not None:
            req.nice = args.nice
        if args.threads:
            req.threads = args.threads
        return req

    dock.request = request_with_overrides
    if not dock.start_training():
        print("training did not start", file=sys.stderr)
        return 1
    run_loop(args.warmup, False)
    first = last_iteration()
    t0 = time.perf_counter()
    phases["training"] = run_loop(args.seconds / 2, False)
    phases["training, slider moving"] = run_loop(args.seconds / 2, True)
    elapsed = time.perf_counter() - t0
    its = last_iteration() - first
    nice, threads = dock.job.request.nice, dock.job.request.thread_count()
    dock.stop()
    while dock.worker is not None:
        app.processEvents()
        time.sleep(0.01)
    dock.shutdown()
    viewer.close()
    shutil.rmtree(run_root, ignore_errors=True)

    result = {
        "setup": {
            "method": args.method,
            "channels": list(defaults.get("channels", [])),
            "batch_size": args.batch_size,
            "patch_size": args.patch,
            "torch_threads": threads,
            "training_thread_nice": nice,
            "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "measured_seconds": round(elapsed, 1),
            "iterations_measured": int(its),
            "seconds_per_iteration": round(elapsed / its, 3) if its else None,
            "tick_ms": TICK_MS,
            "slider_step_ms": 200,
        },
        **{name: summarise(gaps) for name, gaps in phases.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "gui_responsiveness" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        "| GUI event loop (10 ms timer) | p50 gap | p99 gap | max gap | p99 stall | max stall |",
        "|---|---|---|---|---|---|",
    ]
    for name in phases:
        r = result[name]
        rows.append(
            f"| {name} | {r['gap_p50_ms']} ms | {r['gap_p99_ms']} ms | {r['gap_max_ms']} ms "
            f"| {r['stall_p99_ms']} ms | {r['stall_max_ms']} ms |"
        )
    s = result["setup"]
    rows.append("")
    rows.append(
        f"{s['method']} U-Net {s['channels']}, batch {s['batch_size']}, patch {s['patch_size']}, "
        f"{s['torch_threads']} torch thread(s) at nice +{s['training_thread_nice']}, "
        f"{s['cpu_count']} CPUs (1-min load "
        f"{s['load_average_1min']}), {s['iterations_measured']} iterations in "
        f"{s['measured_seconds']} s. Goal: p99 stall <= 50 ms, max <= 200 ms."
    )
    table = "\n".join(rows) + "\n"
    (RESULTS / f"{stem}.md").write_text(table)
    print(json.dumps(result, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
