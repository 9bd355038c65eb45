"""Faults and probes injected into the training process (``TrainingJob.child_setup``).

The child is a fresh interpreter: a test's monkeypatch does not reach it. These module-level
functions (pickled by name; this folder is on the child's ``sys.path`` as on the parent's)
patch the supervised method in the child instead. No napari, no Qt here.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from src_models.methods.base import get_method


def _wrap_step(wrapper) -> None:
    cls = get_method("supervised")
    original = cls.train_step

    def step(self, data, it, total):
        return wrapper(original, self, data, it, total)

    cls.train_step = step


def record_modules(path: str) -> None:
    """Write the names of the modules loaded in the child (everything the training body
    imports is loaded by then)."""
    Path(path).write_text(json.dumps(sorted(sys.modules)))


def nan_loss() -> None:
    _wrap_step(lambda original, self, data, it, total: {"loss": math.nan})


def fail_step() -> None:
    def fail(original, self, data, it, total):
        raise ValueError("synthetic failure")

    _wrap_step(fail)


def slow_steps(seconds: float) -> None:
    """Every iteration takes at least ``seconds`` (time to act mid-run)."""

    def slow(original, self, data, it, total):
        time.sleep(seconds)
        return original(self, data, it, total)

    _wrap_step(slow)


def hang_after(iterations: int, marker: str | None = None) -> None:
    """Iterations past ``iterations`` never return (a hung native call); the first to hang
    creates the file ``marker``."""

    def hang(original, self, data, it, total):
        if it >= iterations:
            if marker is not None:
                Path(marker).touch()
            while True:
                time.sleep(1)
        return original(self, data, it, total)

    _wrap_step(hang)


def gate_first_step(reached: str, gate: str, timeout: float = 60.0) -> None:
    """The first iteration creates the file ``reached`` and waits for the file ``gate``."""

    def gated(original, self, data, it, total):
        Path(reached).touch()
        deadline = time.monotonic() + timeout
        while not Path(gate).exists():
            assert time.monotonic() < deadline, "the test never released training"
            time.sleep(0.02)
        return original(self, data, it, total)

    _wrap_step(gated)


def record_first_step(path: str) -> None:
    """Save what the first iteration starts from: its iteration, the network weights and the
    labeled slices of the sampler."""

    def record(original, self, data, it, total):
        if not Path(path).exists():
            weights = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            labeled = sorted({int(s) for _, s in data.labeled_index})
            torch.save({"it": it, "weights": weights, "labeled": labeled}, path)
        return original(self, data, it, total)

    _wrap_step(record)
