"""GUI responsiveness while the training dock trains a default-size model.

A 10 ms QTimer on the GUI thread records the time between its ticks; a tick that comes late
means the event loop was stalled (by the GIL, by CPU contention, or by work done on the GUI
thread such as the preview layer updates). Meanwhile the slice slider moves every 200 ms, so
the canvas redraws as it would under a user. Reported: p50/p99/max of the tick gaps, and the
stall (gap - 10 ms), for an idle baseline, while the training process starts (the worker
saves the labels, shares the image and spawns the child, which imports torch), and during
training; also the start-up time (Train to the first progress event), the stop latency
(Stop to the model loaded back in the viewer) and the viewer's resident memory before, during
and after the run.

Run under a display (``xvfb-run -a python benchmarks/gui_responsiveness.py``, ~60 s); writes
``benchmarks/results/gui_responsiveness.json`` and a markdown table ``...md``.
Goal: p99 stall <= 50 ms, max <= 200 ms.

Findings on the 2-CPU test machine (shared with other jobs, 1-min load ~5, xvfb + Mesa
software OpenGL), measured when the trainer still ran in a thread of the napari process:

- The GIL was not the limit. The trainer released it inside every torch kernel; the event
  loop during training stalled p99 ~11 ms, max ~57 ms (idle: p99 ~4 ms).
- What did hurt was CPU contention: with torch's default two intra-op threads on two busy
  cores the OpenMP workers oversubscribe the machine (1-2 iterations per 20 s instead of ~9),
  and the GUI thread waits for a core. The dock therefore trains with all CPUs but one
  (``TrainRequest.threads``) and at a lower CPU priority (``TrainRequest.nice``, +10), so
  the GUI thread wins the CPU whenever it needs it.
- With the slider moving, each redraw costs ~150-200 ms of software rendering in xvfb whether
  or not training runs (idle p99 ~170 ms); training adds nothing measurable on top. On a
  machine with a GPU-backed OpenGL these redraws take a few ms.

Training now runs in a child process (issue 10: a native crash or an out-of-memory kill must
not end the viewer), with the same thread count and its whole process at the lower priority;
the child has its own GIL and gives its memory back when it exits. The numbers of this design
are in docs/benchmarks.md.
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


def rss_mb() -> float | None:
    """Resident memory of this process in MB (Linux; None elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


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
        help="torch threads of the training process (0: the dock's default, all CPUs but one)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument(
        "--nice",
        type=int,
        default=None,
        help="CPU priority drop of the training process (default: the dock's)",
    )
    args = parser.parse_args(argv)

    import napari
    import torch
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_semiseg._jobs import TrainingUpdate
    from napari_semiseg._qt.training_dock import TrainingDock
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

    def wait_for(condition, timeout: float) -> float:
        """Process events until ``condition()``; returns the seconds it took."""
        t = time.perf_counter()
        while not condition() and time.perf_counter() - t < timeout:
            app.processEvents()
            time.sleep(0.005)
        return time.perf_counter() - t

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
    first_event: list[float] = []
    on_update = dock._on_update  # connected by start_training: wrap it before

    def record_first(update) -> None:
        if isinstance(update, TrainingUpdate) and not first_event:
            first_event.append(time.perf_counter())
        on_update(update)

    dock._on_update = record_first
    memory = {"before_mb": rss_mb()}
    t_start = time.perf_counter()
    if not dock.start_training():
        print("training did not start", file=sys.stderr)
        return 1
    # the event loop while the worker spawns the training process, up to its first event
    starting: list[float] = []
    while not first_event and time.perf_counter() - t_start < 120:
        starting += run_loop(0.25, False)
    if not first_event:
        print("no progress from the training process in 120 s", file=sys.stderr)
        return 1
    startup = first_event[0] - t_start
    phases["training process starting"] = starting
    run_loop(args.warmup, False)
    first = last_iteration()
    t0 = time.perf_counter()
    phases["training"] = run_loop(args.seconds / 2, False)
    phases["training, slider moving"] = run_loop(args.seconds / 2, True)
    elapsed = time.perf_counter() - t0
    its = last_iteration() - first
    nice, threads = dock.job.request.nice, dock.job.request.thread_count()
    memory["training_mb"] = rss_mb()
    dock.stop()
    stop_latency = wait_for(lambda: dock.worker is None, 120)
    memory["after_mb"] = rss_mb()
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
            "training_process_nice": nice,
            "startup_seconds": round(startup, 2),
            "stop_seconds": round(stop_latency, 2),
            "viewer_rss_mb": memory,
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
        f"{s['torch_threads']} torch thread(s) at nice +{s['training_process_nice']}, "
        f"{s['cpu_count']} CPUs (1-min load "
        f"{s['load_average_1min']}), {s['iterations_measured']} iterations in "
        f"{s['measured_seconds']} s. Training process start-up (Train to first progress) "
        f"{s['startup_seconds']} s, stop (Stop to model loaded) {s['stop_seconds']} s; viewer "
        f"RSS {memory['before_mb']} / {memory['training_mb']} / {memory['after_mb']} MB before "
        "/ during / after. Goal: p99 stall <= 50 ms, max <= 200 ms."
    )
    table = "\n".join(rows) + "\n"
    (RESULTS / f"{stem}.md").write_text(table)
    print(json.dumps(result, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
