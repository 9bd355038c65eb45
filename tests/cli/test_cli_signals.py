"""A training stopped by SIGTERM checkpoints and says so; a run folder takes one training at a
time (issue 21)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from napari_semiseg.cli import EXIT_TERMINATED, main

# slow: each test trains in a child `semiseg` process (one trains twice, to compare weights)
pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and flock"),
    pytest.mark.slow,
]


def _one_cpu() -> None:
    """Pin the training to one CPU: one torch thread whatever the load (the thread governor
    follows the affinity), so two runs compute bit for bit the same."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def start_training(files, out, *budget, extra=()):
    args = [
        sys.executable, "-c", "import sys; from napari_semiseg.cli import main; sys.exit(main())",
        "train", "--image", str(files / "image.nii.gz"), "--labels", str(files / "labels.nii.gz"),
        "--out", str(out), *(budget or ("--minutes", "2")), "--patch", "32", "--batch-size", "2",
        "--log-every", "1", "--set", "channels=4,8,16,32,64", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=_one_cpu,
    )  # fmt: skip


def weights(out):
    import torch

    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value

    walk("", state)
    return flat


def wait_for(predicate, timeout=120.0):
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.1)


def log_rows(out):
    path = out / "train_log.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the row being written while we read
            break
    return rows


def test_sigterm_checkpoints_and_exits_143_and_a_second_training_is_refused(
    sparse_niftis, tmp_path, capsys
):
    out = tmp_path / "run"
    proc = start_training(sparse_niftis, out)
    try:
        wait_for(lambda: len(log_rows(out)) >= 3)  # the log is flushed row by row
        # a second training into the same folder is refused by name, touching nothing
        before = sorted(p.name for p in out.iterdir())
        code = main(
            [
                "train", "--image", str(sparse_niftis / "image.nii.gz"),
                "--labels", str(sparse_niftis / "labels.nii.gz"), "--out", str(out),
                "--iterations", "1", "--patch", "32", "--force",
            ]
        )  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and "another semiseg train is writing" in err, err
        assert sorted(p.name for p in out.iterdir()) == before
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_TERMINATED, stderr
    assert "SIGTERM" in stderr and "stopped at iteration" in stdout
    meta = json.loads((out / "model.json").read_text())
    rows = log_rows(out)
    assert meta["iteration"] >= 3 and rows[-1]["iteration"] == meta["iteration"]
    # the lock went with the process: the folder can be resumed
    assert main(["train", "--image", str(sparse_niftis / "image.nii.gz"),
                 "--labels", str(sparse_niftis / "labels.nii.gz"), "--out", str(out),
                 "--iterations", str(meta["iteration"] + 1), "--patch", "32",
                 "--set", "channels=4,8,16,32,64", "--resume"]) == 0  # fmt: skip


ITERATIONS = 150


def test_sigterm_then_resume_continues_bit_exactly(sparse_niftis, tmp_path):
    # issue 21 acceptance: the weights after SIGTERM + --resume are those of a run that was
    # never stopped
    ref = start_training(sparse_niftis, tmp_path / "ref", "--iterations", str(ITERATIONS))
    assert ref.wait(timeout=300) == 0, ref.communicate()[1]
    out = tmp_path / "run"
    proc = start_training(sparse_niftis, out, "--iterations", str(ITERATIONS))
    try:
        wait_for(lambda: len(log_rows(out)) >= 10)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_TERMINATED, stderr
    stopped = json.loads((out / "model.json").read_text())["iteration"]
    assert 10 <= stopped < ITERATIONS
    again = start_training(sparse_niftis, out, "--iterations", str(ITERATIONS), extra=("--resume",))
    assert again.wait(timeout=300) == 0, again.communicate()[1]
    assert json.loads((out / "model.json").read_text())["iteration"] == ITERATIONS
    expected, got = weights(tmp_path / "ref"), weights(out)
    assert expected and expected.keys() == got.keys()
    different = [k for k in expected if not bool((expected[k] == got[k]).all())]
    assert not different, different[:5]
    # the log holds every iteration once: before the stop, and after the resume
    assert [r["iteration"] for r in log_rows(out)] == list(range(1, ITERATIONS + 1))


def test_sigkill_loses_no_logged_iteration_before_the_last_checkpoint(sparse_niftis, tmp_path):
    # issue 21 acceptance: what an out-of-memory kill sends; the log is flushed row by row
    out = tmp_path / "run"
    proc = start_training(sparse_niftis, out, "--iterations", "100000",
                          extra=("--checkpoint-every", "15"))  # fmt: skip
    try:
        wait_for(lambda: (out / "model.json").exists() and len(log_rows(out)) >= 40)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    saved = json.loads((out / "model.json").read_text())["iteration"]
    logged = [r["iteration"] for r in log_rows(out)]
    assert saved >= 15 and saved % 15 == 0
    assert logged[:saved] == list(range(1, saved + 1))
