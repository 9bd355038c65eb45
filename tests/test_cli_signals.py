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

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and flock")


def start_training(files, out):
    args = [
        sys.executable, "-c", "import sys; from napari_semiseg.cli import main; sys.exit(main())",
        "train", "--image", str(files / "image.nii.gz"), "--labels", str(files / "labels.nii.gz"),
        "--out", str(out), "--minutes", "2", "--patch", "32", "--batch-size", "2",
        "--log-every", "1", "--set", "channels=4,8,16,32,64",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_for(predicate, timeout=120.0):
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.1)


def log_rows(out):
    path = out / "train_log.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


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
