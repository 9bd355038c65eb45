"""Cooperative pause / resume / stop, checked by the trainer once per iteration.

Thread-safe: the GUI (or a signal handler) calls :meth:`pause`, :meth:`resume` and
:meth:`stop` from another thread than the one training.
"""

from __future__ import annotations

import threading


class TrainingControl:
    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # wake a paused loop so it can see the stop

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_while_paused(self, poll: float = 0.1) -> float:
        """Block while paused; returns the seconds spent paused (excluded from the ETA)."""
        waited = 0.0
        while not self._running.wait(poll):
            waited += poll
        return waited
