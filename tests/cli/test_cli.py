"""`semiseg` end to end on a tiny volume, and its one-line errors for bad input."""

import json
import re

import nibabel as nib
import numpy as np
import pytest

from napari_semiseg.cli import main
from src_models.methods.base import METHODS, method_names

AFFINE = np.diag([0.8, 0.8, 2.0, 1.0])
AFFINE[:3, 3] = [10, -5, 3]


@pytest.fixture
def files(tmp_path, tiny_volume):
    image, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[[3, 8]] = labels[[3, 8]]
    paths = {}
    for name, arr in [("image", image), ("labels", sparse), ("truth", labels)]:
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, AFFINE), paths[name])
    return paths


def tiny_params(name):
    """Tiny-network settings for each method, from its config fields."""
    fields = {p for p in METHODS[name].Config.__dataclass_fields__}
    out = []
    for key, value in [
        ("channels", "4,8,16,32,64"),
        ("base_width", "4"),
        ("width", "4"),
        ("resunet_width", "4"),
        ("inference_samples", "2"),
        ("discrepancy_samples", "2"),
        ("K", "2"),
    ]:
        if key in fields:
            out.append(f"{key}={value}")
    return out


def run(*args):
    return main([str(a) for a in args])


def train_tiny(files, run_dir, *extra):
    """Two iterations of a tiny supervised U-Net: a model to predict with."""
    return run(
        "train",
        "--image",
        files["image"],
        "--labels",
        files["labels"],
        "--out",
        run_dir,
        "--iterations",
        2,
        "--patch",
        32,
        "--batch-size",
        2,
        "--set",
        "channels=4,8,16,32,64",
        *extra,
    )


@pytest.mark.parametrize("method", method_names())
def test_train_predict_evaluate_end_to_end(method, files, tmp_path, capsys):
    run_dir = tmp_path / f"run_{method}"
    maps = ",".join(m for m in METHODS[method].map_names if m != "pseudo")
    code = run(
        "train",
        "--image",
        files["image"],
        "--labels",
        files["labels"],
        "--method",
        method,
        "--out",
        run_dir,
        "--iterations",
        4,
        "--patch",
        32,
        "--batch-size",
        2,
        "--set",
        *tiny_params(method),
    )
    assert code == 0, capsys.readouterr().err
    for name in ("model.pt", "model.json", "train_log.jsonl", "config.json"):
        assert (run_dir / name).exists()
    log = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all("loss" in r for r in log)
    out = tmp_path / f"pred_{method}.nii.gz"
    assert (
        run("predict", "--model", run_dir, "--image", files["image"], "--out", out, "--maps", maps)
        == 0
    )
    pred = nib.load(out)
    np.testing.assert_allclose(pred.affine, AFFINE)
    assert pred.get_data_dtype().kind in "iu" and pred.shape == (12, 40, 36)
    for m in maps.split(","):
        mp = nib.load(tmp_path / f"pred_{method}_{m}.nii.gz")
        data = np.asanyarray(mp.dataobj)
        assert data.shape == (12, 40, 36) and np.isfinite(data).all()
    capsys.readouterr()
    assert run("evaluate", "--pred", out, "--truth", files["truth"], "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["per_class"]) == {"1", "2"}


def test_methods_lists_every_registered_method(capsys):
    assert run("methods") == 0
    out = capsys.readouterr().out
    for name in method_names():
        assert f"{name}:" in out
    assert out.startswith("auto (the default): supervised")


def test_the_default_method_follows_the_budget_and_a_resumed_run_keeps_its_own(
    files, tmp_path, capsys
):
    from napari_semiseg.cli.parser import build_parser
    from napari_semiseg.cli.train import _chosen_method

    run_dir = tmp_path / "auto"
    assert train_tiny(files, run_dir) == 0  # no --method: auto, an iteration budget
    assert "method auto: supervised for an iteration budget" in capsys.readouterr().out
    assert json.loads((run_dir / "model.json").read_text())["method"] == "supervised"

    def chosen(*extra):
        base = ["train", "--image", "i.nii", "--labels", "l.nii", "--out", str(run_dir)]
        return _chosen_method(build_parser().parse_args([*base, *extra]))

    assert chosen("--minutes", "2", "--ends-labeled") == "supervised"
    assert chosen("--minutes", "5") == "supervised"
    assert chosen("--minutes", "5", "--ends-labeled") == "sdcl"
    assert chosen("--minutes", "5", "--ends-labeled", "--method", "dfcps") == "dfcps"
    # continuing a run trains its method, whatever auto would pick at the budget
    assert chosen("--minutes", "5", "--ends-labeled", "--resume") == "supervised"


def test_npy_and_zarr_outputs(files, tmp_path):
    run_dir = tmp_path / "run"
    assert train_tiny(files, run_dir) == 0
    for ext in (".npy", ".zarr", ".tif"):
        out = tmp_path / f"p{ext}"
        assert (
            run(
                "predict",
                "--model",
                run_dir,
                "--image",
                files["image"],
                "--out",
                out,
                "--maps",
                "confidence",
            )
            == 0
        )
        assert out.exists() and (tmp_path / f"p_confidence{ext}").exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("shape", "must match"),
        ("nolabel", "no labeled slice"),
        ("fraction", "non-integer|not integers"),
        ("classes", "classes"),
        ("nan", "NaN"),
        ("constant", "constant"),
        ("axis", "axis"),
        ("small", "smaller than the minimum"),
        ("missing", "not found|does not exist|no such"),
        ("truncated", "truncated|corrupt|cannot read|damaged|unreadable"),
        ("method", "unknown method"),
        ("param", "unknown parameter"),
    ],
)
def test_bad_input_is_one_line_error_without_partial_output(
    case, message, files, tmp_path, capsys, tiny_volume
):
    image, labels = tiny_volume
    img, lbl = files["image"], files["labels"]
    extra = []

    def save(name, arr):
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, AFFINE), path)
        return path

    if case == "shape":
        lbl = save("l2", labels[:, :-1])
    elif case == "nolabel":
        lbl = save("l2", np.zeros_like(labels))
    elif case == "fraction":
        lbl = save("l2", labels.astype(np.float32) * 0.5)
    elif case == "classes":
        extra = ["--classes", "2"]
    elif case == "nan":
        img = save("i2", np.where(labels > 0, np.nan, image).astype(np.float32))
    elif case == "constant":
        img = save("i2", np.ones_like(image))
    elif case == "axis":
        extra = ["--axis", "5"]
    elif case == "small":
        img, lbl = save("i2", image[:, :5, :5]), save("l2", labels[:, :5, :5])
    elif case == "missing":
        img = tmp_path / "nope.nii.gz"
    elif case == "truncated":
        data = files["image"].read_bytes()
        img = tmp_path / "trunc.nii.gz"
        img.write_bytes(data[: len(data) // 2])
    elif case == "method":
        extra = ["--method", "nonexistent"]
    elif case == "param":
        extra = ["--set", "bogus=1"]
    run_dir = tmp_path / "run_bad"
    code = run(
        "train",
        "--image",
        img,
        "--labels",
        lbl,
        "--out",
        run_dir,
        "--iterations",
        2,
        "--patch",
        32,
        *extra,
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("semiseg: error:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err

    assert re.search(message, err, re.IGNORECASE), err
    assert not (run_dir / "model.pt").exists()


def test_predict_errors_leave_no_partial_output(files, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_tiny(files, run_dir) == 0
    out = tmp_path / "pred.nii.gz"
    # an unknown map is refused before anything is written
    assert (
        run(
            "predict",
            "--model",
            run_dir,
            "--image",
            files["image"],
            "--out",
            out,
            "--maps",
            "confidence,nonsense",
        )
        == 2
    )
    assert not out.exists() and not list(tmp_path.glob("pred*"))
    base = ("predict", "--model", run_dir, "--image", files["image"], "--out", out)
    for sigma in ("-1", "nan"):
        assert run(*base, "--smooth-slices", sigma) == 2
        assert "--smooth-slices: the smoothing across slices" in capsys.readouterr().err
        assert not list(tmp_path.glob("pred*"))
    assert (
        run("predict", "--model", tmp_path / "missing", "--image", files["image"], "--out", out)
        == 2
    )
    assert (
        run(
            "predict", "--model", run_dir, "--image", files["image"], "--out", tmp_path / "pred.xyz"
        )
        == 2
    )
    assert "Traceback" not in capsys.readouterr().err


def test_thick_slices_get_the_same_physical_smoothing_across_slices(files, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_tiny(files, run_dir) == 0  # slices along axis 0
    thick = tmp_path / "thick.nii.gz"  # slices 3x as thick as their pixels along axis 0
    image = np.asarray(nib.load(files["image"]).dataobj)
    nib.save(nib.Nifti1Image(image, np.diag([3.0, 1.0, 1.0, 1.0])), thick)
    capsys.readouterr()
    base = ("predict", "--model", run_dir, "--image", thick)
    assert run(*base, "--out", tmp_path / "default.nii.gz") == 0
    assert "smoothing across slices: 0.33 slices" in capsys.readouterr().out
    assert run(*base, "--out", tmp_path / "third.nii.gz", "--smooth-slices", 1 / 3) == 0
    assert "smoothing across slices" not in capsys.readouterr().out  # chosen: not said
    default, third = (
        np.asarray(nib.load(tmp_path / f"{name}.nii.gz").dataobj) for name in ("default", "third")
    )
    np.testing.assert_array_equal(default, third)


def test_interpolate_method_writes_the_fill_between_slices(files, tmp_path, capsys, tiny_volume):
    from src_models.interpolation import interpolate_volume

    out = tmp_path / "interp"
    args = ("train", "--method", "interpolate", "--image", files["image"])
    assert run(*args, "--labels", files["labels"], "--out", out) == 0
    written = out / "labels_interpolation.nii.gz"
    img = nib.load(written)
    assert np.allclose(img.affine, AFFINE)  # the labels' geometry is kept
    _, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[[3, 8]] = labels[[3, 8]]
    assert np.array_equal(np.asarray(img.dataobj), interpolate_volume(sparse, [3, 8], 0, 3))
    assert "filled between them" in capsys.readouterr().out
    # a second run never overwrites it
    before = written.read_bytes()
    assert run(*args, "--labels", files["labels"], "--out", out) == 2
    assert "exists" in capsys.readouterr().err and written.read_bytes() == before
    assert "interpolate:" in (run("methods"), capsys.readouterr().out)[1]


def test_propagate_method_writes_the_random_walk_and_refuses_two_outputs_of_one_name(
    files, tmp_path, capsys, tiny_volume
):
    from src_models.propagation import propagate_volume

    out = tmp_path / "prop"
    args = ("train", "--method", "propagate", "--image", files["image"])
    assert run(*args, "--labels", files["labels"], "--out", out) == 0, capsys.readouterr().err
    written = nib.load(out / "labels_propagation.nii.gz")
    np.testing.assert_allclose(written.affine, AFFINE)
    image, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[[3, 8]] = labels[[3, 8]]
    data = np.asarray(written.dataobj)
    assert np.array_equal(data, propagate_volume(image, sparse, [3, 8], 0, 3))
    assert np.array_equal(data[[3, 8]], labels[[3, 8]]) and data[[5, 6]].any()
    assert "propagate:" in (run("methods"), capsys.readouterr().out)[1]
    # two label files with one name would both become OUT/labels_propagation.nii.gz
    other = tmp_path / "other"
    other.mkdir()
    (other / "labels.nii.gz").write_bytes(files["labels"].read_bytes())
    two = tmp_path / "two"
    code = run(
        *args, files["image"], "--labels", files["labels"], other / "labels.nii.gz", "--out", two
    )
    assert code == 2 and "distinct names" in capsys.readouterr().err
    assert not two.exists()


def test_propagate_counts_the_gaps_between_labeled_slices_in_pixels_on_thick_slices(
    tmp_path, capsys, tiny_volume
):
    from src_models.propagation import propagate_volume

    image, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[[3, 8]] = labels[[3, 8]]
    thick = np.diag([3.2, 0.8, 0.8, 1.0])  # slices along the first axis, 4 pixels apart
    for name, arr in [("image", image), ("labels", sparse)]:
        nib.save(nib.Nifti1Image(arr, thick), tmp_path / f"{name}.nii.gz")
    out = tmp_path / "prop"
    args = ("train", "--method", "propagate", "--image", tmp_path / "image.nii.gz")
    assert run(*args, "--labels", tmp_path / "labels.nii.gz", "--out", out) == 0
    data = np.asarray(nib.load(out / "labels_propagation.nii.gz").dataobj)
    expected = propagate_volume(image, sparse, [3, 8], 0, 3, spacing=(3.2, 0.8, 0.8))
    np.testing.assert_array_equal(data, expected)
    assert not np.array_equal(data, propagate_volume(image, sparse, [3, 8], 0, 3))


def test_predict_with_labels_fuses_the_model_with_their_propagation(files, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_tiny(files, run_dir) == 0
    capsys.readouterr()
    alone, fused = tmp_path / "alone.nii.gz", tmp_path / "fused.nii.gz"
    base = ("predict", "--model", run_dir, "--image", files["image"])
    assert run(*base, "--out", alone) == 0
    assert run(*base, "--out", fused, "--labels", files["labels"]) == 0
    said = capsys.readouterr().out
    assert "fused with the propagation of 2 labeled slice(s)" in said
    assert "slice(s) between labeled ones lean towards the structure's area" in said
    a, f = np.asarray(nib.load(alone).dataobj), np.asarray(nib.load(fused).dataobj)
    truth = np.asarray(nib.load(files["truth"]).dataobj)
    assert not np.array_equal(a, f)
    # a 4-iteration model is poor; the propagation pulls the fused mask towards the truth
    assert (f == truth).mean() > (a == truth).mean()
    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), AFFINE), wrong)
    assert run(*base, "--out", tmp_path / "x.nii.gz", "--labels", wrong) == 2
    assert "--labels has shape" in capsys.readouterr().err


def test_ends_labeled_stops_the_propagation_training_and_fusion_at_the_outer_slices(
    files, tmp_path, capsys, tiny_volume
):
    from src_models.propagation import propagate_volume

    image, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[[3, 8]] = labels[[3, 8]]
    out = tmp_path / "prop"
    args = ("train", "--method", "propagate", "--image", files["image"], "--labels")
    assert run(*args, files["labels"], "--out", out, "--ends-labeled") == 0
    data = np.asarray(nib.load(out / "labels_propagation.nii.gz").dataobj)
    assert np.array_equal(data, propagate_volume(image, sparse, [3, 8], 0, 3, extend=0))
    assert not data[:3].any() and not data[9:].any() and data[[5, 6]].any()
    # a trained run records it, and predict --labels fuses with the propagation it trained on
    run_dir = tmp_path / "run"
    assert train_tiny(files, run_dir, "--ends-labeled") == 0
    info = json.loads((run_dir / "model.json").read_text())["info"]
    assert info["ends_labeled"] is True
    # with the ends, the supervised default trains along all three axes and says how well
    assert info["planes"] == 3 and set(info["plane_fits"]) == {"1", "2"}
    assert "trained along all three axes: it fits the labeled slices" in capsys.readouterr().out
    assert train_tiny(files, tmp_path / "one", "--ends-labeled", "--planes", "1") == 0
    assert json.loads((tmp_path / "one" / "model.json").read_text())["info"]["planes"] == 1
    assert "three axes" not in capsys.readouterr().out
    assert train_tiny(files, tmp_path / "bad", "--planes", "2") == 2
    assert "--planes" in capsys.readouterr().err
    fused = tmp_path / "fused.nii.gz"
    base = ("predict", "--model", run_dir, "--image", files["image"], "--labels")
    assert run(*base, files["labels"], "--out", fused) == 0, capsys.readouterr().err
    mask = np.asarray(nib.load(fused).dataobj)
    assert not mask[:3].any() and not mask[9:].any() and mask[[3, 8]].any()


def test_evaluate_can_exclude_the_labeled_slices(files, capsys):
    assert run("evaluate", "--pred", files["labels"], "--truth", files["truth"], "--json") == 0
    whole = json.loads(capsys.readouterr().out)["mean"]["dice"]
    assert whole < 0.9  # the sparse labels miss every unlabeled slice
    code = run(
        "evaluate",
        "--pred",
        files["truth"],
        "--truth",
        files["truth"],
        "--exclude-slices",
        "3,8",
        "--json",
    )
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["mean"]["dice"] == pytest.approx(1.0)
    assert "10 slices" in captured.err
    code = run("evaluate", "--pred", files["labels"], "--truth", files["truth"])
    bad = run(
        "evaluate", "--pred", files["labels"], "--truth", files["truth"], "--exclude-slices", "99"
    )
    assert bad == 2 and "out of range" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, value",
    [
        ("--warmup", "1.5"),
        ("--warmup-plateau", "nan"),
        ("--prior-fraction", "-0.1"),
        ("--minutes", "nan"),
        ("--context-slices", "4"),
    ],
)
def test_anytime_options_are_validated(files, tmp_path, capsys, option, value):
    out = tmp_path / "run"
    code = run(
        "train", "--image", files["image"], "--labels", files["labels"], "--out", out,
        option, value,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("semiseg: error:") and "Traceback" not in err
    assert not out.exists()


def test_predict_force_replaces_a_zarr_store_but_never_a_folder_of_other_files(
    files, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    assert train_tiny(files, run_dir) == 0
    out = tmp_path / "mask.zarr"
    base = ("predict", "--model", run_dir, "--image", files["image"], "--out", out)
    assert run(*base) == 0
    assert run(*base, "--force") == 0  # its own store: replaced
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert run(*base, "--force") == 2
    assert "not a zarr store's" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    folder = tmp_path / "photos.zarr"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8")
    assert run("predict", "--model", run_dir, "--image", files["image"], "--out", folder,
               "--force") == 2  # fmt: skip
    assert (folder / "holiday.jpg").exists()


def test_suggest_ranks_the_next_slices_with_reasons(files, tmp_path, capsys):
    from napari_semiseg.cli.suggest import DEFAULT_STRATEGY_CHOICE, STRATEGY_CHOICES
    from src_models.suggest import DEFAULT_STRATEGY, STRATEGIES, STRIDED_UNTIL

    # the CLI offers the core's strategies and default
    assert STRATEGY_CHOICES == STRATEGIES and DEFAULT_STRATEGY_CHOICE == DEFAULT_STRATEGY
    with pytest.raises(SystemExit):
        run("suggest", "--help")
    assert f"fewer than {STRIDED_UNTIL} slices" in " ".join(capsys.readouterr().out.split())

    run_dir = tmp_path / "run"
    assert train_tiny(files, run_dir) == 0
    capsys.readouterr()
    base = ("suggest", "--model", run_dir, "--image", files["image"], "-n", 3, "--json")
    for strategy in STRATEGIES:
        assert run(*base, "--strategy", strategy) == 0
        result = json.loads(capsys.readouterr().out)
        picks = [r["slice"] for r in result["suggestions"]]
        assert result["labeled"] == [3, 8] and len(picks) == 3, strategy
        assert len(set(picks)) == 3 and not {3, 8} & set(picks) and all(0 <= p < 12 for p in picks)
        assert all(r["why"].startswith(f"slice {r['slice']}") for r in result["suggestions"])
    assert run("suggest", "--model", run_dir, "--image", files["image"]) == 0
    # the default uses the model's map (a single network: 1 - confidence)
    assert f"next to annotate ({DEFAULT_STRATEGY}, from the confidence map)" in (
        capsys.readouterr().out
    )
    # with the labels, the labeled slices are read from them
    assert run(*base, "--labels", files["truth"]) == 0
    truth = np.asarray(nib.load(files["truth"]).dataobj)
    assert (
        json.loads(capsys.readouterr().out)["labeled"] == np.flatnonzero(truth.any((1, 2))).tolist()
    )


def test_a_context_model_predicts_and_resumes_with_its_neighbours(files, tmp_path, capsys):
    run_dir, out = tmp_path / "run", tmp_path / "mask.nii.gz"
    assert train_tiny(files, run_dir, "--method", "supervised", "--context-slices", "1") == 0
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["in_channels"] == 3 and meta["info"]["context_slices"] == 1
    assert run("predict", "--model", run_dir, "--image", files["image"], "--out", out) == 0
    assert nib.load(out).shape == nib.load(files["image"]).shape
    # resumed without the option: the model's context is kept, not a 2D network's inputs
    code = train_tiny(files, run_dir, "--method", "supervised", "--resume", "--iterations", 4)
    assert code == 0, capsys.readouterr().err
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["in_channels"] == 3 and meta["info"]["context_slices"] == 1
    assert meta["iteration"] == 4
