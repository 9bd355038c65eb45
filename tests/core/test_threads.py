"""The thread governor: torch threads = the cores other processes leave free."""

from __future__ import annotations

import torch

from src_models.training import threads as threads_module
from src_models.training.threads import ThreadGovernor


def snapshot(wall, own_cpu, busy, total):
    return (wall, own_cpu, busy, total)


def test_others_busy_subtracts_this_process_and_choose_keeps_at_least_one():
    gov = ThreadGovernor(max_threads=4)
    gov.cpus = gov.max_threads = 4
    ncpu = threads_module.os.cpu_count()
    # over 1 s: all CPUs 50 % busy in jiffies, this process used 1 core-second of it
    before = snapshot(0.0, 0.0, 0.0, 0.0)
    after = snapshot(1.0, 1.0, 50.0, 100.0)
    assert gov.others_busy(before, after) == ncpu * 0.5 - 1.0
    assert [gov.choose(x) for x in (0.0, 0.4, 1.0, 2.6, 3.9, 8.0)] == [4, 4, 3, 1, 1, 1]
    assert gov.others_busy(before, snapshot(0.0, 0.0, 0.0, 0.0)) == 0.0  # no time passed


def test_governor_sets_torch_threads_from_the_load_and_restores_nothing_else(monkeypatch):
    before = torch.get_num_threads()
    load = {"busy": 0.0, "total": 0.0}

    def fake_times():  # other processes keep (cpus - 1) cores busy
        load["busy"] += 100.0 * (threads_module.os.cpu_count() - 1)
        load["total"] += 100.0 * threads_module.os.cpu_count()
        return load["busy"], load["total"]

    monkeypatch.setattr(threads_module, "_cpu_times", fake_times)
    monkeypatch.setattr(threads_module, "FIRST_LOOK", 0.01)
    try:
        torch.set_num_threads(2)
        gov = ThreadGovernor(max_threads=2, period=0.0)
        gov.cpus = gov.max_threads = 2
        assert gov.start() == 1 and torch.get_num_threads() == 1
        load["busy"] = load["total"] = 0.0  # now a quiet machine

        def quiet():
            load["total"] += 100.0 * threads_module.os.cpu_count()
            return load["busy"], load["total"]

        monkeypatch.setattr(threads_module, "_cpu_times", quiet)
        gov._mark = gov._snapshot()
        assert gov.update() == 2 and [t for _, t in gov.history] == [1, 2]
    finally:
        torch.set_num_threads(before)


def test_without_proc_stat_nothing_changes(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads_module, "_cpu_times", lambda: None)
    gov = ThreadGovernor()
    assert gov.start() == before and gov.update() == before and not gov.history
