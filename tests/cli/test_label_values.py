"""What label values and file layouts mean: remapped ids written back as the user's values,
unannotated voxels ignored, instance masks and 255 markers named, 2D/RGB/singleton layouts,
sparse images, physical units."""

import json

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_semiseg.cli import main
from napari_semiseg.io import image_volume, read_labels, read_volume, write_volume
from src_models.data import SliceSampler, make_volumes
from src_models.data.label_values import IGNORE, interpret_labels
from src_models.data.normalization import fit_normalization
from src_models.errors import SemisegError


def test_non_contiguous_ids_are_remapped_and_decoded_back():
    labels = np.array([[0, 2], [5, 5]])
    values = interpret_labels([labels])
    assert values.values == (0, 2, 5) and values.num_classes == 3 and values.remapped
    ids = values.encode(labels)
    assert ids.tolist() == [[0, 1], [2, 2]]
    assert values.decode(ids).tolist() == labels.tolist()
    assert not interpret_labels([np.array([0, 1, 2])]).remapped
    assert interpret_labels([np.array([0, 255])]).values == (0, 255)  # a 0/255 binary mask


def test_ignore_value_marks_unannotated_voxels():
    labels = np.array([[0, 1, 255], [255, 2, 0]])
    values = interpret_labels([labels], ignore=255)
    assert values.values == (0, 1, 2)
    assert values.encode(labels).tolist() == [[0, 1, IGNORE], [IGNORE, 2, 0]]


@pytest.mark.parametrize(
    "labels, kwargs, message",
    [
        (np.arange(100).reshape(10, 10), {}, "instance mask"),
        (np.array([0, 1, 2, 255]), {}, "--ignore-label 255"),
        (np.array([0, 1]), {"num_classes": 1}, "at least 2"),
        (np.array([0, 3]), {"num_classes": 3}, "class 3"),
        (np.array([0, 1]), {"ignore": 0}, "0 is background"),
    ],
)
def test_ambiguous_values_are_refused_with_the_fix(labels, kwargs, message):
    with pytest.raises(SemisegError, match=message):
        interpret_labels([labels], **kwargs)


def test_binary_trains_every_instance_as_one_class():
    labels = np.arange(100).reshape(10, 10)
    values = interpret_labels([labels], binary=True)
    assert values.num_classes == 2 and values.encode(labels).sum() == 99


def test_ignored_voxels_get_zero_weight_and_only_annotated_slices_count(tiny_volume):
    image, labels = tiny_volume
    sparse = np.full(labels.shape, IGNORE, np.int64)
    sparse[3] = labels[3]  # slice 3 fully annotated (background included)
    sparse[8, :, :18] = labels[8, :, :18]  # slice 8 half annotated
    sparse[5] = 0  # slice 5 annotated as all background
    volumes, k = make_volumes([image], [sparse])
    assert volumes[0].labeled == [3, 5, 8]
    sampler = SliceSampler(volumes, patch_size=48, batch_size=16, augment=False)
    batch = sampler.labeled()
    assert batch.label.min() >= 0 and batch.mask is not None
    # crops of slice 8 carry weight 0 on the unannotated half, 1 elsewhere
    assert set(torch_unique(batch.mask)) <= {0.0, 1.0} and (batch.mask == 0).any()


def torch_unique(t):
    return [float(v) for v in t.unique()]


def test_sparse_image_is_not_constant():
    image = np.zeros((1, 20, 30, 30), np.float32)
    image[0, 5, 10, 10] = 100.0  # 1 voxel in 18000: every percentile is 0
    norm = fit_normalization(image)
    assert norm.high[0] == 100.0 and norm.std[0] > 0


def test_layouts_rgb_2d_trailing_singleton_and_rgb24_nifti(tmp_path):
    np.save(tmp_path / "rgb.npy", np.zeros((40, 30, 3), np.uint8))
    array, meta = read_volume(tmp_path / "rgb.npy")
    assert meta.layout == "CYX" and image_volume(array, meta).shape == (3, 1, 40, 30)
    np.save(tmp_path / "single.npy", np.zeros((6, 40, 30, 1), np.float32))
    array, meta = read_volume(tmp_path / "single.npy")
    assert array.shape == (6, 40, 30) and meta.layout == "ZYX"
    rgb = np.zeros((6, 40, 30), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["G"] = 7
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb24.nii.gz")
    array, meta = read_volume(tmp_path / "rgb24.nii.gz")
    assert array.shape == (3, 6, 40, 30) and meta.layout == "CZYX" and array[1].min() == 7
    with pytest.raises(SemisegError, match="colour"):
        read_labels(tmp_path / "rgb24.nii.gz")


def test_tiff_micrometres_survive_a_round_trip(tmp_path):
    tifffile.imwrite(
        tmp_path / "cells.tif",
        np.zeros((4, 16, 16), np.uint16),
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.25),
        metadata={"axes": "ZYX", "unit": "um", "spacing": 0.5},
    )
    array, meta = read_volume(tmp_path / "cells.tif")
    assert meta.unit == "µm" and meta.spacing == pytest.approx((0.5, 0.25, 0.25))
    back, meta2 = read_volume(write_volume(tmp_path / "mask.tif", array, meta))
    assert meta2.unit == "µm" and meta2.spacing == pytest.approx(meta.spacing)
    _, meta3 = read_volume(write_volume(tmp_path / "mask.nii.gz", array, meta))
    assert meta3.unit == "µm"


def test_cli_writes_predictions_with_the_original_ids(tmp_path, tiny_volume, capsys):
    image, labels = tiny_volume
    user = np.select([labels == 1, labels == 2], [10, 40], 0).astype(np.uint8)
    sparse = np.zeros_like(user)
    sparse[[3, 8]] = user[[3, 8]]
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(sparse, np.eye(4)), tmp_path / "labels.nii.gz")
    nib.save(nib.Nifti1Image(user, np.eye(4)), tmp_path / "truth.nii.gz")
    run = tmp_path / "run"
    code = main(
        ["train", "--image", str(tmp_path / "image.nii.gz")]
        + ["--labels", str(tmp_path / "labels.nii.gz"), "--out", str(run), "--iterations", "30"]
        + ["--patch", "48", "--batch-size", "4", "--set", "channels=4,8,16,32,64"]
    )
    assert code == 0
    assert "10 -> 1, 40 -> 2" in capsys.readouterr().out
    assert json.loads((run / "model.json").read_text())["info"]["label_values"] == [0, 10, 40]
    out = tmp_path / "pred.nii.gz"
    argv = ["predict", "--model", str(run), "--image", str(tmp_path / "image.nii.gz")]
    assert main([*argv, "--out", str(out)]) == 0
    assert "voxels per label value: 0:" in capsys.readouterr().out
    pred, _ = read_labels(out)
    assert set(np.unique(pred).tolist()) <= {0, 10, 40} and (pred == 40).any()
    assert main(["evaluate", "--pred", str(out), "--truth", str(tmp_path / "truth.nii.gz")]) == 0
    table = capsys.readouterr().out
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["10", "40", "mean"]


def test_two_valued_mask_with_huge_value_trains_binary_and_writes_back():
    # issue 21, item 14: a 0 / 4294967295 mask ("all bits" uint32)
    labels = np.array([[0, 4294967295], [4294967295, 0]], np.int64)
    values = interpret_labels([labels])
    assert values.num_classes == 2
    ids = values.encode(labels)
    assert ids.tolist() == [[0, 1], [1, 0]]
    back = values.decode(ids)
    assert back.dtype == np.uint32 and back.tolist() == labels.tolist()
