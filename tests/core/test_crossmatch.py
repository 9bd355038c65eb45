"""CrossMatch: masked Dice, stacked feature-perturbed decoding, partner pass, CutMix targets,
the loss total against a hand computation, a short training run and the prediction maps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from src_models.data import SliceSampler, make_volumes
from src_models.errors import SemisegError
from src_models.inference import predict_volume
from src_models.methods.base import get_method, make_config
from src_models.methods.crossmatch import (
    DICE_SMOOTH,
    StepOutputs,
    Target,
    crossmatch_loss,
    masked_dice,
)
from src_models.networks import UNet
from src_models.networks.feature_perturbation import (
    channel_dropout,
    fp_forward,
    perturb,
    stacked_decode,
)
from src_models.training.checkpoint import create_model, load_model
from src_models.training.trainer import TrainConfig, train

TINY = (4, 8, 16, 32, 64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a small shared CPU two threads are much slower here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_method(**params):
    cls = get_method("crossmatch")
    config = make_config(cls.Config, {"channels": TINY, **params})
    torch.manual_seed(0)
    return cls(config, 1, 3)


# -- reference computations in numpy (written from the formulas, not from the module) ------
def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_dice(probs: np.ndarray, label: np.ndarray, valid: np.ndarray) -> float:
    """Mean over classes of 1 - (2Σ v p y + s)/(Σ v p² + Σ v y² + s), sums over batch+pixels."""
    k = probs.shape[1]
    out = []
    for c in range(k):
        p, y = probs[:, c], (label == c).astype(np.float64)
        inter = (valid * p * y).sum()
        den = (valid * p * p).sum() + (valid * y * y).sum()
        out.append(1 - (2 * inter + DICE_SMOOTH) / (den + DICE_SMOOTH))
    return float(np.mean(out))


# -- masked Dice ---------------------------------------------------------------------------
def test_masked_dice_removes_ignored_pixels_and_all_ignored_is_zero():
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(2, 3, 6, 6, generator=g).softmax(dim=1)
    label = torch.randint(0, 3, (2, 6, 6), generator=g)
    conf = torch.rand(2, 6, 6, generator=g)
    tau = 0.5
    valid = conf >= tau
    assert 0 < int(valid.sum()) < valid.numel()
    loss = masked_dice(probs, Target(label, conf), tau)
    ref = np_dice(probs.double().numpy(), label.numpy(), valid.double().numpy())
    assert float(loss) == pytest.approx(ref, abs=1e-6)
    # Same value on the valid pixels alone (gathered into a 1-row "image").
    pv = probs.permute(1, 0, 2, 3)[:, valid][None, :, None, :]
    lv = label[valid][None, None, :]
    alone = masked_dice(pv, Target(lv, torch.ones_like(lv, dtype=torch.float)), tau)
    assert float(alone) == pytest.approx(float(loss), abs=1e-6)
    # Changing the prediction on ignored pixels changes nothing.
    other = torch.where(valid[:, None], probs, torch.rand(2, 3, 6, 6, generator=g))
    same = masked_dice(other, Target(label, conf), tau)
    assert float(same) == pytest.approx(float(loss), abs=1e-7)
    # Every pixel ignored: exactly 0, not NaN, and a zero (finite) gradient.
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    none = masked_dice(logits.softmax(dim=1), Target(label, torch.zeros(2, 6, 6)), tau)
    none.backward()
    assert none.item() == 0.0
    assert torch.isfinite(logits.grad).all() and float(logits.grad.abs().max()) == 0.0


# -- feature perturbation and the stacked decoder -----------------------------------------
def test_channel_dropout_drops_whole_channels_always_on_and_is_seeded():
    x = torch.ones(64, 16, 5, 5)
    y = channel_dropout(x, 0.75, torch.Generator().manual_seed(3))
    per_channel = y.flatten(2)
    # Each (sample, channel) map is all zero or all 1 / (1 - p).
    assert torch.all((per_channel == 0).all(-1) | (per_channel == 4.0).all(-1))
    dropped = float((per_channel[..., 0] == 0).float().mean())
    assert abs(dropped - 0.75) < 0.05
    again = channel_dropout(x, 0.75, torch.Generator().manual_seed(3))
    assert torch.equal(y, again)
    assert torch.equal(channel_dropout(x, 0.0), x)
    assert float(channel_dropout(x, 1.0).abs().sum()) == 0.0


def test_stacked_decoder_equals_separate_decodes_only_when_batchnorm_is_frozen():
    torch.manual_seed(0)
    net = UNet(1, 3, channels=TINY)
    x = torch.randn(6, 1, 32, 32)
    for mode in ("eval", "train"):
        net.train(mode == "train")
        with torch.no_grad():
            feats = net.encode(x)
            f_x = [f[:3] for f in feats]
            f_u = [f[3:] for f in feats]
            g = torch.Generator().manual_seed(5)
            streams = [f_x, f_u, perturb(f_u, 0.25, g), perturb(f_u, 0.75, g)]
            stacked = stacked_decode(net, streams)
            separate = [net.decode(s) for s in streams]
        assert [t.shape for t in stacked] == [(3, 3, 32, 32)] * 4
        diff = max(float((a - b).abs().max()) for a, b in zip(stacked, separate, strict=True))
        if mode == "eval":
            assert diff < 1e-5
        else:  # BatchNorm pools the batch statistics of the four streams, as in the original
            assert diff > 1e-3
    # fp_forward in eval mode: its clean chunks are the plain network's outputs.
    net.eval()
    with torch.no_grad():
        p_a, p_b, p_fw, p_fs = fp_forward(net, x, 3)
        assert torch.allclose(torch.cat((p_a, p_b)), net(x), atol=1e-5)
        assert float((p_fw - p_b).abs().max()) > 1e-4  # perturbation active in eval mode too


def test_partner_pass_single_call_matches_official_two_calls_in_eval_mode():
    m_fast = tiny_method(partner_bn="eval")
    m_official = tiny_method(partner_bn="eval", faithful_partner_pass=True)
    m_official.net.load_state_dict(m_fast.net.state_dict())
    g = torch.Generator().manual_seed(2)
    x, m_w = torch.randn(3, 1, 32, 32, generator=g), torch.randn(3, 1, 32, 32, generator=g)
    m_fast.train()
    m_official.train()
    torch.manual_seed(7)
    fast = m_fast.partner_pass(x, m_w)
    torch.manual_seed(7)
    official = m_official.partner_pass(x, m_w)
    assert m_fast.net.training and m_official.net.training  # mode restored
    for a, b in zip(fast, official, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    m_fast.net.eval()
    with torch.no_grad():
        assert torch.allclose(fast[0], m_fast.net(m_w), atol=1e-5)
    # The feature perturbation stays on in the no-grad pass: the perturbed outputs differ.
    assert float((fast[1] - fast[0]).abs().max()) > 1e-4
    assert float((fast[2] - fast[0]).abs().max()) > float((fast[1] - fast[0]).abs().max()) * 0.5
    # The 'train' variant uses batch statistics: different numbers from the eval pass.
    m_train = tiny_method(partner_bn="train")
    m_train.net.load_state_dict(m_fast.net.state_dict())
    m_train.train()
    pm_train = m_train.partner_pass(x, m_w)[0]
    assert float((pm_train - fast[0]).abs().max()) > 1e-3


def _partner_bn_modes(method) -> tuple[list[bool], bool]:
    """(train flags of the first BatchNorm at each call during the partner pass, whether
    its running mean changed); the method is in train mode before the pass."""
    bn = next(mod for mod in method.net.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    modes: list[bool] = []
    hook = bn.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    method.train()
    before = bn.running_mean.clone()
    g = torch.Generator().manual_seed(3)
    x, m_w = torch.randn(3, 1, 32, 32, generator=g), torch.randn(3, 1, 32, 32, generator=g)
    method.partner_pass(x, m_w)
    hook.remove()
    assert method.net.training  # mode restored
    return modes, not torch.equal(bn.running_mean, before)


def test_partner_pass_runs_in_train_mode_by_default_as_official_head():
    """Official HEAD cd1e25c ("fix dropout in eval mode") no longer calls model.eval() for
    the mix-partner pass: BatchNorm uses (and updates) batch statistics there."""
    assert make_config(get_method("crossmatch").Config, {}).partner_bn == "train"
    for faithful in (False, True):
        modes, updated = _partner_bn_modes(tiny_method(faithful_partner_pass=faithful))
        assert modes and all(modes) and updated
        # the 2024 behaviour stays available: eval mode, running statistics untouched
        modes, updated = _partner_bn_modes(
            tiny_method(partner_bn="eval", faithful_partner_pass=faithful)
        )
        assert modes and not any(modes) and not updated


# -- CutMix targets and the loss ----------------------------------------------------------
def test_cutmix_targets_come_from_the_partner_inside_the_box():
    base = Target(torch.zeros(2, 8, 8, dtype=torch.long), torch.full((2, 8, 8), 0.99))
    partner = Target(torch.full((2, 8, 8), 2, dtype=torch.long), torch.full((2, 8, 8), 0.5))
    box = torch.zeros(2, 8, 8, dtype=torch.bool)
    box[0, 2:5, 1:7] = True  # sample 1 has no box
    mixed = base.mixed(partner, box)
    assert torch.equal(mixed.label[box], torch.full((18,), 2))
    assert torch.equal(mixed.label[~box], torch.zeros(128 - 18, dtype=torch.long))
    assert torch.all(mixed.conf[box] == 0.5) and torch.all(mixed.conf[~box] == 0.99)
    # Inside the box the partner's low confidence removes the pixels at τ = 0.95.
    assert torch.equal(mixed.valid(0.95).bool(), ~box)


def test_loss_total_matches_hand_computation_and_teachers_are_detached():
    g = torch.Generator().manual_seed(4)
    b, k, h, w = 2, 3, 4, 4
    names = [
        "p_x",
        "p_w",
        "p_w_fw",
        "p_w_fs",
        "p_s1",
        "p_s2",
        "p_s2_fw",
        "p_s2_fs",
        "pm",
        "pm_fw",
        "pm_fs",
    ]
    logits = {n: (3 * torch.randn(b, k, h, w, generator=g)).requires_grad_() for n in names}
    y = torch.randint(0, k, (b, h, w), generator=g)
    box1 = torch.zeros(b, h, w, dtype=torch.bool)
    box2 = torch.zeros(b, h, w, dtype=torch.bool)
    box1[0, 1:3, 0:2] = True
    box2[0, 0:2, 2:4] = True
    box2[1, 2:4, 1:4] = True
    tau, eta, w_kd, w_s = 0.8, 0.3, 0.5, 0.25
    terms = crossmatch_loss(
        StepOutputs(**logits), y, box1, box2, tau=tau, eta=eta, w_kd=w_kd, w_s=w_s
    )

    # Hand computation in numpy.
    P = {n: np_softmax(t.detach().double().numpy()) for n, t in logits.items()}
    lab = {n: P[n].argmax(axis=1) for n in P}
    conf = {n: P[n].max(axis=1) for n in P}
    b1, b2 = box1.numpy(), box2.numpy()

    def mix(base, partner, box):
        return np.where(box, lab[partner], lab[base]), np.where(box, conf[partner], conf[base])

    def d(student, target):
        label, c = target
        return np_dice(P[student], label, (c >= tau).astype(np.float64))

    yn = y.numpy()
    ce = -np.mean(np.log(np.take_along_axis(P["p_x"], yn[:, None], axis=1)))
    l_x = 0.5 * (ce + np_dice(P["p_x"], yn, np.ones_like(yn, dtype=np.float64)))
    t_w = (lab["p_w"], conf["p_w"])
    mix1, mix2 = mix("p_w", "pm", b1), mix("p_w", "pm", b2)
    l_s1, l_s2 = d("p_s1", mix1), d("p_s2", mix2)
    l_tkd = (d("p_w_fw", t_w) + d("p_w_fs", t_w) + d("p_s2_fw", mix2) + d("p_s2_fs", mix2)) / 4
    mix2_fw, mix2_fs = mix("p_w_fw", "pm_fw", b2), mix("p_w_fs", "pm_fs", b2)
    l_dkd = (d("p_s2_fw", mix2_fw) + d("p_s2_fs", mix2_fs)) / 2
    total = (l_x + w_s * l_s1 + w_s * l_s2 + w_kd * ((1 - eta) * l_tkd + eta * l_dkd)) / 2
    # The example is not degenerate: some pixels pass τ, some do not, boxes matter.
    valid_w = conf["p_w"] >= tau
    assert 0 < valid_w.sum() < valid_w.size
    assert 0 < (valid_w & (lab["p_w"] != 0)).sum() < (lab["p_w"] != 0).sum()
    assert (lab["pm"][b2] != lab["p_w"][b2]).any()
    assert (lab["pm_fw"][b2] != lab["pm"][b2]).any() and (lab["pm_fs"][b2] != lab["pm"][b2]).any()

    expected = {
        "loss": total,
        "loss_x": l_x,
        "loss_s1": l_s1,
        "loss_s2": l_s2,
        "loss_tkd": l_tkd,
        "loss_dkd": l_dkd,
        "mask_ratio": valid_w.mean(),
        "mask_ratio_fg": (valid_w & (lab["p_w"] != 0)).sum() / (lab["p_w"] != 0).sum(),
    }
    assert set(terms) == set(expected)
    for key, value in expected.items():
        assert terms[key].item() == pytest.approx(value, abs=1e-5), key

    terms["loss"].backward()
    for teacher in ("p_w", "pm", "pm_fw", "pm_fs"):  # detached teachers: no gradient
        assert logits[teacher].grad is None
    for student in ("p_x", "p_w_fw", "p_w_fs", "p_s1", "p_s2", "p_s2_fw", "p_s2_fs"):
        assert float(logits[student].grad.abs().sum()) > 0, student


def test_tau_schedules():
    assert tiny_method().threshold(500, 1000) == 0.95
    la = tiny_method(tau=0.75, tau_schedule="la_ramp")
    assert la.threshold(0, 9000) == 0.75
    assert la.threshold(1, 9000) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    assert la.threshold(20000, 9000) == pytest.approx(math.log(2))
    whole_run = tiny_method(tau=0.75, tau_schedule="la_ramp", tau_ramp_length=0)
    assert whole_run.threshold(101, 100) == pytest.approx(math.log(2))


@pytest.mark.parametrize(
    "params, word",
    [
        ({"tau": 1.5}, "tau"),
        ({"eta": -0.1}, "eta"),
        ({"strong_dropout": 1.0}, "strong_dropout"),
        ({"cutmix_area": (0.5, 0.1)}, "cutmix_area"),
        ({"discrepancy_k": 0}, "discrepancy_k"),
    ],
)
def test_bad_config_is_a_one_line_error(params, word):
    with pytest.raises(SemisegError, match=word) as info:
        tiny_method(**params)
    assert "\n" not in str(info.value)


# -- training and prediction --------------------------------------------------------------
def foreground_dice(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(
        np.mean(
            [
                2
                * ((pred == c) & (labels == c)).sum()
                / max(1, (pred == c).sum() + (labels == c).sum())
                for c in (1, 2)
            ]
        )
    )


def test_short_training_run_learns_and_logs_every_term(tiny_volume, tmp_path):
    image, labels = tiny_volume
    volumes, k = make_volumes([image], [labels], labeled_slices=[[2, 5, 8, 11]])
    # lr 0.1: the official total is halved, and a tiny net must learn in 60 iterations here.
    params = {"channels": TINY, "tau": 0.8, "lr": 0.1}
    sampler = SliceSampler(volumes, patch_size=32, batch_size=4, seed=0)
    bundle = create_model("crossmatch", params, 1, k, seed=0, patch_size=32)
    before = foreground_dice(predict_volume(bundle, image).labels, labels)
    config = TrainConfig(
        iterations=60, batch_size=4, patch_size=32, checkpoint_every=0, device="cpu", warmup=0
    )
    train(bundle, sampler, config, out_dir=tmp_path)
    after = foreground_dice(predict_volume(bundle, image).labels, labels)
    assert before < 0.1 and after > 0.4, (before, after)

    logs = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(logs) == 60
    keys = ("loss", "loss_x", "loss_s1", "loss_s2", "loss_tkd", "loss_dkd", "mask_ratio")
    for key in (*keys, "mask_ratio_fg"):
        assert all(math.isfinite(r[key]) for r in logs), key
    assert all(0 <= r["mask_ratio"] <= 1 and 0 <= r["mask_ratio_fg"] <= 1 for r in logs)
    assert max(r["mask_ratio"] for r in logs) > 0.05  # the unsupervised terms were active
    assert max(r["loss_tkd"] for r in logs) > 0
    assert np.mean([r["loss_x"] for r in logs[-10:]]) < np.mean([r["loss_x"] for r in logs[:10]])

    # Saved and reloaded, it predicts the same maps.
    loaded = load_model(tmp_path)
    maps = ("confidence", "discrepancy", "pseudo")
    a = predict_volume(bundle, image, maps=maps)
    b = predict_volume(loaded, image, maps=maps)
    assert np.array_equal(a.labels, b.labels)
    for name in maps:
        assert a.maps[name].shape == image.shape
        assert np.allclose(a.maps[name], b.maps[name], atol=1e-5)


def test_predict_maps_shapes_ranges_and_reproducibility():
    method = tiny_method(tau=0.4)
    method.eval()
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    pred = method.predict(x)
    assert list(pred.maps) == ["confidence", "discrepancy", "pseudo"]
    assert pred.probs.shape == (3, 3, 32, 32)
    assert torch.allclose(pred.probs.sum(dim=1), torch.ones(3, 32, 32), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(pred.probs, method.net(x).softmax(dim=1), atol=1e-5)  # clean decoder
    conf, disc, pseudo = (pred.maps[k] for k in ("confidence", "discrepancy", "pseudo"))
    for m in (conf, disc, pseudo):
        assert m.shape == (3, 32, 32) and m.dtype == torch.float32
    assert float(conf.min()) >= 1 / 3 - 1e-6 and float(conf.max()) <= 1 + 1e-6
    assert float(disc.min()) >= 0 and float(disc.max()) <= 1 and float(disc.max()) > 0
    confident = conf >= 0.4
    assert torch.equal(pseudo[confident], pred.probs.argmax(dim=1)[confident].float())
    assert torch.all(pseudo[~confident] == -1)
    # Reproducible for a given seed; another seed draws other dropout masks.
    assert torch.equal(method.predict(x).maps["discrepancy"], disc)
    method.config.discrepancy_seed = 1
    assert not torch.equal(method.predict(x).maps["discrepancy"], disc)
    # K = 1 perturbed decoding: total-variation distance to the clean softmax, by hand.
    method.config.discrepancy_k = 1
    method.config.discrepancy_perturbation = "strong"
    with torch.no_grad():
        feats = method.net.encode(x)
        q = method.net.decode(perturb(feats, 0.75, torch.Generator().manual_seed(1)))
        tv = 0.5 * (q.softmax(dim=1) - pred.probs).abs().sum(dim=1)
    assert torch.allclose(method.predict(x).maps["discrepancy"], tv, atol=1e-5)
