"""Training throughput with one core busy elsewhere (issue 18, goal 6).

Seconds per supervised iteration (the default recipe's network, batch 8, 128-pixel crops of
a synthetic 24 x 192 x 160 volume), measured in one run, on the quiet machine and while a
busy-loop process keeps one core busy:

- ``quiet``: all cores' threads (torch's default), nothing else running;
- ``loaded, all threads``: the same threads, one core busy (what ``semiseg train`` did);
- ``loaded, 1 thread``: one thread fixed;
- ``loaded, adaptive``: the recipe's default, :class:`ThreadGovernor` (threads = the cores
  other processes leave free).

The goal: loaded within 2x of quiet. Run it on an otherwise idle machine:

    python benchmarks/speed_under_load.py     # -> benchmarks/results/speed_under_load.json
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time

import numpy as np
import torch
from _common import write_result

from src_models.recipe import RunRecipe, build_run
from src_models.training.threads import ThreadGovernor

ITERATIONS = 12
WARMUP = 3


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2147483647


def _volume():
    rng = np.random.default_rng(0)
    z, y, x = 24, 192, 160
    zz, yy, xx = np.mgrid[:z, :y, :x]
    labels = (yy - 96) ** 2 / 50**2 + (xx - 80) ** 2 / 40**2 + (zz - 12) ** 2 / 10**2 <= 1
    image = labels * 1.0 + rng.normal(0, 0.3, labels.shape)
    sparse = np.zeros(labels.shape, np.uint8)
    labeled = [4, 12, 20]
    sparse[labeled] = labels[labeled]
    return image.astype(np.float32), sparse, labeled


def seconds_per_iteration(threads: int, adaptive: bool) -> float:
    image, sparse, labeled = _volume()
    torch.set_num_threads(threads)
    run = build_run(RunRecipe(prior_fraction=0.0), [image], [sparse], [labeled])
    method, data = run.bundle.method, run.sampler
    governor = None
    if adaptive:
        governor = ThreadGovernor(max_threads=threads, period=2.0)
        governor.start()
    method.train()
    times = []
    for i in range(WARMUP + ITERATIONS):
        if governor is not None:
            governor.update()
        t = time.perf_counter()
        method.train_step(data, i, WARMUP + ITERATIONS)
        times.append(time.perf_counter() - t)
    return statistics.median(times[WARMUP:]), torch.get_num_threads()


def main() -> None:
    cores = torch.get_num_threads()
    rows = {}
    rows["quiet"] = seconds_per_iteration(cores, False)
    stop = mp.Event()
    spinner = mp.Process(target=_spin, args=(stop,), daemon=True)
    spinner.start()
    try:
        time.sleep(1.0)
        rows["loaded, all threads"] = seconds_per_iteration(cores, False)
        rows["loaded, 1 thread"] = seconds_per_iteration(1, False)
        rows["loaded, adaptive"] = seconds_per_iteration(cores, True)
    finally:
        stop.set()
        spinner.join()
    quiet = rows["quiet"][0]
    result = {}
    for name, (sec, threads) in rows.items():
        result[name] = {"seconds": sec, "threads": threads, "vs_quiet": sec / quiet}
        print(f"{name:22s} {sec:.3f} s/iteration, {threads} thread(s), {sec / quiet:.2f}x quiet")
    write_result("speed_under_load", {"cores": cores, "rows": result})


if __name__ == "__main__":
    main()
