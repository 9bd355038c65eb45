"""Every user mistake through `semiseg` ends in exit 2 with one line naming the problem and
the fix, no traceback, and no file created or changed (inputs, earlier runs, earlier results).

One folder holds the inputs, a trained tiny run and an earlier prediction; each case runs
the CLI in it and the whole folder (names, sizes, modification times, contents) must be the
same afterwards.
"""

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import synthetic_volume

from napari_semiseg import io
from napari_semiseg.cli import main
from napari_semiseg.io import write_volume

TINY = ["--iterations", "2", "--patch", "32", "--batch-size", "2"]
TINY_NET = ["--set", "channels=4,8,16,32,64"]


def _nifti(path: Path, array, affine=None) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Inputs of every kind of mistake, a trained run and an earlier prediction."""
    root = tmp_path_factory.mktemp("mistakes")
    image, truth = synthetic_volume()
    labels = np.zeros_like(truth)
    labels[[3, 8]] = truth[[3, 8]]
    _nifti(root / "image.nii.gz", image)
    _nifti(root / "labels.nii.gz", labels)
    _nifti(root / "image2ch.nii.gz", np.stack([image, image], -1))
    more = labels.copy()
    more[3, :2, :2] = int(labels.max()) + 1
    _nifti(root / "labels3.nii.gz", more)
    instances = labels.astype(np.uint16)
    instances[3][instances[3] > 0] = np.arange(1, (instances[3] > 0).sum() + 1) % 90 + 1
    _nifti(root / "instances.nii.gz", instances)
    marked = labels.copy()
    marked[5] = 255
    _nifti(root / "marked255.nii.gz", marked)
    rgb = np.zeros(labels.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = labels * 200
    _nifti(root / "rgb_labels.nii.gz", rgb)
    _nifti(root / "shifted.nii.gz", image, np.diag([2.0, 1.0, 1.0, 1.0]))
    _nifti(root / "nan.nii.gz", np.where(labels > 0, np.nan, image).astype(np.float32))
    _nifti(root / "empty_labels.nii.gz", np.zeros_like(labels))
    (root / "truncated.nii.gz").write_bytes((root / "image.nii.gz").read_bytes()[:300])
    huge = image.astype(np.float64)
    huge[0, 0, 0] = 1e39  # finite in float64, infinite in float32
    _nifti(root / "huge.nii.gz", huge)
    almost = labels.astype(np.float32)
    almost[labels == 1] = np.float32(0.99999994)
    _nifti(root / "almost_integer.nii.gz", almost)
    np.save(root / "complex.npy", image.astype(np.complex64) * (1 + 1j))
    _nifti(root / "shifted_labels.nii.gz", labels, np.diag([2.0, 1.0, 1.0, 1.0]))
    store = root / "volume.zarr"
    store.mkdir()
    np.save(store / "image.npy", image)
    write_volume(root / "image.zarr", image)
    code = main(
        ["train", "--image", str(root / "image.nii.gz"), "--labels", str(root / "labels.nii.gz")]
        + ["--out", str(root / "run"), *TINY, *TINY_NET]
    )
    assert code == 0
    bad_model = root / "bad_model"
    shutil.copytree(root / "run", bad_model)
    text = (bad_model / "model.json").read_text().replace('"axis"', '"axes"')
    (bad_model / "model.json").write_text(text)
    # model.json damaged in other ways (issue 21, item 6): each a folder of its own
    good = json.loads((root / "run" / "model.json").read_text())
    damaged = {
        "json_list": [1, 2],
        "json_string": "model",
        "channels_negative": {**good, "in_channels": -1},
        "axis_seven": {**good, "axis": 7},
        "patch_zero": {**good, "patch_size": 0},
        "percentiles_reversed": {
            **good,
            "normalization": {**good["normalization"], "percentiles": [99.5, 0.5]},
        },
    }
    for name, meta in damaged.items():
        shutil.copytree(root / "run", root / name)
        (root / name / "model.json").write_text(json.dumps(meta))
    shutil.copytree(root / "run", root / "tensor_payload")
    torch.save(torch.zeros(3), root / "tensor_payload" / "model.pt")
    assert (
        main(
            ["predict", "--model", str(root / "run"), "--image", str(root / "image.nii.gz")]
            + ["--out", str(root / "earlier.nii.gz")]
        )
        == 0
    )
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    return {
        str(p.relative_to(root)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "",
        )
        for p in sorted(root.rglob("*"))
    }


def train(*extra, image="image.nii.gz", labels="labels.nii.gz", out="new_run"):
    return ["train", "--image", image, "--labels", labels, "--out", out, *TINY, *TINY_NET, *extra]


def predict(*extra, image="image.nii.gz", out="pred.nii.gz", model="run"):
    return ["predict", "--model", model, "--image", image, "--out", out, *extra]


CASES = {
    # budgets and numbers
    "batch size 0": (train("--batch-size", "0"), "--batch-size must be at least 1"),
    "negative lr": (train("--set", "lr=-1"), "lr must be >= 0"),
    "negative weight decay": (train("--set", "weight_decay=-1"), "weight_decay must be >= 0"),
    "fractional channels": (train("--set", "channels=2.5,8"), "whole numbers of at least 1"),
    "zero channels": (train("--set", "channels=0,8,16,32,64"), "whole numbers of at least 1"),
    "minutes nan": (
        [
            "train",
            "--image",
            "image.nii.gz",
            "--labels",
            "labels.nii.gz",
            "--out",
            "new_run",
            "--minutes",
            "nan",
        ],
        "--minutes must be a positive",
    ),
    "patch not a multiple of 16": (train("--patch", "20"), "multiple of 16"),
    "one class": (train("--classes", "1"), "--classes must be at least 2"),
    "axis 3": (train("--axis", "3"), "axis 3 is out of range"),
    "log every 0": (train("--log-every", "0"), "--log-every must be at least 1"),
    "warmup 2": (train("--warmup", "2"), "--warmup must be a number in [0, 1]"),
    "ignore label 0": (train("--ignore-label", "0"), "--ignore-label must be at least 1"),
    "binary with classes": (train("--binary", "--classes", "3"), "--binary trains 2 classes"),
    "unknown method": (train("--method", "magic"), "magic"),
    "unknown parameter": (train("--set", "colour=red"), "unknown parameter 'colour'"),
    "no gpu": (train("--device", "cuda"), "no CUDA GPU"),
    # output locations
    "run folder inside a file": (train(out="image.nii.gz/run"), "inside the input"),
    "run folder is the labels": (train(out="labels.nii.gz"), "is the input"),
    "existing run without --resume": (train(out="run"), "--resume"),
    "resume and force": (train("--resume", "--force", out="run"), "pick one"),
    "resume where there is no run": (train("--resume"), "no model in new_run"),
    # resuming with data the model does not fit
    "resume with more classes": (
        train("--resume", labels="labels3.nii.gz", out="run"),
        "that the model in run does not know",
    ),
    "resume with more channels": (
        train("--resume", image="image2ch.nii.gz", out="run"),
        "1-channel images, this image has 2",
    ),
    "resume along another axis": (train("--resume", "--axis", "1", out="run"), "along axis 0"),
    "resume another method": (train("--resume", "--method", "dfcps", out="run"), "'supervised'"),
    # what the label values mean
    "instance mask": (train(labels="instances.nii.gz"), "instance mask"),
    "255 beside small ids": (train(labels="marked255.nii.gz"), "--ignore-label 255"),
    "colour labels": (train(labels="rgb_labels.nii.gz"), "colour (multi-channel) image"),
    "no labeled slice": (train(labels="empty_labels.nii.gz"), "no labeled slice"),
    "labeled slice out of range": (train("--labeled-slices", "3,99"), "out of range"),
    # files
    "headers disagree": (train(image="shifted.nii.gz"), "same voxel grid"),
    "nan intensities": (train(image="nan.nii.gz"), "NaN"),
    "truncated file": (train(image="truncated.nii.gz"), "truncated or corrupt"),
    "missing file": (train(image="nowhere.nii.gz"), "file not found"),
    # predict
    "predict onto the image": (predict(out="image.nii.gz"), "is the input"),
    "predict inside the input store": (
        predict(image="image.zarr", out="image.zarr/pred.nii.gz"),
        "inside the input",
    ),
    "predict into a store holding the input": (
        predict(image="volume.zarr/image.npy", out="volume.zarr"),
        "contains the input",
    ),
    "predict onto the model": (predict(out="run/model.pt"), "unsupported file type"),
    "predict over an earlier result": (predict(out="earlier.nii.gz"), "--force"),
    "map listed twice": (predict("--maps", "confidence,confidence"), "more than once"),
    "map name is a path": (predict("--maps", "../../evil"), "'../../evil' is not a map name"),
    "labels are the image": (train(labels="image.nii.gz"), "is the image itself"),
    "predict labels are the image": (predict("--labels", "image.nii.gz"), "is the image itself"),
    "intensities beyond float32": (train(image="huge.nii.gz"), "beyond what float32 holds"),
    "labels almost integers": (train(labels="almost_integer.nii.gz"), "which rounds to 1"),
    "complex image": (train(image="complex.npy"), "complex values"),
    "missing backbone weights": (
        train("--method", "dfcps", "--set", "backbone=deeplabv3plus", "--set", "resnet_width=4")
        + ["--set", "backbone_weights=/nonexistent.pth"],
        "/nonexistent.pth not found",
    ),
    "unknown map": (predict("--maps", "colour"), "no map(s) ['colour']"),
    "predict batch size 0": (predict("--batch-size", "0"), "--batch-size must be at least 1"),
    "model json lacks a key": (predict(model="bad_model"), "lacks axis"),
    "model json is a list": (predict(model="json_list"), "JSON list, not a model"),
    "model json is a string": (predict(model="json_string"), "JSON str, not a model"),
    "model in_channels -1": (predict(model="channels_negative"), "in_channels -1"),
    "model axis 7": (predict(model="axis_seven"), "axis 7 (0, 1 or 2)"),
    "model patch 0": (predict(model="patch_zero"), "patch_size 0"),
    "model percentiles reversed": (predict(model="percentiles_reversed"), "percentiles"),
    "model.pt holds a tensor": (predict(model="tensor_payload"), "no napari-semiseg weights"),
    "no model": (predict(model="nowhere"), "no model found"),
    "image with other channels": (predict(image="image2ch.nii.gz"), "expects 1 channel"),
    # evaluate
    "evaluate one class": (
        ["evaluate", "--pred", "earlier.nii.gz", "--truth", "labels.nii.gz", "--classes", "1"],
        "--classes must be at least 2",
    ),
    "evaluate grids differ": (
        ["evaluate", "--pred", "earlier.nii.gz", "--truth", "shifted_labels.nii.gz"],
        "not on the same voxel grid",
    ),
    "evaluate 255 beside small ids": (
        ["evaluate", "--pred", "earlier.nii.gz", "--truth", "marked255.nii.gz"],
        "--ignore-label 255",
    ),
    "evaluate exclude-slices not numbers": (
        ["evaluate", "--pred", "earlier.nii.gz", "--truth", "labels.nii.gz"]
        + ["--exclude-slices", "2-5"],
        "--exclude-slices '2-5' is not a list",
    ),
    "evaluate excludes every slice": (
        ["evaluate", "--pred", "earlier.nii.gz", "--truth", "labels.nii.gz"]
        + ["--exclude-slices", ",".join(str(i) for i in range(12))],
        "leaves none of the 12 slices",
    ),
    "evaluate shapes differ": (
        ["evaluate", "--pred", "earlier.nii.gz", "--truth", "image2ch.nii.gz"],
        "colour (multi-channel)",
    ),
}


def assert_mistake(workspace, monkeypatch, capsys, argv, message) -> None:
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("semiseg: error: "), err
    assert message in err[0]
    assert "Traceback" not in err[0] and "internal error" not in err[0]
    assert snapshot(workspace) == before


@pytest.mark.parametrize("argv, message", CASES.values(), ids=CASES.keys())
def test_user_mistake_is_one_line_exit_2_and_touches_nothing(
    workspace, monkeypatch, capsys, argv, message
):
    assert_mistake(workspace, monkeypatch, capsys, argv, message)


def _lazy(monkeypatch) -> None:
    """Every zarr/.npy/TIFF volume read lazily, as one larger than memory would be."""
    monkeypatch.setattr(io, "LAZY_VOXELS", 10)


def test_lazy_zarr_with_a_damaged_chunk_is_named(workspace, monkeypatch, capsys, tmp_path):
    # issue 21, item 9: a corrupt chunk was an internal error (Zstd) on the lazy path
    image, _ = synthetic_volume()
    store = write_volume(tmp_path / "damaged.zarr", image)
    chunks = [p for p in store.rglob("*") if p.is_file() and p.name[0].isdigit()]
    assert chunks, "the store has chunk files"
    for chunk in chunks:
        chunk.write_bytes(b"not a compressed chunk")
    _lazy(monkeypatch)
    argv = predict(image=str(store), out=str(tmp_path / "pred.zarr"))
    assert_mistake(workspace, monkeypatch, capsys, argv, "is damaged or missing")
    assert not (tmp_path / "pred.zarr").exists()


def test_lazy_training_without_a_labeled_slice_is_named(workspace, monkeypatch, capsys, tmp_path):
    # issue 21, item 9: "need at least one array to concatenate" before
    image, labels = synthetic_volume()
    write_volume(tmp_path / "image.zarr", image)
    write_volume(tmp_path / "labels.zarr", np.zeros_like(labels), labels=True)
    _lazy(monkeypatch)
    argv = train(
        image=str(tmp_path / "image.zarr"),
        labels=str(tmp_path / "labels.zarr"),
        out=str(tmp_path / "run"),
    )
    assert_mistake(workspace, monkeypatch, capsys, argv, "no labeled slice")
    assert not (tmp_path / "run").exists()


def test_unreadable_file_is_a_permission_problem_not_a_damaged_one(workspace, monkeypatch, capsys):
    # issue 21, item 14 (root ignores chmod, so the read itself is made to fail)
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(io, "_read_nifti", denied)
    assert_mistake(workspace, monkeypatch, capsys, train(), "permission denied")


@pytest.mark.parametrize("rank, printed", [("0", 1), ("1", 0)])
def test_under_torchrun_rank_zero_alone_reports_a_mistake(
    workspace, monkeypatch, capsys, rank, printed
):
    # issue 21, item 18: every rank exits 2; one message, from rank 0
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("RANK", rank)
    assert main(train("--batch-size", "0")) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == printed
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors too
        main(["train", "--no-such-flag"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert ("error:" in err) == bool(printed), err


def test_one_rule_for_the_cli_and_the_dock():
    # issue 19: RunRecipe.check refuses a run's values for both, each in its own words
    from napari_semiseg._jobs import TrainRequest
    from src_models.errors import SemisegError
    from src_models.recipe import RunRecipe

    with pytest.raises(SemisegError, match="the batch size must be at least 1, got 0"):
        TrainRequest("supervised", batch_size=0).validate()
    with pytest.raises(SemisegError, match="the patch size 20 must be a multiple of 16"):
        TrainRequest("supervised", patch_size=20).validate()
    with pytest.raises(SemisegError, match="prior fraction must be a number in"):
        RunRecipe(prior_fraction=1.0).check()
    with pytest.raises(SemisegError, match="prior must be one of"):
        RunRecipe(prior="magic").check()
    assert RunRecipe(params={"channels": "4,8,16,32,64"}).check().channels == (4, 8, 16, 32, 64)
