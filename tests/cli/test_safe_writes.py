"""Nothing the user has is overwritten or lost: atomic all-or-nothing writes with the umask's
mode, checkpoints that survive a full disk, run folders that are never silently replaced."""

import errno
import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch

from napari_semiseg.cli import main
from napari_semiseg.io import write_volume, write_volumes
from src_models.data import SliceSampler, make_volumes
from src_models.errors import CheckpointError, SemisegError
from src_models.files import atomic_write, check_writable, stage_dir
from src_models.training import TrainConfig, train
from src_models.training import checkpoint as checkpoint_module
from src_models.training.checkpoint import create_model, load_model

TINY_NET = {"channels": "4,8,16,32,64"}


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test, restore it after."""
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


@pytest.mark.parametrize("value, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_files_get_the_umask_mode_not_0600(tmp_path, umask, value, expected):
    umask(value)
    atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"))
    assert mode(tmp_path / "a.txt") == expected
    out = write_volume(tmp_path / "m.nii.gz", np.zeros((3, 8, 8), np.uint8), labels=True)
    assert mode(out) == expected
    store = stage_dir(tmp_path / "s.zarr", lambda tmp: (tmp / "chunk").write_text("1"))
    assert mode(store.tmp) == expected | ((expected & 0o444) >> 2)  # folders searchable
    assert mode(store.tmp / "chunk") == expected


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    target = tmp_path / "shared.txt"
    target.write_text("old")
    os.chmod(target, 0o664)
    umask(0o077)
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and mode(target) == 0o664


def test_several_outputs_are_all_or_nothing(tmp_path):
    earlier = tmp_path / "pred.nii.gz"
    write_volume(earlier, np.ones((3, 8, 8), np.uint8), labels=True)
    before = earlier.read_bytes()
    with pytest.raises(SemisegError, match="cannot write a 5D array"):
        write_volumes(
            [
                (earlier, np.zeros((3, 8, 8), np.uint8), None, True),
                (tmp_path / "map.tif", np.zeros((1, 1, 2, 8, 8), np.float32), None, False),
            ]
        )
    assert earlier.read_bytes() == before  # the earlier result is untouched, not deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.nii.gz"]  # no temporaries


def test_check_writable_names_the_folder_and_creates_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SemisegError, match="is a file, not a folder"):
        check_writable(tmp_path / "file" / "run")
    assert check_writable(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path, tiny_volume, monkeypatch
):
    image, labels = tiny_volume
    volumes, k = make_volumes([image], [labels])
    bundle = create_model("supervised", TINY_NET, 1, k)
    sampler = SliceSampler(volumes, patch_size=32, batch_size=2)
    real_save = torch.save
    calls = []

    def save(obj, f):  # the second checkpoint finds the disk full halfway through
        calls.append(f)
        if len(calls) == 2:
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    config = TrainConfig(iterations=4, batch_size=2, patch_size=32, checkpoint_every=2)
    with pytest.raises(CheckpointError) as info:
        train(bundle, sampler, config, out_dir=tmp_path)
    message = str(info.value)
    assert "iteration 4" in message and "No space left on device" in message
    assert "previous checkpoint (iteration 2)" in message and "--resume" in message
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    kept = load_model(tmp_path)
    assert kept.iteration == 2
    assert json.loads((tmp_path / "model.json").read_text())["iteration"] == 2
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_torch_zip_writer_failure_on_a_full_disk_is_the_checkpoint_message(
    tmp_path, tiny_volume, monkeypatch
):
    """torch.save reports a full disk as RuntimeError('... inline_container.cc ...'), which
    was an 'internal error' (issue 21): it is the promised checkpoint message now."""
    image, labels = tiny_volume
    volumes, k = make_volumes([image], [labels])
    bundle = create_model("supervised", TINY_NET, 1, k)
    sampler = SliceSampler(volumes, patch_size=32, batch_size=2)
    real_save = torch.save
    calls = []

    def save(obj, f):
        calls.append(f)
        if len(calls) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    full = shutil._ntuple_diskusage(10, 10, 0)
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda p: full)
    config = TrainConfig(iterations=4, batch_size=2, patch_size=32, checkpoint_every=2)
    with pytest.raises(CheckpointError) as info:
        train(bundle, sampler, config, out_dir=tmp_path)
    message = str(info.value)
    assert "No space left on device" in message and "previous checkpoint (iteration 2)" in message
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert load_model(tmp_path).iteration == 2


@pytest.fixture
def inputs(sparse_niftis):
    return sparse_niftis


def train_args(root, *extra):
    return [
        "train",
        "--image",
        str(root / "image.nii.gz"),
        "--labels",
        str(root / "labels.nii.gz"),
        "--iterations",
        "2",
        "--patch",
        "32",
        "--batch-size",
        "2",
        "--set",
        "channels=4,8,16,32,64",
        *extra,
    ]


def test_force_moves_the_previous_run_aside(inputs):
    run = inputs / "run"
    assert main(train_args(inputs, "--out", str(run))) == 0
    old = (run / "model.pt").read_bytes()
    assert main(train_args(inputs, "--out", str(run), "--seed", "1", "--force")) == 0
    (aside,) = [p for p in run.iterdir() if p.name.startswith("replaced-")]
    assert (aside / "model.pt").read_bytes() == old
    assert sorted(p.name for p in aside.iterdir()) == sorted(
        ["model.pt", "model.json", "train_log.jsonl", "train_config.json", "config.json"]
    )
    assert load_model(run).iteration == 2 and (run / "model.pt").read_bytes() != old


def test_a_failed_run_removes_only_what_it_created(inputs, monkeypatch, capsys):
    from src_models.methods.supervised import Supervised

    def broken(self, data, it, total):
        raise SemisegError("the step failed")

    monkeypatch.setattr(Supervised, "train_step", broken)
    keep = inputs / "notes.txt"
    keep.write_text("mine")
    assert main(train_args(inputs, "--out", str(inputs / "fresh"))) == 2
    assert not (inputs / "fresh").exists()
    assert main(train_args(inputs, "--out", str(inputs))) == 2  # an existing folder
    assert sorted(p.name for p in inputs.iterdir()) == [
        "image.nii.gz",
        "labels.nii.gz",
        "notes.txt",
    ]
    assert "the step failed" in capsys.readouterr().err


def test_predict_refuses_to_replace_an_earlier_result_unless_forced(inputs, capsys):
    run = inputs / "run"
    assert main(train_args(inputs, "--out", str(run))) == 0
    out = inputs / "pred.nii.gz"
    argv = ["predict", "--model", str(run), "--image", str(inputs / "image.nii.gz")]
    assert main([*argv, "--out", str(out)]) == 0
    os.utime(out, (1, 1))
    assert main([*argv, "--out", str(out), "--maps", "confidence"]) == 2
    assert os.stat(out).st_mtime == 1 and not (inputs / "pred_confidence.nii.gz").exists()
    assert main([*argv, "--out", str(out), "--maps", "confidence", "--force"]) == 0
    assert os.stat(out).st_mtime > 1 and (inputs / "pred_confidence.nii.gz").exists()
