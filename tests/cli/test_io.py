"""I/O: round trips keep geometry and label values, writes are atomic, bad files are clear."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import zarr

from napari_semiseg import _io_write, io
from napari_semiseg.io import (
    ImageMeta,
    map_path,
    read_labels,
    read_volume,
    volume_format,
    write_volume,
)
from src_models.errors import SemisegError

SAMPLE = Path(io.__file__).parent / "sample_data"

# An oblique, anisotropic, permuted voxel-to-world transform.
AFFINE = np.array(
    [
        [0.0, -0.75, 0.0, 12.5],
        [0.9, 0.0, 0.1, -30.0],
        [0.0, 0.0, 2.5, 7.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def make_nifti(path, data, qform_code=1, sform_code=2, slope=None):
    img = nib.Nifti1Image(data, AFFINE)
    img.set_qform(AFFINE, code=qform_code)
    img.set_sform(AFFINE, code=sform_code)
    if slope is not None:
        img.header.set_data_dtype(np.int16)
        img.header.set_slope_inter(*slope)
    img.to_filename(str(path))
    return path


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("codes", [(1, 2), (1, 0), (0, 1)])
def test_nifti_label_mask_keeps_affine_codes_and_integer_dtype(tmp_path, codes):
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (6, 7, 5)).astype(np.float32)
    src = make_nifti(tmp_path / "img.nii.gz", image, *codes, slope=(0.5, 3.0))
    array, meta = read_volume(src)
    reference = nib.load(str(src))
    assert array.shape == (6, 7, 5)  # file voxel order (i, j, k)
    assert array.dtype == np.float32  # scaled int16 on disk, float32 in memory
    np.testing.assert_allclose(array, reference.get_fdata(), rtol=1e-6)
    np.testing.assert_allclose(meta.affine, reference.affine)
    np.testing.assert_allclose(meta.spacing, reference.header.get_zooms(), rtol=1e-6)
    mask = (array > 100).astype(np.int64) + (array > 120)
    out = write_volume(tmp_path / "out" / "mask.nii.gz", mask, meta, labels=True)
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, reference.affine)
    assert int(written.header["qform_code"]) == codes[0]
    assert int(written.header["sform_code"]) == codes[1]
    np.testing.assert_allclose(written.header.get_zooms(), reference.header.get_zooms())
    assert written.get_data_dtype() == np.uint8
    raw = np.asanyarray(written.dataobj)  # the source's slope/intercept must not leak in
    assert raw.dtype == np.uint8 and np.array_equal(raw, mask)
    labels, meta2 = read_labels(out)
    assert labels.dtype == np.uint8 and np.array_equal(labels, mask)
    np.testing.assert_allclose(meta2.affine, reference.affine)
    assert listing(tmp_path / "out") == ["mask.nii.gz"]  # no temporary left


def test_nifti_labels_dtype_follows_max_and_float_maps_are_float32(tmp_path):
    meta = ImageMeta(spacing=(2.0, 1.0, 0.5))
    big = np.zeros((3, 4, 5), np.int64)
    big[0, 0, 0] = 300
    out = write_volume(tmp_path / "big.nii", big, meta, labels=True)
    assert nib.load(str(out)).get_data_dtype() == np.uint16
    labels, m = read_labels(out)
    assert labels.dtype == np.uint16 and labels[0, 0, 0] == 300
    assert m.spacing == (2.0, 1.0, 0.5)  # affine built from the spacing when none is given
    np.testing.assert_allclose(m.affine, np.diag([2.0, 1.0, 0.5, 1.0]))
    conf = np.linspace(0, 1, 60, dtype=np.float64).reshape(3, 4, 5)
    out = write_volume(tmp_path / "conf.nii.gz", conf, meta)
    assert nib.load(str(out)).get_data_dtype() == np.float32
    back, _ = read_volume(out)
    np.testing.assert_allclose(back, conf, rtol=1e-6)


def test_shipped_float_mask_reads_as_uint8_labels():
    labels, meta = read_labels(SAMPLE / "hippocampus_003_labels.nii.gz")
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}
    assert meta.affine.shape == (4, 4) and len(meta.spacing) == 3


def test_read_labels_rejects_fractions_nan_and_negatives(tmp_path):
    np.save(tmp_path / "frac.npy", np.array([[0.0, 1.0], [2.0, 0.5]], np.float32))
    with pytest.raises(SemisegError, match=r"frac\.npy.*not integers.*0\.5"):
        read_labels(tmp_path / "frac.npy")
    np.save(tmp_path / "nan.npy", np.array([0.0, np.nan]))
    with pytest.raises(SemisegError, match="NaN"):
        read_labels(tmp_path / "nan.npy")
    np.save(tmp_path / "neg.npy", np.array([0, -1], np.int16))
    with pytest.raises(SemisegError, match="negative"):
        read_labels(tmp_path / "neg.npy")
    with pytest.raises(SemisegError, match="not integers"):
        write_volume(tmp_path / "x.nii.gz", np.array([0.2, 1.0]), labels=True)
    assert not (tmp_path / "x.nii.gz").exists()


@pytest.mark.parametrize("ext", [".tif", ".tiff", ".zarr", ".npy"])
@pytest.mark.parametrize(
    "dtype, shape",
    [(np.float32, (4, 5, 6)), (np.uint16, (4, 5, 6)), (np.int32, (4, 5, 6)), (np.float32, (5, 6))],
)
def test_round_trips(tmp_path, ext, dtype, shape):
    rng = np.random.default_rng(1)
    array = (rng.random(shape) * 1000).astype(dtype)
    spacing = (2.0, 0.5, 0.25)[-len(shape) :]
    meta = ImageMeta(affine=np.diag([*spacing, *[1.0] * (4 - len(spacing))]), spacing=spacing)
    out = write_volume(tmp_path / f"vol{ext}", array, meta)
    assert out == tmp_path / f"vol{ext}"
    back, m = read_volume(out)
    assert back.dtype == array.dtype and np.array_equal(back, array)
    if ext == ".npy":  # no metadata in the format
        assert m.spacing == (1.0,) * len(shape) and m.affine is None
    else:
        np.testing.assert_allclose(m.spacing, spacing)
        np.testing.assert_allclose(m.affine, meta.affine)
    assert listing(tmp_path) == [f"vol{ext}"]


@pytest.mark.parametrize("ext", [".tif", ".zarr", ".nii.gz"])
def test_channels_first_round_trip(tmp_path, ext):
    array = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    back, m = read_volume(write_volume(tmp_path / f"c{ext}", array, ImageMeta(spacing=(3, 2, 1))))
    assert np.array_equal(back, array)
    np.testing.assert_allclose(m.spacing, (3, 2, 1))


def test_tiff_spacing_is_visible_to_imagej_readers(tmp_path):
    out = write_volume(
        tmp_path / "a.tif", np.zeros((3, 4, 5), np.uint8), ImageMeta(spacing=(2, 0.5, 0.25))
    )
    with tifffile.TiffFile(str(out)) as tf:
        assert tf.imagej_metadata["spacing"] == 2.0
        assert tf.pages[0].tags["XResolution"].value == (4, 1)  # 4 pixels per mm


def test_zarr_group_with_data_array_is_read(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    arr = group.create_array("data", shape=(2, 3), dtype="uint8")
    arr[...] = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    group.attrs["spacing"] = [0.5, 0.5]
    labels, meta = read_labels(tmp_path / "g.zarr")
    assert labels.tolist() == [[0, 1, 2], [2, 1, 0]]
    assert meta.spacing == (0.5, 0.5)


def test_zarr_overwrite_replaces_whole_store(tmp_path):
    target = tmp_path / "pred.zarr"
    write_volume(target, np.ones((4, 4, 4), np.uint8), labels=True)
    write_volume(target, np.full((2, 3), 7, np.uint8), labels=True)
    back, _ = read_volume(target)
    assert back.shape == (2, 3) and (back == 7).all()
    assert listing(tmp_path) == ["pred.zarr"]


def test_map_path_and_volume_format():
    assert map_path("out/pred.nii.gz", "confidence") == Path("out/pred_confidence.nii.gz")
    assert map_path("pred.TIF", "discrepancy") == Path("pred_discrepancy.TIF")
    assert map_path("a/b.zarr/", "confidence") == Path("a/b_confidence.zarr")
    assert map_path("x.npy", "c") == Path("x_c.npy")
    assert volume_format("A.NII.GZ") == ".nii.gz"
    assert volume_format("a.nii") == ".nii"
    for bad in ("a.png", "nii.gz", "a.gz", "a"):
        with pytest.raises(SemisegError, match="unsupported file type.*nii.gz"):
            volume_format(bad)


@pytest.mark.parametrize("ext", [".nii.gz", ".tif", ".npy"])
def test_failed_write_leaves_no_partial_file_and_keeps_old_one(tmp_path, monkeypatch, ext):
    name = {".nii.gz": "_write_nifti", ".tif": "_write_tiff", ".npy": "_write_npy"}[ext]
    target = tmp_path / f"pred{ext}"
    write_volume(target, np.zeros((3, 4, 5), np.uint8), labels=True)
    before = target.read_bytes()

    def broken(tmp, array, meta, labels):
        Path(tmp).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_io_write, name, broken)
    with pytest.raises(SemisegError, match="cannot write.*No space left"):
        write_volume(target, np.ones((3, 4, 5), np.uint8), labels=True)
    with pytest.raises(SemisegError):
        write_volume(tmp_path / f"new{ext}", np.ones((3, 4, 5), np.uint8))
    assert target.read_bytes() == before
    assert listing(tmp_path) == [f"pred{ext}"]


def test_failed_zarr_write_keeps_old_store(tmp_path, monkeypatch):
    target = tmp_path / "pred.zarr"
    write_volume(target, np.full((3, 4), 5, np.uint8), labels=True)
    real = _io_write._write_zarr

    def broken(tmp, array, meta, labels):
        real(tmp, array, meta, labels)  # a complete-looking store, then a failure
        raise RuntimeError("interrupted")

    monkeypatch.setattr(_io_write, "_write_zarr", broken)
    with pytest.raises(RuntimeError):
        write_volume(target, np.ones((3, 4), np.uint8), labels=True)
    back, _ = read_volume(target)
    assert (back == 5).all()
    assert listing(tmp_path) == ["pred.zarr"]


def test_unreadable_and_missing_files(tmp_path):
    good = make_nifti(tmp_path / "img.nii.gz", np.random.rand(20, 20, 20).astype(np.float32))
    data = good.read_bytes()
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SemisegError, match=r"cannot read .*trunc\.nii\.gz.*truncated or corrupt"):
        read_volume(truncated)
    short = tmp_path / "short.nii"
    short.write_bytes(gzip.decompress(data)[:400])
    with pytest.raises(SemisegError, match="short.nii"):
        read_volume(short)
    for name, payload in [("bad.tif", b"II*\x00garbage!"), ("bad.npy", b"\x93NUMPYxx")]:
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(SemisegError, match=name):
            read_volume(tmp_path / name)
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(SemisegError, match="empty.zarr"):
        read_volume(tmp_path / "empty.zarr")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SemisegError, match="Python objects"):
        read_volume(tmp_path / "obj.npy")
    with pytest.raises(SemisegError, match="file not found.*missing.nii.gz"):
        read_labels(tmp_path / "missing.nii.gz")
    with pytest.raises(SemisegError, match="unsupported file type"):
        read_volume(tmp_path / "img.png")


def test_output_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SemisegError, match="cannot create the output folder.*writable"):
        write_volume(blocker / "sub" / "pred.nii.gz", np.zeros((2, 2, 2), np.uint8))


def test_lazy_voxels_setting_takes_whole_numbers_and_names_the_fix_otherwise():
    from napari_semiseg.io import DEFAULT_LAZY_VOXELS, lazy_voxels_setting

    assert lazy_voxels_setting(None) == (DEFAULT_LAZY_VOXELS, "")
    assert lazy_voxels_setting("  ") == (DEFAULT_LAZY_VOXELS, "")
    assert lazy_voxels_setting("1e6") == (1_000_000, "")
    assert lazy_voxels_setting("4096") == (4096, "")
    for bad in ("abc", "2.5", "-3", "0", "nan"):
        bound, problem = lazy_voxels_setting(bad)
        assert bound == DEFAULT_LAZY_VOXELS and "SEMISEG_LAZY_VOXELS" in problem, bad


def test_ome_ngff_5d_image_reads_through_its_axes(tmp_path):
    # issue 21, item 17: (t, c, z, y, x) with singleton t and c, as ome-zarr-py writes it
    import zarr

    data = np.random.default_rng(0).random((1, 1, 6, 20, 24)).astype(np.float32)
    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    group.create_array("0", shape=data.shape, dtype="f4", chunks=(1, 1, 3, 20, 24))[...] = data
    group.create_array("1", shape=(1, 1, 6, 10, 12), dtype="f4")[...] = data[..., ::2, ::2]
    space = {"type": "space", "unit": "micrometer"}
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
            + [{"name": n, **space} for n in "zyx"],
            "datasets": [
                {"path": str(level), "coordinateTransformations": [
                    {"type": "scale", "scale": [1, 1, 2.0, 0.5 * 2**level, 0.5 * 2**level]}
                ]}
                for level in (0, 1)
            ],
        }
    ]  # fmt: skip
    array, meta = io.read_volume(tmp_path / "ome.zarr")
    assert array.shape == (6, 20, 24) and meta.layout == "ZYX"
    np.testing.assert_array_equal(array, data[0, 0])
    assert meta.spacing == (2.0, 0.5, 0.5) and meta.unit == "µm"
    lazy, _ = io.open_volume(tmp_path / "ome.zarr", lazy_above=10)
    assert lazy.shape == (6, 20, 24)
    np.testing.assert_array_equal(np.asarray(lazy[2:4, 5]), data[0, 0, 2:4, 5])
    # level 0 missing: level 1 is read with level 1's voxel size, and the user is told
    shutil.rmtree(tmp_path / "ome.zarr" / "0")
    with pytest.warns(UserWarning, match="level '0' is missing"):
        array, meta = io.read_volume(tmp_path / "ome.zarr")
    assert array.shape == (6, 10, 12) and meta.spacing == (2.0, 1.0, 1.0)


def test_ome_ngff_time_series_is_refused(tmp_path):
    import zarr

    group = zarr.open_group(str(tmp_path / "t.zarr"), mode="w")
    group.create_array("0", shape=(3, 1, 4, 16, 16), dtype="f4")
    group.attrs["multiscales"] = [
        {
            "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
            + [{"name": n, "type": "space"} for n in "zyx"],
            "datasets": [{"path": "0"}],
        }
    ]
    with pytest.raises(SemisegError, match="time series of 3 time points"):
        io.read_volume(tmp_path / "t.zarr")


def test_uncalibrated_files_never_disagree_with_a_calibrated_image(tmp_path):
    # issue 21, item 16: one rule for a plain TIFF and an ImageJ TIFF without a voxel size
    import tifffile

    image = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    labels = (image > 0.5).astype(np.uint8)
    io.write_volume(tmp_path / "image.tif", image, io.ImageMeta(spacing=(2.0, 0.5, 0.5), unit="µm"))
    tifffile.imwrite(tmp_path / "plain.tif", labels)
    tifffile.imwrite(tmp_path / "imagej.tif", labels, imagej=True, metadata={"axes": "ZYX"})
    _, image_meta = io.read_volume(tmp_path / "image.tif")
    assert image_meta.calibrated and image_meta.unit == "µm"
    for name in ("plain.tif", "imagej.tif"):
        _, meta = io.read_labels(tmp_path / name)
        assert not meta.calibrated
        assert io.geometry_mismatch(image_meta, meta) == ""
    io.write_volume(
        tmp_path / "other.tif", labels, io.ImageMeta(spacing=(1.0, 1.0, 1.0), unit="µm")
    )
    _, other = io.read_labels(tmp_path / "other.tif")
    assert other.calibrated and "spacing" in io.geometry_mismatch(image_meta, other)


def test_images_and_labels_that_read_wrong_are_named(tmp_path):
    # issue 21, items 13-14
    np.save(tmp_path / "complex.npy", np.ones((4, 16, 16), np.complex64))
    with pytest.raises(SemisegError, match="complex values"):
        io.read_volume(tmp_path / "complex.npy")
    with pytest.raises(SemisegError, match=r"0\.99999994.*rounds to 1"):
        io.as_labels(np.array([0.0, np.float32(0.99999994)], np.float32), "x")
    allbits = io.as_labels(np.array([0, 4294967295], np.uint32), "x")
    assert allbits.tolist() == [0, 4294967295]  # not wrapped; renumbered by label_values
