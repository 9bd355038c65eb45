"""Anytime training: the supervised warm-up, the interpolation prior's weighting and its decay,
and foreground-aware crops, pinned on tiny volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src_models.data import SliceSampler, make_volumes
from src_models.interpolation import interpolate_slices, prior_weights
from src_models.training import TrainConfig, load_model, train
from src_models.training.checkpoint import create_model

TINY = {"channels": "4,8,16,32,64"}
LABELED = [1, 5, 10]


def _sampler(tiny_volume, **kwargs):
    image, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[LABELED] = labels[LABELED]
    vols, k = make_volumes([image], [sparse], labeled_slices=[LABELED])
    return SliceSampler(vols, patch_size=32, batch_size=4, seed=0, **kwargs), k


def _record(method, monkeypatch):
    calls = []
    warm, own = method.warmup_step, method.train_step

    def warmup_step(data):
        calls.append(("warm", None, None, data.prior_scale))
        return warm(data)

    def train_step(data, iteration, total):
        calls.append(("own", iteration, total, data.prior_scale))
        return own(data, iteration, total)

    monkeypatch.setattr(method, "warmup_step", warmup_step)
    monkeypatch.setattr(method, "train_step", train_step)
    return calls


def test_warmup_runs_first_then_the_method_sees_the_rest_as_its_run(tiny_volume, monkeypatch):
    data, k = _sampler(tiny_volume, prior_fraction=0.5)
    bundle = create_model("dfcps", TINY, 1, k, seed=0)
    calls = _record(bundle.method, monkeypatch)
    train(bundle, data, TrainConfig(iterations=10, warmup=0.4, prior_final=0.5, checkpoint_every=0))
    assert [c[0] for c in calls] == ["warm"] * 4 + ["own"] * 6
    assert [(c[1], c[2]) for c in calls[4:]] == [(i, 6) for i in range(6)]
    # the prior keeps weight 1 in the warm-up, then falls linearly towards prior_final
    scales = [c[3] for c in calls]
    assert scales[:4] == [1.0] * 4
    assert scales[4:] == pytest.approx([1 - 0.5 * i / 6 for i in range(6)])
    assert bundle.trainer_state["warmup_end"] == 4


def test_loss_plateau_waits_for_the_loss_to_stop_falling():
    from src_models.training.warmup import LossPlateau

    falling = LossPlateau(0.05, min_iterations=100, min_window=25)
    # a loss falling towards a floor of 0.2: the plateau comes when the fall flattens ...
    ends = [n for n in range(1, 2001) if falling.update(0.2 + 1.0 / n**0.5)]
    assert ends and 150 <= ends[0] <= 200
    # ... while a power law (no floor in sight) is still learning at every scale
    power = LossPlateau(0.05)
    assert not any(power.update(1.0 / n**0.5) for n in range(1, 2001))
    flat = LossPlateau(0.05, min_iterations=100)
    rng = np.random.default_rng(0)
    hits = [flat.update(0.3 + 0.05 * rng.standard_normal()) for _ in range(100)]
    assert hits[-1] and not any(hits[:99])  # flat noisy loss: a plateau at min_iterations
    steep = LossPlateau(0.05)
    assert not any(steep.update(0.99**n) for n in range(1, 500))  # still learning
    assert not any(LossPlateau(0.0).update(0.3) for _ in range(500))  # 0 disables


def test_warmup_ends_at_the_plateau(tiny_volume, monkeypatch):
    data, k = _sampler(tiny_volume)
    bundle = create_model("crossmatch", TINY, 1, k, seed=0)
    calls = _record(bundle.method, monkeypatch)
    monkeypatch.setattr(bundle.method, "warmup_step", lambda d: calls.append("w") or {"loss": 0.5})
    train(
        bundle,
        data,
        TrainConfig(iterations=103, warmup=1.0, warmup_plateau=0.05, checkpoint_every=0),
    )
    # a flat warm-up loss: the plateau is seen after 100 losses, the method's steps follow
    assert calls.count("w") == 100 and [c[0] for c in calls if c != "w"] == ["own"] * 3


def test_supervised_has_no_warmup_and_keeps_the_prior(tiny_volume, monkeypatch):
    data, k = _sampler(tiny_volume, prior_fraction=0.5)
    bundle = create_model("supervised", TINY, 1, k, seed=0)
    calls = _record(bundle.method, monkeypatch)
    train(bundle, data, TrainConfig(iterations=5, warmup=0.4, checkpoint_every=0))
    assert [c[:3] for c in calls] == [("own", i, 5) for i in range(5)]
    assert {c[3] for c in calls} == {1.0}


def test_warmup_step_splits_the_batch_and_trains_only_the_predicting_networks(tiny_volume):
    data, k = _sampler(tiny_volume)
    bundle = create_model("sdcl", TINY | {"res_channels": "4,8,16,32,64"}, 1, k, seed=0)
    m = bundle.method
    seen = {}

    def hook(name):
        def record(module, inputs, output) -> None:
            seen[name] = inputs[0].shape[0]

        return record

    for name in ("a", "b", "teacher"):
        m.networks[name].register_forward_hook(hook(name))
    before = {n: [p.clone() for p in net.parameters()] for n, net in m.networks.items()}
    m.train()
    logs = m.warmup_step(data)
    assert seen == {"a": 2, "b": 2}  # batch 4 split in two; the EMA teacher is not run
    changed = {
        n: any(not torch.equal(p, q) for p, q in zip(net.parameters(), before[n], strict=True))
        for n, net in m.networks.items()
    }
    assert changed == {"a": True, "b": True, "teacher": False}
    assert set(logs) == {"loss"} and logs["loss"] > 0
    m.end_warmup(data)  # the teacher starts from the warmed-up student A
    for p, q in zip(m.teacher.parameters(), m.student_a.parameters(), strict=True):
        assert torch.equal(p, q)


def test_stop_inside_the_warmup_resumes_inside_it(tiny_volume, tmp_path, monkeypatch):
    data, k = _sampler(tiny_volume)
    bundle = create_model("crossmatch", TINY, 1, k, seed=0)
    config = TrainConfig(iterations=10, warmup=0.5, checkpoint_every=0)
    from src_models.training import TrainingControl

    control = TrainingControl()

    def stop_at_2(event):
        if event.iteration == 2:
            control.stop()

    train(bundle, data, config, out_dir=tmp_path, callback=stop_at_2, control=control)
    assert bundle.iteration == 2 and bundle.trainer_state["warmup_end"] == -1
    resumed = load_model(tmp_path)
    calls = _record(resumed.method, monkeypatch)
    train(resumed, data, config)
    assert [c[0] for c in calls] == ["warm"] * 3 + ["own"] * 5
    assert "warmup_optimizer" in resumed.method.state_dict()


def test_prior_batches_carry_the_interpolation_and_its_weights(tiny_volume):
    image, labels = tiny_volume
    data, k = _sampler(tiny_volume, prior_fraction=0.5, augment=False, prior="interpolation")
    vol = data.volumes[0]
    interp = interpolate_slices(vol.labels, LABELED, k)
    weights = prior_weights(interp)
    assert sorted({s for _, s in data.prior_index}) == [
        s for s in range(2, 10) if s not in LABELED and weights[s].any()
    ]
    data.prior_scale = 0.5
    batch = data.labeled(4)
    assert data.n_prior(4) == 2 and batch.mask.shape == (4, 32, 32)
    assert (batch.mask[:2] == 1).all()  # annotated slices: full weight
    prior_w = batch.mask[2:]
    assert prior_w.max() <= 0.5 + 1e-6 and (prior_w == 0).any()  # scaled; band ignored
    # every prior crop's labels and weights are a crop of one interpolated slice
    for i in (2, 3):
        lab, w = batch.label[i].numpy(), batch.mask[i].numpy()
        found = False
        for _, s in data.prior_index:
            ref_l, ref_w = interp.labels[s], weights[s] * 0.5
            for y in range(ref_l.shape[0] - 31):
                for x in range(ref_l.shape[1] - 31):
                    if np.array_equal(ref_l[y : y + 32, x : x + 32], lab) and np.allclose(
                        ref_w[y : y + 32, x : x + 32], w, atol=1 / 255
                    ):
                        found = True
                        break
                if found:
                    break
            if found:
                break
        assert found, i


def test_prior_weights_survive_the_augmentation(tiny_volume):
    data, _ = _sampler(tiny_volume, prior_fraction=0.5)
    for _ in range(5):
        batch = data.labeled(4)
        # weights are quantised to 1/255 and stay in [0, 1]; labels keep their class ids
        assert batch.mask.min() >= 0 and batch.mask.max() <= 1
        assert set(batch.label.unique().tolist()) <= {0, 1, 2}
        q = batch.mask * 255
        assert torch.allclose(q, q.round(), atol=1e-3)


def test_foreground_crops_contain_foreground(tiny_volume):
    image, labels = tiny_volume
    big = np.pad(image, ((0, 0), (0, 60), (0, 60)), mode="edge")
    lab = np.pad(labels, ((0, 0), (0, 60), (0, 60)))
    sparse = np.zeros_like(lab)
    sparse[LABELED] = lab[LABELED]
    vols, _ = make_volumes([big], [sparse], labeled_slices=[LABELED])
    hits = {}
    for share in (0.0, 1.0):
        s = SliceSampler(vols, patch_size=16, batch_size=64, seed=0, foreground_crops=share)
        batch = s.labeled(augment=False)
        hits[share] = (batch.label.flatten(1) > 0).any(1).float().mean().item()
    assert hits[1.0] == 1.0 and hits[0.0] < 0.6


def test_patch_size_is_capped_at_the_slice_size(tiny_volume):
    data, _ = _sampler(tiny_volume)  # slices of 40 x 36 pixels, patch 32 asked
    assert data.patch_size == 32
    image, labels = tiny_volume
    vols, _ = make_volumes([image], [labels])
    big = SliceSampler(vols, patch_size=128, batch_size=2)
    assert big.patch_size == 48 and big.labeled().image.shape == (2, 1, 48, 48)


def test_a_method_whose_own_phase_unlearns_hands_back_its_warmed_up_networks(
    tiny_volume, monkeypatch, tmp_path
):
    """Issue 18's collapse (SDCL: a few own iterations, then an empty mask): when the method's
    own step leaves the networks fitting the labeled slices worse than the warm-up did, the
    warmed-up networks are handed back and the run says so."""
    from src_models.training.fit import labeled_fit

    data, k = _sampler(tiny_volume)
    bundle = create_model("dfcps", TINY, 1, k, seed=0)
    method = bundle.method
    at_warm_end = {}
    end = method.end_warmup

    def end_warmup(d):
        end(d)
        at_warm_end["networks"] = {
            n: {key: v.clone() for key, v in net.state_dict().items()}
            for n, net in method.networks.items()
        }

    def collapse(d, iteration, total):  # an own step that predicts background everywhere
        with torch.no_grad():
            for net in method.networks.values():
                for m in net.modules():
                    if isinstance(m, torch.nn.Conv2d) and m.out_channels == k:
                        m.weight.zero_()
                        m.bias.copy_(torch.tensor([10.0] + [0.0] * (k - 1)))
        return {"loss": 1.0}

    monkeypatch.setattr(method, "end_warmup", end_warmup)
    monkeypatch.setattr(method, "train_step", collapse)
    events = []
    config = TrainConfig(iterations=60, warmup=0.9, checkpoint_every=0)
    train(bundle, data, config, out_dir=tmp_path, callback=events.append)
    assert (
        "handed back" in events[-1].message
        and "fits the labeled slices worse" in events[-1].message
    )
    assert bundle.info["handed_back"] == events[-1].message
    for name, net in method.networks.items():
        for key, value in net.state_dict().items():
            assert torch.equal(value, at_warm_end["networks"][name][key]), (name, key)
    fit = labeled_fit(method, data)
    assert fit > 0.5 and bundle.info["labeled_fit"] == pytest.approx(fit, abs=1e-4)
    # the checkpoint on disk is the handed-back model and says so
    saved = load_model(tmp_path)
    assert saved.info["handed_back"] == bundle.info["handed_back"]


def test_a_method_that_keeps_learning_is_not_handed_back(tiny_volume):
    data, k = _sampler(tiny_volume)
    bundle = create_model("supervised", TINY, 1, k, seed=0)
    events = []
    train(bundle, data, TrainConfig(iterations=40, checkpoint_every=0), callback=events.append)
    assert events[-1].message == "finished" and bundle.info["handed_back"] is None
    assert 0.0 <= bundle.info["labeled_fit"] <= 1.0
