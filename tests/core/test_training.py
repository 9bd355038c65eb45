"""Trainer: learning, reproducibility, stop/resume, NaN handling, checkpoints; inference."""

import json

import numpy as np
import pytest
import torch

from src_models.data import SliceSampler, make_volumes
from src_models.errors import NonFiniteLossError, SemisegError
from src_models.inference import BATCH_PIXELS, predict_slices, predict_volume
from src_models.training import TrainConfig, TrainingControl, load_model, save_model, train
from src_models.training.checkpoint import create_model, read_metadata

TINY = {"channels": "4,8,16,32,64"}


def _setup(tiny_volume, seed=0, method="supervised", params=TINY):
    image, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[[2, 6, 9]] = labels[[2, 6, 9]]
    vols, k = make_volumes([image], [sparse])
    sampler = SliceSampler(vols, patch_size=32, batch_size=4, seed=seed)
    bundle = create_model(method, params, 1, k, "cpu", seed=seed, patch_size=32)
    return bundle, sampler


def _weights(bundle):
    return {k: v.clone() for k, v in bundle.method.networks["net"].state_dict().items()}


def test_supervised_learns_the_tiny_volume(tiny_volume):
    image, labels = tiny_volume
    # AdamW 0.01: with the official weak view (75 % of the crops mirrored or rotated) 0.05
    # was too noisy to pass 0.8 in 100 iterations (0.74-0.84 over seeds; 0.01: 0.90-0.96)
    bundle, sampler = _setup(tiny_volume, params={**TINY, "lr": 0.01})
    before = predict_volume(bundle, image).labels
    train(bundle, sampler, TrainConfig(iterations=100, checkpoint_every=0))
    after = predict_volume(bundle, image, maps=["confidence"])
    dice = [
        2
        * ((after.labels == c) & (labels == c)).sum()
        / ((after.labels == c).sum() + (labels == c).sum())
        for c in (1, 2)
    ]
    dice_before = [
        2
        * ((before == c) & (labels == c)).sum()
        / max(1, (before == c).sum() + (labels == c).sum())
        for c in (1, 2)
    ]
    assert min(dice) > 0.8 > max(dice_before)
    conf = after.maps["confidence"]
    assert conf.shape == image.shape and conf.dtype == np.float32
    assert 0.3 <= conf.min() and conf.max() <= 1.0


def test_training_is_reproducible_and_resume_continues_exactly(tiny_volume, tmp_path):
    full, s_full = _setup(tiny_volume)
    train(full, s_full, TrainConfig(iterations=6, checkpoint_every=0))

    part, s_part = _setup(tiny_volume)
    control = TrainingControl()
    events = []

    def stop_at_3(p):
        events.append(p)
        if p.iteration == 3:
            control.stop()

    train(
        part,
        s_part,
        TrainConfig(iterations=6, checkpoint_every=0),
        out_dir=tmp_path,
        callback=stop_at_3,
        control=control,
    )
    assert part.iteration == 3 and events[-1].done and events[-1].message == "stopped"
    resumed = load_model(tmp_path)
    assert resumed.iteration == 3
    _, s_new = _setup(tiny_volume)
    its = []
    train(
        resumed,
        s_new,
        TrainConfig(iterations=6, checkpoint_every=0),
        out_dir=tmp_path,
        callback=lambda p: its.append(p.iteration),
    )
    assert its[0] == 4 and resumed.iteration == 6
    for k, v in _weights(full).items():
        torch.testing.assert_close(_weights(resumed)[k], v)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4, 5, 6]


def test_progress_events_pause_and_time_budget(tiny_volume):
    bundle, sampler = _setup(tiny_volume)
    events = []
    control = TrainingControl()
    control.pause()
    import threading

    threading.Timer(0.3, control.resume).start()
    train(
        bundle,
        sampler,
        TrainConfig(iterations=0, minutes=0.05, checkpoint_every=0),
        callback=events.append,
        control=control,
    )
    assert events[-1].done and events[-1].message == "finished"
    assert events[-1].iteration >= 1
    assert all(e.lr > 0 for e in events[:-1]) and "loss" in events[0].logs
    # the 3 s budget excludes the 0.3 s pause and ends after the iteration that crosses it
    assert 3.0 <= events[-1].elapsed < 3.0 + 15


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_volume, tmp_path):
    bundle, sampler = _setup(tiny_volume)
    train(bundle, sampler, TrainConfig(iterations=2, checkpoint_every=0), out_dir=tmp_path)
    good = _weights(bundle)
    original = bundle.method.train_step
    calls = {"n": 0}

    def poisoned(data, it, total):
        calls["n"] += 1
        logs = original(data, it, total)
        if calls["n"] == 2:
            for p in bundle.method.net.parameters():
                p.data.fill_(float("nan"))
            logs["loss"] = float("nan")
        return logs

    bundle.method.train_step = poisoned
    with pytest.raises(NonFiniteLossError, match="the checkpoint of iteration 2 is kept"):
        train(bundle, sampler, TrainConfig(iterations=10, checkpoint_every=0), out_dir=tmp_path)
    # in memory: the weights at the start of this run; on disk: the last good checkpoint
    assert all(torch.isfinite(v).all() for v in _weights(bundle).values())
    on_disk = load_model(tmp_path)
    assert on_disk.iteration == 2
    for k, v in good.items():
        torch.testing.assert_close(_weights(on_disk)[k], v)


def test_divergence_before_any_checkpoint_says_nothing_is_kept(tiny_volume, tmp_path):
    # issue 21, item 12: "the last good weights are kept" while the CLI removes the folder
    bundle, sampler = _setup(tiny_volume)

    def diverged(data, it, total):
        return {"loss": float("inf")}

    bundle.method.train_step = diverged
    bundle.method.warmup_step = lambda data: {"loss": float("inf")}
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written before it"):
        train(bundle, sampler, TrainConfig(iterations=5, checkpoint_every=0), out_dir=tmp_path)
    assert not (tmp_path / "model.json").exists()


def test_checkpoint_metadata_and_safe_loading(tiny_volume, tmp_path):
    bundle, _ = _setup(tiny_volume)
    save_model(bundle, tmp_path)
    meta = read_metadata(tmp_path)
    for key in (
        "method",
        "config",
        "num_classes",
        "normalization",
        "axis",
        "patch_size",
        "versions",
        "in_channels",
    ):
        assert key in meta
    assert meta["config"]["channels"] == [4, 8, 16, 32, 64]
    assert not list(tmp_path.glob("*.tmp"))
    # a truncated weights file is reported, not unpickled
    data = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SemisegError, match="damaged"):
        load_model(tmp_path)
    with pytest.raises(SemisegError, match="no model"):
        load_model(tmp_path / "nowhere")


def test_checkpoint_from_another_method_or_version_is_refused(tiny_volume, tmp_path):
    bundle, _ = _setup(tiny_volume)
    save_model(bundle, tmp_path)
    with pytest.raises(SemisegError, match="trained with method"):
        load_model(tmp_path, expect_method="crossmatch")
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(SemisegError, match="format version"):
        load_model(tmp_path)


@pytest.mark.parametrize("axis", [0, 2])
def test_slab_processing_equals_whole_volume(tiny_volume, axis):
    image, labels = tiny_volume
    vols, k = make_volumes([image], [labels], axis=axis)
    bundle = create_model("supervised", TINY, 1, k, seed=1, axis=axis)
    bundle.method.eval()
    whole = predict_volume(
        bundle, image, ["confidence"], slab_size=1000, batch_size=64, return_probabilities=True
    )
    slabs = predict_volume(
        bundle, image, ["confidence"], slab_size=5, batch_size=2, return_probabilities=True
    )
    assert whole.labels.shape == image.shape and whole.labels.dtype == np.uint8
    assert whole.probabilities.shape == (k, *image.shape)
    np.testing.assert_allclose(whole.probabilities.sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(whole.labels, slabs.labels)
    np.testing.assert_allclose(whole.probabilities, slabs.probabilities, atol=1e-5)
    # writing into caller-provided arrays (e.g. zarr) gives the same result
    out = {"labels": np.zeros(image.shape, np.uint8), "confidence": np.zeros(image.shape, "f4")}
    predict_volume(bundle, image, ["confidence"], slab_size=4, out=out)
    np.testing.assert_array_equal(out["labels"], whole.labels)


def test_tiled_inference_matches_shape_and_agrees_mostly(tiny_volume):
    image, labels = tiny_volume
    vols, k = make_volumes([image], [labels])
    bundle = create_model("supervised", TINY, 1, k, seed=1)
    sampler = SliceSampler(vols, patch_size=32, batch_size=4)
    # 60 iterations: a barely trained net disagrees at tile borders (30 were enough with the
    # milder weak view used before issue 12)
    train(bundle, sampler, TrainConfig(iterations=60, checkpoint_every=0))
    full = predict_volume(bundle, image, tile_size=512)
    tiled = predict_volume(bundle, image, tile_size=32)
    assert tiled.labels.shape == image.shape
    assert (tiled.labels == full.labels).mean() > 0.9


def test_prediction_bad_input(tiny_volume):
    image, _ = tiny_volume
    bundle = create_model("supervised", TINY, 1, 3)
    with pytest.raises(SemisegError, match="no map"):
        predict_volume(bundle, image, ["discrepancy"])
    with pytest.raises(SemisegError, match="channel"):
        predict_volume(bundle, np.stack([image, image]))
    with pytest.raises(SemisegError, match="NaN"):
        predict_volume(bundle, np.where(image > 150, np.inf, image))


def test_tiled_class_id_maps_stay_class_ids(tiny_volume):
    """Overlapping tiles average continuous maps but never blend class ids."""
    from src_models.inference import predict_slices
    from src_models.methods.base import Prediction

    image, labels = tiny_volume
    bundle = create_model("supervised", TINY, 1, 3, seed=0)
    method = bundle.method

    def fake_predict(x):  # a constant pseudo class per tile position, confidence 0.5 / 1.0
        b, _, h, w = x.shape
        tile_id = float(fake_predict.calls % 3)
        fake_predict.calls += 1
        probs = torch.full((b, 3, h, w), 1 / 3)
        return Prediction(
            probs,
            {
                "pseudo": torch.full((b, h, w), tile_id),
                "confidence": torch.full((b, h, w), tile_id / 2),
            },
        )

    fake_predict.calls = 0
    method.predict = fake_predict
    x = torch.zeros(1, 1, 40, 36)
    _, maps = predict_slices(method, x, 0.0, ["pseudo", "confidence"], tile_size=24)
    assert set(maps["pseudo"].unique().tolist()) <= {0.0, 1.0, 2.0}
    # the continuous map is a true average where tiles overlap (values between tile values)
    conf = maps["confidence"].unique().tolist()
    assert any(v not in (0.0, 0.5, 1.0) for v in conf)


def test_time_based_checkpoints(tiny_volume, tmp_path, monkeypatch):
    from src_models.training import trainer as trainer_module

    saved = []
    real = trainer_module.save_model

    def counting(bundle, out):
        saved.append(bundle.iteration)
        return real(bundle, out)

    monkeypatch.setattr(trainer_module, "save_model", counting)
    bundle, sampler = _setup(tiny_volume)
    config = TrainConfig(iterations=4, checkpoint_every=0, checkpoint_seconds=1e-9)
    train(bundle, sampler, config, out_dir=tmp_path)
    assert saved == [1, 2, 3, 4]  # every iteration is "late", plus the final checkpoint
    saved.clear()
    bundle, sampler = _setup(tiny_volume)
    train(bundle, sampler, TrainConfig(iterations=4, checkpoint_every=0), out_dir=tmp_path / "b")
    assert saved == [4]


def test_flipped_prediction_is_the_mean_of_the_mirrored_slices(tiny_volume):
    bundle, _ = _setup(tiny_volume)
    method = bundle.method
    method.eval()
    x = torch.randn(2, 1, 40, 36, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain, _ = predict_slices(method, x, 0.0, ())
        flipped, _ = predict_slices(method, x, 0.0, (), flips=True)
        h, _ = predict_slices(method, x.flip(-1), 0.0, ())
        v, _ = predict_slices(method, x.flip(-2), 0.0, ())
    expected = (plain + h.flip(-1) + v.flip(-2)) / 3
    torch.testing.assert_close(flipped, expected)
    assert not torch.allclose(flipped, plain)  # the mirrored passes change something
    torch.testing.assert_close(flipped.sum(1), torch.ones(2, 40, 36))


def test_large_slices_are_predicted_a_few_at_a_time(tiny_volume, monkeypatch):
    # issue 22, item 4: a forward pass's memory grows with the pixels of its batch
    bundle, _ = _setup(tiny_volume)
    seen = []
    original = bundle.method.predict

    def spy(x):
        seen.append(x.shape[0])
        return original(x)

    monkeypatch.setattr(bundle.method, "predict", spy)
    monkeypatch.setattr("src_models.inference.BATCH_PIXELS", 3 * 48 * 48)
    image = np.random.default_rng(0).random((7, 48, 48)).astype(np.float32)
    pred = predict_volume(bundle, image, maps=(), batch_size=16)
    assert pred.labels.shape == image.shape
    assert max(seen) == 3 and sum(seen) == 7
    assert BATCH_PIXELS >= 512 * 512  # the default keeps a 512 x 512 slice whole


def test_minutes_budget_estimate_follows_the_current_phase():
    # issue 22, item 6: the bar jumped (warm-up steps are faster than the method's own)
    from src_models.training.trainer import _estimate_total

    config = TrainConfig(iterations=0, minutes=1.0)
    assert _estimate_total(config, 200, 0, 20.0) == 600  # warm-up: 10 it/s for 60 s
    # 10 s into the own phase at 2 it/s: 220 done + 2 it/s x 30 s left
    assert _estimate_total(config, 220, 0, 30.0, phase=(200, 20.0)) == 280
    assert _estimate_total(config, 201, 0, 20.5, phase=(200, 20.0)) > 201  # too early: overall
