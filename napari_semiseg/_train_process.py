"""A child process for work that must not take the viewer down; free of Qt and napari.

Training runs in a process spawned by napari's instead of a thread of it: a native crash (a
segfault in a kernel), an out-of-memory kill or a hung native call ends the child only. The
viewer, and the labels the user painted, live on; stop is immediate (ask, then terminate
after a grace period); the memory goes back to the system when the child exits; the child's
Python has its own GIL.

:class:`ChildProcess` spawns (``torch.multiprocessing``, "spawn" start method: a fresh
interpreter that never imports napari or Qt) a process that runs ``target(*args, send=...,
control=..., preview_index=...)``, a module-level function:

- ``send(obj)`` relays ``obj`` (a progress event, a preview...) to the parent through a
  one-way pipe, as ``("event", obj)``; the end of ``target`` sends ``("result", value)`` or,
  when it raised, ``("error", RemoteFailure)``. An end of file without either means the child
  died; :func:`describe_exit` names its exit code or signal.
- ``control`` is a :class:`ProcessControl`: pause, resume and stop set by the parent, read by
  the trainer. It also reports a stop once the parent is gone, so an orphan checkpoints and
  ends instead of training on.
- ``preview_index()`` is the slice index the parent last set (None: none).

The child writes its standard output and error (native ones too, and a faulthandler dump on
a crash) to a log file, whose last lines :func:`tail_lines` gives for the error message.
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing.spawn as mp_spawn
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.multiprocessing as torch_mp

from src_models.errors import SemisegError
from src_models.training.control import TrainingControl

CTX = torch_mp.get_context("spawn")
#: seconds between terminate() (SIGTERM) and kill() (SIGKILL) of a child that does not end
KILL_AFTER = 2.0


class ProcessControl(TrainingControl):
    """:class:`TrainingControl` on events shared with a child process (pass it to the child
    when it starts). In the child, ``stop_requested`` is also true once the parent died."""

    def __init__(self) -> None:
        self._running = CTX.Event()
        self._running.set()
        self._stop = CTX.Event()
        self._parent = os.getpid()

    @property
    def stop_requested(self) -> bool:
        orphan = os.getpid() != self._parent and os.getppid() != self._parent
        return self._stop.is_set() or orphan

    def wait_while_paused(self, poll: float = 0.1) -> float:
        waited = 0.0
        while not self._running.wait(poll) and not self.stop_requested:
            waited += poll
        return waited


@dataclass
class RemoteFailure:
    """An exception raised in the child: its type name, message and formatted traceback;
    ``user_error`` when it was a :class:`SemisegError` (a message for the user as it is)."""

    kind: str
    message: str
    traceback: str
    user_error: bool

    @classmethod
    def of(cls, exc: BaseException) -> RemoteFailure:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type(exc).__name__, str(exc), text, isinstance(exc, SemisegError))


class ChildError(Exception):
    """An unexpected exception of the child process, re-raised in the parent; ``kind`` is
    its type name and ``remote_traceback`` the child's traceback."""

    def __init__(self, failure: RemoteFailure) -> None:
        super().__init__(failure.message)
        self.kind = failure.kind
        self.remote_traceback = failure.traceback


def describe_exit(code: int | None) -> str:
    """'signal 9 SIGKILL' for a negative exit code (killed by that signal), else 'exit code
    N'."""
    if code is None:
        return "no exit code (still running)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"signal {-code} {name}"
    return f"exit code {code}"


def tail_lines(path: str | os.PathLike, count: int = 5, max_bytes: int = 8192) -> list[str]:
    """The last ``count`` non-empty lines of a text file ([] when it is missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-count:]


_LAUNCH = threading.Lock()


@contextmanager
def _without_main_module():
    """Spawn without re-running the parent's ``__main__`` in the child. multiprocessing does
    that so that functions of a script can be targets; napari's console script imports napari
    at its top, which would load napari and Qt into the training process. Our targets live in
    importable modules, so the child needs none of it."""
    with _LAUNCH:
        original = mp_spawn.get_preparation_data

        def preparation_data(name: str) -> dict:
            data = original(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        mp_spawn.get_preparation_data = preparation_data
        try:
            yield
        finally:
            mp_spawn.get_preparation_data = original


def _child_main(
    target: Callable[..., Any],
    args: tuple,
    conn: Any,
    control: ProcessControl,
    preview: Any,
    log_path: str,
    nice: int,
    threads: int,
) -> None:
    """The child's entry point: log to ``log_path``, lower the priority, set the torch thread
    count, run ``target`` and send its result or failure."""
    log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    for fd in (1, 2):  # native writes (oneDNN, OpenMP, glibc) land in the log too
        os.dup2(log.fileno(), fd)
    sys.stdout = sys.stderr = log
    faulthandler.enable(log)
    logging.basicConfig(stream=log, level=logging.INFO, format="%(asctime)s %(message)s")
    applied = 0
    if nice > 0 and hasattr(os, "nice"):
        try:
            before = os.nice(0)
            applied = os.nice(nice) - before
        except OSError:
            pass
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    logging.info(
        "process %d started: nice +%d, %d torch thread(s)",
        os.getpid(),
        applied,
        torch.get_num_threads(),
    )

    def send(obj: Any) -> None:
        conn.send(("event", obj))

    def preview_index() -> int | None:
        return None if preview.value < 0 else int(preview.value)

    code = 0
    try:
        result = target(*args, send=send, control=control, preview_index=preview_index)
        message: tuple = ("result", result)
        logging.info("process %d finished", os.getpid())
    except BaseException as exc:  # noqa: BLE001  (reported to the parent)
        traceback.print_exc()
        message, code = ("error", RemoteFailure.of(exc)), 1
    try:
        conn.send(message)
    except OSError:  # the parent is gone
        code = 1
    conn.close()
    logging.shutdown()
    log.flush()
    # Everything is written: skip the interpreter's teardown (about a second with torch).
    os._exit(code)


class ChildProcess:
    """A running child (see the module docstring). The parent calls :meth:`receive` in a loop
    until :attr:`ended`, then :meth:`close`; :attr:`result` or :attr:`failure` says how it
    ended (neither: it died, :attr:`exitcode` says how)."""

    def __init__(
        self,
        target: Callable[..., Any],
        args: tuple,
        log_path: str | os.PathLike,
        nice: int = 0,
        threads: int = 0,
        name: str = "semiseg-child",
    ) -> None:
        self.log_path = Path(log_path)
        self.control = ProcessControl()
        self._preview = CTX.Value("q", -1, lock=False)
        self._reader, writer = CTX.Pipe(duplex=False)
        self.process = CTX.Process(
            target=_child_main,
            args=(target, args, writer, self.control, self._preview, str(log_path), nice, threads),
            name=name,
            daemon=True,  # ended with the parent's interpreter
        )
        self.has_result = False
        self.result: Any = None
        self.failure: RemoteFailure | None = None
        self.ended = False  #: the pipe reached its end: the child finished or died
        self.stop_time: float | None = None  #: monotonic time of the stop request
        self.terminated = False  #: ended by terminate()/kill() after the grace period
        with _without_main_module():
            self.process.start()
        writer.close()  # the child holds the only writer: its death ends the pipe
        self.pid: int = self.process.pid
        self._exitcode: int | None = None

    @property
    def exitcode(self) -> int | None:
        """The child's exit code (negative: the signal that ended it), None while it runs."""
        return self._exitcode if self._exitcode is not None else self.process.exitcode

    def set_paused(self, paused: bool) -> None:
        if paused != self.control.paused and self.stop_time is None:
            self.control.pause() if paused else self.control.resume()

    def set_preview_index(self, index: int | None) -> None:
        self._preview.value = -1 if index is None else int(index)

    def request_stop(self) -> None:
        if self.stop_time is None:
            self.stop_time = time.monotonic()
            self.control.stop()

    def enforce_stop(self, grace: float) -> None:
        """After a stop request: terminate the child once ``grace`` seconds have passed,
        kill it :data:`KILL_AFTER` seconds later."""
        if self.stop_time is None or not self.process.is_alive():
            return
        waited = time.monotonic() - self.stop_time
        if waited >= grace + KILL_AFTER:
            self.process.kill()
            self.terminated = True
        elif waited >= grace and not self.terminated:
            self.process.terminate()
            self.terminated = True

    def receive(self, wait: float, period: float) -> list[Any]:
        """What the child sent: waits up to ``wait`` seconds for a first message, then
        gathers more for up to ``period`` seconds. Sets :attr:`result`, :attr:`failure` and
        :attr:`ended` on the way."""
        events: list[Any] = []
        if self.ended or not self._reader.poll(wait):
            return events
        deadline = time.monotonic() + period
        while True:
            try:
                kind, payload = self._reader.recv()
            except (EOFError, OSError):
                self.ended = True
                break
            if kind == "event":
                events.append(payload)
            elif kind == "result":
                self.has_result, self.result = True, payload
            else:
                self.failure = payload
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._reader.poll(remaining):
                break
        return events

    def join(self, timeout: float) -> int | None:
        self.process.join(timeout)
        return self.exitcode

    def close(self, grace: float = 5.0) -> None:
        """Make sure the child is gone (stop, then terminate, then kill) and free it."""
        if self._reader.closed:
            return
        if self.process.is_alive():
            self.request_stop()
            self.process.join(grace)
        if self.process.is_alive():
            self.process.terminate()
            self.terminated = True
            self.process.join(KILL_AFTER)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._exitcode = self.process.exitcode
        self._reader.close()
        self.process.close()


def resident_memory(pid: int | None) -> int | None:
    """Resident memory (bytes) of process ``pid`` from ``/proc`` (Linux), None where it
    cannot be read (another OS, a process that ended)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{int(pid)}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def format_bytes(n: int) -> str:
    """``1.2 GB``, ``850 MB``."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"
