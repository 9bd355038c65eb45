"""Diffusion teacher–student: noise schedule, pathways' gradients, rounds, inference, training."""

import math

import numpy as np
import pytest
import torch

from src_models.data import SliceSampler, make_volumes
from src_models.diffusion_schedule import (
    NoiseSchedule,
    sigmoid_alpha_bar_closed_form,
    sigmoid_beta_schedule,
)
from src_models.errors import SemisegError
from src_models.inference import predict_volume
from src_models.methods import get_method, make_config
from src_models.networks.ddpm_unet import DDPMUNet, SinusoidalTimeEmbedding
from src_models.training import TrainConfig, TrainingControl, load_model, train
from src_models.training.checkpoint import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Tiny: base width 4, two levels below the first (divisor 4), no dropout.
TINY = {"base_width": 4, "width_mults": "1,2", "dropout": "0,0,0"}


def _method(num_classes=3, **params):
    cls = get_method("diffusion")
    torch.manual_seed(0)
    return cls(make_config(cls.Config, {**TINY, **params}), 1, num_classes, "cpu")


def _batch(b=2, k=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, size, size, generator=g)
    y = torch.randint(0, k, (b, size, size), generator=g)
    return x, y


def _grad_norm(net):
    return sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None)


# -- schedule ------------------------------------------------------------------------------
def test_sigmoid_schedule_matches_closed_form():
    T = 1000
    sched = NoiseSchedule(T)
    ab = sched.alpha_bar.double()
    for t in (0, T // 2, T - 2):
        assert ab[t].item() == pytest.approx(sigmoid_alpha_bar_closed_form(t, T), rel=1e-5)
    # By symmetry of the logistic function f(1/2) = 1/2 exactly: ᾱ_{T/2 − 1} = 0.5.
    assert ab[T // 2 - 1].item() == pytest.approx(0.5, abs=1e-6)
    # Only the last β is clipped (f(1) = 0): ᾱ_{T−1} = 0.001·ᾱ_{T−2}.
    betas = sigmoid_beta_schedule(T)
    assert betas[-1].item() == pytest.approx(0.999) and betas[:-1].max() < 0.999
    assert ab[T - 1].item() == pytest.approx(0.001 * ab[T - 2].item(), rel=1e-4)
    # ᾱ_0 = f(1/T): 1 − ᾱ_0 ≈ 6·σ'(−3)/(T·(σ(3) − σ(−3))) ≈ 3.0e-4.
    assert 1 - ab[0].item() == pytest.approx(6 * 0.0451767 / (T * 0.9051483), rel=1e-2)
    assert bool((ab[1:] < ab[:-1]).all()) and ab.min() > 0


def test_q_sample_and_x0_eps_round_trip():
    sched = NoiseSchedule(1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 3, 8, 8, generator=g)
    eps = torch.randn(5, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 499, 900, 999])
    x_t = sched.q_sample(x0, t, eps)
    a = sched.alpha_bar[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    # x_t at t = T−1 is (almost) pure noise; at t = 0 (almost) the clean signal.
    assert (x_t[4] - eps[4]).abs().max() < 5e-3 and (x_t[0] - x0[0]).abs().max() < 0.1
    x0_back = sched.predict_start_from_noise(x_t, t, eps)
    torch.testing.assert_close(x0_back, x0, atol=5e-3, rtol=1e-3)
    eps_back = sched.predict_noise_from_start(x_t, t, x0)
    torch.testing.assert_close(eps_back, eps, atol=1e-3, rtol=1e-3)


def test_time_embedding_and_network_shapes():
    emb = SinusoidalTimeEmbedding(8)(torch.tensor([0, 5]))
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    net = DDPMUNet(4, 3, base_width=4, width_mults=(1, 2, 4, 8))
    assert net.widths == (4, 4, 8, 16, 32) and net.divisor == 16
    out = net(torch.randn(2, 4, 16, 16), torch.tensor([1, 999]))
    assert out.shape == (2, 3, 16, 16)
    # The timestep changes the output (the embedding is used).
    net.eval()
    x = torch.randn(1, 4, 16, 16)
    assert not torch.allclose(net(x, torch.tensor([0])), net(x, torch.tensor([999])))


# -- gradients of the two phases --------------------------------------------------------------
def test_reconstruction_gradient_reaches_mask_pathway_only_in_phase_1():
    m = _method()
    x, y = _batch()
    m.phase1_losses(x)["loss_rec"].backward()
    assert _grad_norm(m.teacher_seg) > 0 and _grad_norm(m.teacher_rec) > 0

    for net in m.networks.values():
        net.zero_grad(set_to_none=True)
    losses = m.phase2_losses(x, x, y, ramp=1.0)
    losses["loss_rec"].backward(retain_graph=True)
    assert _grad_norm(m.teacher_rec) > 0
    assert _grad_norm(m.teacher_seg) == 0 and _grad_norm(m.student_seg) == 0
    # ... while the full phase-2 objective does train both mask pathways.
    losses["loss"].backward()
    assert _grad_norm(m.teacher_seg) > 0 and _grad_norm(m.student_seg) > 0


def test_bf16_option_trains_in_float32_outputs():
    m = _method(cpu_bf16=True)
    x, y = _batch()
    losses = m.phase2_losses(x, x, y, ramp=1.0)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert _grad_norm(m.teacher_seg) > 0 and _grad_norm(m.student_seg) > 0


def test_student_has_no_image_pathway():
    m = _method()
    assert set(m.networks) == {"teacher_seg", "teacher_rec", "student_seg"}
    assert m.student_seg.head.out_channels == 3 and m.teacher_rec.head.out_channels == 1


# -- rounds -----------------------------------------------------------------------------------
def _count_seg_samples(m):
    seen = []
    m.teacher_seg.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    return seen


def test_independent_rounds_restart_from_the_teacher_mask():
    m = _method(rounds=3)
    x, _ = _batch()
    z = m.segment(m.teacher_seg, x)
    seen = _count_seg_samples(m)
    rounds = m.cycle_rounds(x, z)
    assert len(rounds) == 3 and sum(seen) == 3 * x.shape[0]  # R re-segmentations of B images
    cond = m.condition(z)
    for r in rounds:
        torch.testing.assert_close(r.condition, cond)
        assert not r.condition.requires_grad and r.logits.shape == z.shape
        assert r.loss_rec.shape == (x.shape[0],) and r.recon.shape == x.shape
    # Different noise per round: different reconstructions.
    assert not torch.allclose(rounds[0].recon, rounds[1].recon)


def test_chained_rounds_start_from_the_previous_mask():
    m = _method(rounds=3, rounds_mode="chained")
    x, _ = _batch()
    z = m.segment(m.teacher_seg, x)
    seen = _count_seg_samples(m)
    rounds = m.cycle_rounds(x, z)
    assert len(rounds) == 3 and seen == [x.shape[0]] * 3
    torch.testing.assert_close(rounds[0].condition, m.condition(z))
    for prev, cur in zip(rounds[:-1], rounds[1:], strict=True):
        torch.testing.assert_close(cur.condition, m.condition(prev.logits).detach())
        assert not torch.allclose(cur.condition, rounds[0].condition)


def test_resegmentation_leaves_batchnorm_running_stats_alone():
    m = _method()
    x, _ = _batch()
    bn = m.teacher_seg.stem[1]
    z = m.segment(m.teacher_seg, x)  # a pass on real images updates the running mean
    before = bn.running_mean.clone()
    rounds = m.cycle_rounds(x, z)
    torch.testing.assert_close(bn.running_mean, before, rtol=0, atol=0)
    assert bn.momentum == 0.1 and rounds[0].logits.requires_grad
    m.config.recon_bn_update = True  # the reference's behaviour
    m.cycle_rounds(x, z)
    assert not torch.allclose(bn.running_mean, before)


def test_reconstructions_are_clamped_to_the_image_range():
    m = _method()
    x, _ = _batch()
    cond = m.condition(m.segment(m.teacher_seg, x)).detach()
    torch.manual_seed(3)
    _, recon = m.reconstruct(x, cond)
    lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
    assert bool((recon.amin(dim=(1, 2, 3)) >= lo).all() and (recon.amax(dim=(1, 2, 3)) <= hi).all())
    m.config.clip_recon = False  # the reference: x0 from ε amplifies errors by up to 1/√ᾱ
    torch.manual_seed(3)
    _, raw = m.reconstruct(x, cond)
    assert raw.abs().max() > recon.abs().max()


# -- inference --------------------------------------------------------------------------------
def test_inference_is_reproducible_and_maps_are_in_range():
    m = _method(inference_passes=3)
    m.eval()
    x, _ = _batch(b=3)
    a, b = m.predict(x), m.predict(x)
    torch.testing.assert_close(a.probs, b.probs, rtol=0, atol=0)
    for name in m.map_names:
        torch.testing.assert_close(a.maps[name], b.maps[name], rtol=0, atol=0)
    # Independent of the batch composition (same noise field for every slice).
    torch.testing.assert_close(m.predict(x[1:2]).probs, a.probs[1:2], atol=1e-5, rtol=1e-5)
    m.config.inference_seed = 1
    assert (m.predict(x).probs - a.probs).abs().max() > 1e-4

    assert a.probs.shape == (3, 3, 16, 16)
    torch.testing.assert_close(a.probs.sum(dim=1), torch.ones(3, 16, 16))
    assert set(a.maps) == set(m.map_names)
    for v in a.maps.values():
        assert v.shape == (3, 16, 16) and v.dtype == torch.float32
    assert a.maps["confidence"].min() >= 1 / 3 - 1e-6 and a.maps["confidence"].max() <= 1
    for name in ("uncertainty", "discrepancy"):
        assert a.maps[name].min() >= 0 and a.maps[name].max() <= 1
    assert a.maps["uncertainty"].max() > 0 and a.maps["discrepancy"].max() > 0
    pseudo = a.maps["pseudo"]
    assert bool((pseudo == pseudo.round()).all()) and 0 <= pseudo.min() and pseudo.max() <= 2
    m.config.inference_passes = 1  # one pass: no spread across passes
    assert m.predict(x).maps["uncertainty"].abs().max() < 1e-6


def test_predict_with_student_or_teacher():
    m = _method(inference_passes=2)
    m.eval()
    x, _ = _batch()
    m.config.predict_with = "teacher"
    p_t = m.predict(x)
    torch.testing.assert_close(p_t.maps["pseudo"], p_t.probs.argmax(dim=1).float())
    m.config.predict_with = "student"
    p_s = m.predict(x).probs
    m.config.predict_with = "mean"
    torch.testing.assert_close(m.predict(x).probs, 0.5 * (p_t.probs + p_s))


# -- schedules and config -----------------------------------------------------------------------
def test_phases_ramp_and_lr_schedule():
    m = _method(pretrain_fraction=0.2, warmup_fraction=0.1)
    total = 100
    assert [m.phase(i, total) for i in (0, 19, 20, 99)] == [1, 1, 2, 2]
    assert m.ramp(20, total) == pytest.approx(1 / 80) and m.ramp(99, total) == 1.0
    assert m.ramp(59, total) == pytest.approx(0.5)
    # Warm-up then x0.5 every quarter, restarted at the start of phase 2.
    assert m.lr_factor(0, total) < m.lr_factor(1, total) < 1
    assert m.lr_factor(2, total) == 1.0 and m.lr_factor(19, total) == 0.125
    assert m.lr_factor(20, total) < 0.2 and m.lr_factor(28, total) == 1.0
    assert m.lr_factor(99, total) == 0.125
    # Once started, phase 2 stays where it began even if the total estimate grows.
    m.extra_state["phase2_start"] = 20
    assert m.phase(25, 1000) == 2


def test_bad_config_is_a_clear_error():
    cls = get_method("diffusion")
    for bad in (
        {"rounds": 0},
        {"width_mults": "1,2,4,8,16"},
        {"dropout": "0.1,0.2"},
        {"pretrain_fraction": 0.95},
        {"inference_passes": 0},
    ):
        with pytest.raises(SemisegError):
            cls(make_config(cls.Config, {**TINY, **bad}), 1, 2, "cpu")
    with pytest.raises(SemisegError, match="rounds_mode"):
        make_config(cls.Config, {"rounds_mode": "sequential"})


def test_dice_terms_have_the_reference_form_by_default():
    """Issue 12, item 4: per-sample Dice, smoothing 1, classes from the target's one-hot (the
    reference's DiceLoss); 'all_classes' and the batch-pooled 'pooled' form are options."""
    from src_models.losses import dice_loss, sample_dice_loss

    m = _method()
    assert m.config.dice_form == "reference"
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(2, 3, 8, 8, generator=g).softmax(dim=1)
    y = torch.randint(0, 2, (2, 8, 8), generator=g)  # class 2 absent: the reference skips it
    ref = m.dice(probs, y)
    assert torch.equal(ref, sample_dice_loss(probs, y, smooth=1.0, classes="target"))
    assert torch.equal(
        _method(dice_form="all_classes").dice(probs, y), sample_dice_loss(probs, y, classes="all")
    )
    assert torch.equal(_method(dice_form="pooled").dice(probs, y), dice_loss(probs, y))
    # every Dice term of the phase-2 loss goes through it
    calls = []
    original = m.dice

    def recording(p, t, mask=None):
        calls.append(t.shape)
        return original(p, t, mask)

    m.dice = recording
    x, yb = _batch()
    m.train()
    m.phase2_losses(x, x, yb, ramp=1.0)
    rounds = m.config.rounds
    assert len(calls) == 2 + rounds + 2 + rounds  # cross, round cross, sup, round sup
    with pytest.raises(SemisegError, match="dice_form"):
        make_config(get_method("diffusion").Config, {"dice_form": "mean"})


# -- end to end ---------------------------------------------------------------------------------
def _dice(pred, labels, c):
    return 2 * ((pred == c) & (labels == c)).sum() / max(1, (pred == c).sum() + (labels == c).sum())


def test_training_learns_the_tiny_volume(tiny_volume):
    image, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[[2, 6, 9]] = labels[[2, 6, 9]]
    vols, k = make_volumes([image], [sparse])
    sampler = SliceSampler(vols, patch_size=32, batch_size=2, seed=0)
    params = {
        **TINY,
        "rounds": 1,
        "lr": 0.01,
        "lr_schedule": "constant",
        "pretrain_fraction": 0.125,
        "inference_passes": 2,
    }
    bundle = create_model("diffusion", params, 1, k, "cpu", seed=0, patch_size=32)
    before = predict_volume(bundle, image).labels
    logs = []
    train(
        bundle,
        sampler,
        # 32 iterations: the reference's Kaiming initialisation starts with larger weights
        # than PyTorch's default and needs more than the 16 that sufficed with it
        TrainConfig(iterations=32, checkpoint_every=0, warmup=0),
        callback=lambda p: logs.append(p.logs) if not p.done else None,
    )
    assert [lg["phase"] for lg in logs] == [1.0] * 4 + [2.0] * 28
    assert [lg["ramp"] for lg in logs[4:]] == pytest.approx([(i + 1) / 28 for i in range(28)])
    for lg in logs:
        assert {"loss", "loss_rec", "loss_cross", "loss_sup", "phase", "ramp"} <= set(lg)
        assert all(math.isfinite(v) for v in lg.values())
    assert np.mean([lg["loss_sup"] for lg in logs[-4:]]) < 0.6 * logs[4]["loss_sup"]
    after = predict_volume(
        bundle, image, maps=["confidence", "uncertainty", "discrepancy", "pseudo"]
    )
    assert _dice(after.labels, labels, 1) > 0.7 > _dice(before, labels, 1)
    assert after.maps["uncertainty"].shape == image.shape
    assert set(np.unique(after.maps["pseudo"])) <= {0.0, 1.0, 2.0}


def test_stop_and_resume_in_phase_2_continues_exactly(tiny_volume, tmp_path):
    image, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[[2, 6, 9]] = labels[[2, 6, 9]]
    vols, k = make_volumes([image], [sparse])
    params = {**TINY, "rounds": 2, "pretrain_fraction": 0.34, "inference_passes": 1}

    def setup():
        sampler = SliceSampler(vols, patch_size=32, batch_size=2, seed=0)
        return create_model("diffusion", params, 1, k, "cpu", seed=0, patch_size=32), sampler

    full, s_full = setup()
    train(full, s_full, TrainConfig(iterations=6, checkpoint_every=0, warmup=0))
    part, s_part = setup()
    control = TrainingControl()
    train(
        part,
        s_part,
        TrainConfig(iterations=6, checkpoint_every=0, warmup=0),
        out_dir=tmp_path,
        control=control,
        callback=lambda p: control.stop() if p.iteration == 4 else None,
    )
    assert part.iteration == 4 and part.method.extra_state["phase2_start"] == 2
    resumed = load_model(tmp_path)
    assert resumed.method.extra_state["phase2_start"] == 2
    _, s_new = setup()
    train(resumed, s_new, TrainConfig(iterations=6, checkpoint_every=0, warmup=0))
    for name, net in full.method.networks.items():
        for key, value in net.state_dict().items():
            torch.testing.assert_close(resumed.method.networks[name].state_dict()[key], value)
