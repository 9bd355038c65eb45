"""Torch threads that fit the cores other programs leave free.

A laptop always has other load. With as many intra-op threads as cores, one busy core makes
every parallel region wait for the thread that shares it: issue 18 measured 10 supervised
iterations at 13 s with 2 threads and one core busy, 7 s with 1 thread, 4 s on a quiet
machine. :class:`ThreadGovernor` counts the cores that *other* processes keep busy (from
``/proc/stat`` minus this process's own CPU time) and sets torch's thread count to the rest,
at the start of a run and again every :data:`PERIOD` seconds of training
(``benchmarks/speed_under_load.py`` measures it). Where ``/proc/stat`` does not exist
(macOS, Windows) and on GPUs it changes nothing.
"""

from __future__ import annotations

import os
import time

import torch

#: seconds between two looks at the load during training
PERIOD = 20.0
#: seconds of the first look (before the first iteration)
FIRST_LOOK = 0.3


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs since boot, or None without ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [float(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class ThreadGovernor:
    """Sets ``torch.set_num_threads`` to the cores left free by other processes.

    Args:
        max_threads: the most threads to use (default: the usable CPUs).
        period: seconds between looks; :meth:`update` is cheap between them.
    """

    def __init__(self, max_threads: int | None = None, period: float = PERIOD) -> None:
        self.cpus = _usable_cpus()
        self.max_threads = max(1, min(max_threads or self.cpus, self.cpus))
        self.period = period
        self._mark: tuple[float, float, float, float] | None = None
        #: (seconds since start, threads) of every change, for logs and tests
        self.history: list[tuple[float, int]] = []
        self._t0 = time.perf_counter()

    def _snapshot(self) -> tuple[float, float, float, float] | None:
        times = _cpu_times()
        if times is None:
            return None
        return (time.perf_counter(), time.process_time(), *times)

    def others_busy(self, before, after) -> float:
        """Cores kept busy by other processes between two snapshots."""
        wall = after[0] - before[0]
        busy, total = after[2] - before[2], after[3] - before[3]
        if wall <= 0 or total <= 0:
            return 0.0
        ncpu = os.cpu_count() or self.cpus
        all_busy = ncpu * busy / total
        own = (after[1] - before[1]) / wall
        return max(0.0, all_busy - own)

    def choose(self, others: float) -> int:
        """Threads for ``others`` busy cores: the free ones, at least 1."""
        return max(1, min(self.max_threads, int(self.cpus - others + 0.5)))

    def _apply(self, threads: int) -> None:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            self.history.append((time.perf_counter() - self._t0, threads))

    def start(self) -> int:
        """A first look over :data:`FIRST_LOOK` seconds; returns the threads set."""
        before = self._snapshot()
        if before is None:
            return torch.get_num_threads()
        time.sleep(FIRST_LOOK)
        after = self._snapshot()
        self._apply(self.choose(self.others_busy(before, after)))
        self._mark = after
        return torch.get_num_threads()

    def update(self) -> int:
        """Look again when a period has passed since the last look; returns the threads."""
        if self._mark is None or time.perf_counter() - self._mark[0] < self.period:
            return torch.get_num_threads()
        now = self._snapshot()
        if now is not None:
            self._apply(self.choose(self.others_busy(self._mark, now)))
            self._mark = now
        return torch.get_num_threads()
