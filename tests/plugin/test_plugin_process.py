"""The training process (napari_semiseg._train_process): isolation, stop, death. No viewer.

Each test trains a tiny network in a spawned child; faults are injected into the child with
the hooks of ``plugin_child_hooks``. Every child is gone when its generator ends (the
generator's ``finally`` closes it), asserted through its pid.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from functools import partial

import numpy as np
import plugin_child_hooks as hooks
import pytest
import torch
from helpers import synthetic_volume

from napari_semiseg._jobs import TrainingJob, TrainingProcessDied, TrainingUpdate, TrainRequest
from napari_semiseg._run_child import train_job
from napari_semiseg._run_parent import prepare_run, training_events
from napari_semiseg._runs import LABELS_FILE
from napari_semiseg._train_process import ChildError, describe_exit, tail_lines
from src_models.errors import SemisegError
from src_models.training.checkpoint import load_model
from src_models.training.control import TrainingControl

TINY = {"channels": "4, 8, 16, 32, 64"}
LABELED = [2, 6, 9]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_job(run_dir, iterations=4, setup=None, **request) -> TrainingJob:
    image, truth = synthetic_volume()
    labels = np.zeros_like(truth)
    labels[LABELED] = truth[LABELED]
    kw = dict(batch_size=2, patch_size=32, device="cpu", preview_seconds=0) | request
    req = TrainRequest("supervised", TINY, iterations=iterations, **kw)
    return TrainingJob(image, labels, 0, LABELED, req, run_dir, child_setup=setup)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def drive(job: TrainingJob, on_update=None, timeout: float = 120.0):
    """Run the generator to its end (or error); ``on_update(update)`` sees every update.
    Returns (updates, bundle)."""
    gen = training_events(job)
    updates = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, "the training process did not end"
            update = next(gen)
            updates.append(update)
            if on_update is not None:
                on_update(update)
    except StopIteration as stop:
        return updates, stop.value
    finally:
        gen.close()
        if job.pid is not None:
            assert gone(job.pid), "the training process outlived its generator"


def test_child_trains_like_in_process_and_never_imports_napari(tmp_path, monkeypatch):
    """The child's model equals what the same job trains in-process; the parent's bundle is
    the checkpoint's. The child imports neither napari nor Qt, even when the parent's
    ``__main__`` is a script that does (as napari's console script does)."""
    script = tmp_path / "viewer_script.py"
    script.write_text("import napari\nimport qtpy\n")
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(script), raising=False)
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None, raising=False)
    modules = tmp_path / "modules.json"
    job = make_job(tmp_path / "child", setup=partial(hooks.record_modules, str(modules)))
    updates, bundle = drive(job)
    loaded = json.loads(modules.read_text())
    assert "torch" in loaded and "napari_semiseg._run_child" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("napari", "qtpy", "PyQt5", "vispy")]
    assert [it for u in updates for it, _ in u.history] == [1, 2, 3, 4]
    saved = load_model(tmp_path / "child")
    assert bundle.iteration == saved.iteration == 4
    here = make_job(tmp_path / "here")
    assert train_job(prepare_run(here), lambda e: None, TrainingControl(), lambda: None) == 4
    expected = load_model(tmp_path / "here").method.net.state_dict()
    for key, value in bundle.method.net.state_dict().items():
        assert torch.equal(value, saved.method.net.state_dict()[key]), key
        assert torch.equal(value, expected[key]), key


def test_stop_ends_the_child_at_once_and_a_hung_one_after_the_grace_period(tmp_path):
    job = make_job(tmp_path / "stop", iterations=100_000)
    times = {}

    def stop_after_two(update):
        if update.progress.iteration >= 2 and not job.control.stop_requested:
            job.control.stop()
            times["stop"] = time.monotonic()

    _, bundle = drive(job, stop_after_two)
    latency = time.monotonic() - times["stop"]
    assert 2 <= bundle.iteration < 100_000 and latency < 3.0
    assert load_model(tmp_path / "stop").iteration == bundle.iteration
    assert "finished" in (tmp_path / "stop" / "process.log").read_text()

    # a hung iteration (a native call that never returns) is ended after the grace period;
    # the last checkpoint (iteration 2) is the result
    hung_marker = tmp_path / "hanging"
    hung = make_job(
        tmp_path / "hung",
        iterations=100_000,
        setup=partial(hooks.hang_after, 2, str(hung_marker)),
        checkpoint_every=1,
        stop_grace=0.5,
    )
    times.clear()

    def stop_when_stuck():
        deadline = time.monotonic() + 60
        while not hung_marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        times["stop"] = time.monotonic()
        hung.control.stop()

    stopper = threading.Thread(target=stop_when_stuck)
    stopper.start()
    _, bundle = drive(hung)
    stopper.join()
    latency = time.monotonic() - times["stop"]
    assert bundle.iteration == 2 and 0.5 <= latency < 4.0
    assert "finished" not in (tmp_path / "hung" / "process.log").read_text()  # terminated


def test_sigkill_mid_run_keeps_the_last_checkpoint_and_says_how_it_died(tmp_path):
    job = make_job(
        tmp_path,
        iterations=100_000,
        setup=partial(hooks.slow_steps, 0.05),
        checkpoint_every=2,
    )

    def kill_after_three(update):
        if update.progress.iteration >= 3:
            os.kill(job.pid, signal.SIGKILL)

    with pytest.raises(TrainingProcessDied) as info:
        drive(job, kill_after_three)
    exc = info.value
    message = str(exc)
    assert "training process died (signal 9 SIGKILL" in message
    assert "out-of-memory" in message and "Last log lines:" in message
    saved = load_model(tmp_path)
    assert exc.bundle is not None and exc.bundle.iteration == saved.iteration
    assert saved.iteration >= 2 and saved.iteration % 2 == 0
    assert f"checkpoint (iteration {saved.iteration}, {tmp_path})" in message
    assert str(tmp_path / LABELS_FILE) in message
    np.testing.assert_array_equal(np.load(tmp_path / LABELS_FILE), job.labels)
    assert job.finished.is_set()

    # killed before any checkpoint: nothing to keep, the message says so
    early = make_job(tmp_path / "early", iterations=100_000, setup=partial(hooks.hang_after, 1))

    def kill_at_once(update):
        if isinstance(update, TrainingUpdate):
            os.kill(early.pid, signal.SIGKILL)

    with pytest.raises(TrainingProcessDied, match="No checkpoint was written") as info:
        drive(early, kill_at_once)
    assert info.value.bundle is None


def test_errors_in_the_child_arrive_as_before(tmp_path):
    with pytest.raises(SemisegError, match="NaN") as info:
        drive(make_job(tmp_path / "nan", setup=hooks.nan_loss))
    assert type(info.value) is SemisegError  # the user's message, as raised in-process
    with pytest.raises(ChildError, match="synthetic failure") as info:
        drive(make_job(tmp_path / "fail", setup=hooks.fail_step))
    assert info.value.kind == "ValueError" and "fail" in info.value.remote_traceback
    bad = make_job(tmp_path / "bad")
    bad.labels = bad.labels.astype(np.float32) / 2
    with pytest.raises(SemisegError, match="non-integer"):
        drive(bad)


def test_exit_descriptions_and_log_tail(tmp_path):
    assert describe_exit(-9) == "signal 9 SIGKILL"
    assert describe_exit(-11) == "signal 11 SIGSEGV"
    assert describe_exit(3) == "exit code 3"
    log = tmp_path / "log"
    log.write_text("a\n\nb\nc\n")
    assert tail_lines(log, 2) == ["b", "c"] and tail_lines(tmp_path / "none") == []


def test_resident_memory_of_a_process_and_its_text():
    import os
    import sys

    from napari_semiseg._train_process import format_bytes, resident_memory

    if sys.platform.startswith("linux"):
        mine = resident_memory(os.getpid())
        assert mine is not None and 10e6 < mine < 100e9
    assert resident_memory(None) is None
    assert resident_memory(2**22 + 12345) is None  # no such process
    assert format_bytes(1_234_000_000) == "1.2 GB" and format_bytes(850_000_000) == "850 MB"
