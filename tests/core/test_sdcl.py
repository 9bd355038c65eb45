"""SDCL: correction terms, copy-paste mixing, EMA, component filtering, the phase switch,
the ResUNet, a short training run and the prediction maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.measure import label as sk_label
from torch import nn

from src_models.augment import random_box_mask
from src_models.data import SliceSampler, make_volumes
from src_models.data.sampler import MIN_HOLDOUT_LABELED
from src_models.errors import SemisegError
from src_models.losses import dice_loss, masked_cross_entropy
from src_models.methods import sdcl
from src_models.networks.resunet import BasicBlock, ResUNet
from src_models.postprocess import largest_component_per_class
from src_models.training import TrainConfig, load_model, train
from src_models.training.checkpoint import create_model

TINY = {"channels": "4,8,16,32,64", "res_channels": "4,8,16,32,64"}


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: the CPU is shared, and oversubscribed threads are much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _method(**params):
    return create_model("sdcl", {**TINY, **params}, 1, 3, seed=0).method


def _sampler(tiny_volume, holdout=0.25, batch=4, seed=0):
    img, lab = tiny_volume
    labeled = [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]  # >= MIN_HOLDOUT_LABELED: some can be held out
    vols, k = make_volumes([img], [lab], axis=0, labeled_slices=[labeled])
    assert k == 3
    return SliceSampler(vols, patch_size=32, batch_size=batch, seed=seed, holdout_fraction=holdout)


# -- correction terms ---------------------------------------------------------------------
def test_entropy_term_is_mean_neg_log_p_over_wrong_discrepancy_pixels():
    logits = torch.tensor(
        [[[[2.0, 0.0, 1.0, -1.0]], [[0.0, 3.0, 1.0, 0.5]], [[-1.0, 0.0, 0.2, 2.0]]]],
        requires_grad=True,
    )  # (1, 3, 1, 4); argmax per pixel: 0, 1, 0 (tie 0/1 -> 0), 2
    target = torch.tensor([[[1, 1, 2, 2]]])  # wrong at pixels 0 and 2
    D = torch.tensor([[[True, True, True, False]]])
    w = torch.tensor([[[0.5, 1.0, 1.0, 1.0]]])
    logp = torch.log_softmax(logits.detach(), dim=1)
    nl = -logp.mean(dim=1)[0, 0]  # -(1/K) sum_c log p_c per pixel
    expected = (0.5 * nl[0] + 1.0 * nl[2]) / 2  # E = {0, 2}; weights in the numerator only
    got = sdcl.correction_entropy(logits, target, D, w)
    assert math.isclose(got.item(), expected.item(), rel_tol=1e-6)
    # KL(uniform || p) + log K has the same value
    kl = (1 / 3) * (math.log(1 / 3) - logp[0, :, 0, 2]).sum() + math.log(3)
    assert math.isclose(nl[2].item(), kl.item(), rel_tol=1e-6)
    got.backward()
    assert logits.grad[..., [1, 3]].abs().sum() == 0  # right or agreeing pixels: no gradient
    assert logits.grad[..., 0].abs().sum() > 0
    # where the students agree there is no term, even if both are wrong
    none = torch.zeros_like(D)
    assert sdcl.correction_entropy(logits, target, none, w).item() == 0.0
    # discrepancy pixels the student gets right do not count either
    right = torch.tensor([[[0, 1, 0, 2]]])
    assert sdcl.correction_entropy(logits, right, D, w).item() == 0.0


def test_correction_mse_normalised_by_all_discrepancy_pixels():
    logits = torch.tensor([[[[1.0, 0.0, 2.0]], [[0.0, 1.0, -1.0]]]])  # (1, 2, 1, 3)
    target = torch.tensor([[[0, 0, 1]]])
    D = torch.tensor([[[True, True, False]]])
    w = torch.tensor([[[1.0, 0.5, 1.0]]])
    p = logits.softmax(dim=1)[0, :, 0]  # (2, 3)
    onehot = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    sq = ((p - onehot) ** 2).mean(dim=0)
    expected = (1.0 * sq[0] + 0.5 * sq[1]) / 2  # Σ D·w·mse / Σ D (not Σ D·w)
    got = sdcl.correction_mse(logits, target, D, w)
    assert math.isclose(got.item(), expected.item(), rel_tol=1e-6)
    empty = sdcl.correction_mse(logits, target, torch.zeros_like(D), w)
    assert empty.item() == 0.0 and not torch.isnan(empty)


def test_discrepancy_mask():
    a = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])
    b = torch.tensor([[[[0.0, 0.0]], [[1.0, 2.0]]]])
    assert sdcl.discrepancy(a, b).tolist() == [[[True, False]]]


# -- copy-paste mix and its weights ---------------------------------------------------------
def test_copy_paste_mix_weights_and_bcp_loss():
    gen = torch.Generator().manual_seed(3)
    M = random_box_mask(12, 9, generator=gen, fraction=2 / 3)
    box = M == 0
    assert box.sum() == 8 * 6  # round(12·2/3) x round(9·2/3)
    base, partner = torch.zeros(2, 1, 12, 9), torch.ones(2, 1, 12, 9)
    x = sdcl.mix(base, partner, M)
    assert torch.equal(x[:, 0] == 1, box.expand(2, 12, 9))  # the box comes from the partner
    y = sdcl.mix(torch.full((2, 12, 9), 2), torch.full((2, 12, 9), 1), M)
    assert y.dtype == torch.int64 and torch.equal(y == 1, box.expand(2, 12, 9))
    w = sdcl.region_weights(M, 0.5, 1.0, 2)
    assert w.shape == (2, 12, 9) and set(w[:, box].unique().tolist()) == {1.0}
    assert set(w[:, ~box].unique().tolist()) == {0.5}

    logits = torch.randn(2, 3, 12, 9)
    got = sdcl.bcp_loss(logits, y, M, 0.5, 1.0)
    out, ins = M.expand(2, 12, 9), 1 - M.expand(2, 12, 9)
    p = logits.softmax(1)
    expected = 0.5 * (
        0.5 * dice_loss(p, y, out, smooth=1e-10)
        + 1.0 * dice_loss(p, y, ins, smooth=1e-10)
        + 0.5 * masked_cross_entropy(logits, y, out)
        + 1.0 * masked_cross_entropy(logits, y, ins)
    )
    assert math.isclose(got.item(), expected.item(), rel_tol=1e-6)
    # a perfect prediction has (almost) no loss; errors inside a zero-weight box cost nothing
    perfect = 30.0 * nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float()
    assert sdcl.bcp_loss(perfect, y, M, 0.5, 1.0).item() < 1e-4
    wrong_in_box = perfect.clone()
    wrong_in_box[:, :, box] = perfect[:, :, box].roll(1, dims=1)
    assert sdcl.bcp_loss(wrong_in_box, y, M, 1.0, 0.0).item() < 1e-4
    assert sdcl.bcp_loss(wrong_in_box, y, M, 0.0, 1.0).item() > 1.0


def test_self_training_step_mixes_both_directions(tiny_volume, monkeypatch):
    m = _method(teacher_train_mode=False, pretrain_fraction=0.0, largest_component=False)
    data = _sampler(tiny_volume, holdout=0.0)
    m.train()
    n = 2
    state = data.generator.get_state()
    la, lb = data.labeled(n), data.labeled(n)
    ua, ub = data.unlabeled(n), data.unlabeled(n)
    M = random_box_mask(32, 32, generator=data.generator)
    data.generator.set_state(state)
    with torch.no_grad():
        m.teacher.eval()
        pa = m.teacher(ua.image).argmax(1)
        pb = m.teacher(ub.image).argmax(1)
    seen, calls = [], []
    m.student_a.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    real = sdcl.bcp_loss

    def spy(logits, target, M_, w_out, w_in, pixel_weight=None):
        assert pixel_weight is None  # no interpolation prior in this sampler
        calls.append((target.clone(), w_out, w_in))
        return real(logits, target, M_, w_out, w_in, pixel_weight)

    monkeypatch.setattr(sdcl, "bcp_loss", spy)
    logs = m._self_train_step(data, n)
    x = seen[0]
    assert x.shape == (2 * n, 1, 32, 32)
    assert torch.allclose(x[:n], ua.image * M + lb.image * (1 - M))  # x1 = u_a·M + x_b·(1−M)
    assert torch.allclose(x[n:], la.image * M + ub.image * (1 - M))  # x2 = x_a·M + u_b·(1−M)
    (y1, w1o, w1i), (y2, w2o, w2i) = calls[:2]  # student A's two mixed inputs
    assert torch.equal(y1, torch.where(M > 0.5, pa, lb.label)) and (w1o, w1i) == (0.5, 1.0)
    assert torch.equal(y2, torch.where(M > 0.5, la.label, pb)) and (w2o, w2i) == (1.0, 0.5)
    assert logs["phase"] == 1.0 and 0.0 <= logs["discrepancy_ratio"] <= 1.0


def test_self_training_step_losses_and_ema(tiny_volume):
    m = _method(pretrain_fraction=0.0)
    data = _sampler(tiny_volume)
    m.train()
    m.switch_to_self_training(data, 0)
    # make the teacher differ from A so the EMA is visible
    with torch.no_grad():
        for p in m.teacher.parameters():
            p.add_(0.1)
    t_before = [p.detach().clone() for p in m.teacher.parameters()]
    logs = m.train_step(data, 0, 10)
    assert math.isclose(logs["loss"], logs["loss_a"] + logs["loss_b"], rel_tol=1e-6)
    composed = logs["loss_bcp"] + 0.5 * logs["loss_mse"] + 0.05 * logs["loss_kl"]
    assert math.isclose(logs["loss"], composed, rel_tol=1e-5)
    assert logs["loss_mse"] > 0 and logs["loss_kl"] > 0  # random students disagree
    for t0, t, s in zip(t_before, m.teacher.parameters(), m.student_a.parameters(), strict=True):
        assert torch.allclose(t, 0.99 * t0 + 0.01 * s, atol=1e-6)
        assert not t.requires_grad
    for t, s in zip(m.teacher.buffers(), m.student_a.buffers(), strict=True):
        assert torch.equal(t, s)


# -- EMA -----------------------------------------------------------------------------------
def test_ema_update_exact_values_in_place():
    teacher = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    student = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        for p in teacher.parameters():
            p.fill_(1.0)
        for p in student.parameters():
            p.fill_(3.0)
        student[1].running_mean.fill_(5.0)
        student[1].num_batches_tracked.fill_(7)
    ptr = teacher[0].weight.data_ptr()
    sdcl.ema_update(teacher, student, 0.99)
    for p in teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.99 * 1 + 0.01 * 3))
    assert teacher[0].weight.data_ptr() == ptr  # in place, no state-dict reload
    assert torch.equal(teacher[1].running_mean, torch.full((2,), 5.0))
    assert int(teacher[1].num_batches_tracked) == 7
    sdcl.ema_update(teacher, student, 0.0)
    assert torch.equal(teacher[0].weight, student[0].weight)


# -- connected components -------------------------------------------------------------------
def test_largest_component_per_class_and_slice():
    lab = np.zeros((2, 8, 10), np.int64)
    lab[0, 0:3, 0:3] = 1  # class 1: 9 pixels, kept
    lab[0, 5:7, 5:7] = 1  # class 1: 4 pixels, removed
    lab[0, 0:2, 7:9] = 2  # class 2: a single blob, untouched
    lab[1, 0, 0] = lab[1, 1, 1] = lab[1, 2, 2] = 1  # a diagonal chain: one 8-connected blob
    lab[1, 6, 5:7] = 1  # 2 pixels: smaller than the chain (it would win with 4-connectivity)
    out = largest_component_per_class(lab, 3)
    assert out.shape == lab.shape and out.dtype == np.int64
    assert (out[0, 0:3, 0:3] == 1).all() and (out[0] == 1).sum() == 9
    assert (out[0] == 2).sum() == 4 and (out[0, 0:2, 7:9] == 2).all()
    assert out[1, 0, 0] == out[1, 1, 1] == out[1, 2, 2] == 1 and (out[1] == 1).sum() == 3
    assert (out[1] == 2).sum() == 0
    # the same as the official per-slice, per-class loop with skimage on random maps
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 4, (5, 24, 20)) * (rng.random((5, 24, 20)) < 0.4)
    ref = np.zeros_like(rand)
    for i in range(rand.shape[0]):
        for c in range(1, 4):
            comp = sk_label(rand[i] == c)
            if comp.max():
                ref[i] += (comp == np.argmax(np.bincount(comp.flat)[1:]) + 1) * c
    assert np.array_equal(largest_component_per_class(rand, 4), ref)
    assert np.array_equal(
        largest_component_per_class(np.zeros((2, 4, 4), int), 3), np.zeros((2, 4, 4))
    )


# -- phase switch ---------------------------------------------------------------------------
def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _same(net, state):
    return all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_switch_restores_best_phase_a_students(tiny_volume, monkeypatch):
    m = _method(pretrain_fraction=0.5, eval_every=1, select_best=False)
    data = _sampler(tiny_volume)
    scripted = iter([{"a": 0.5, "b": 0.1}, {"a": 0.9, "b": 0.2}, {"a": 0.3, "b": 0.8}])
    snapshots = []

    def fake_evaluate(d, chunk=32):
        snapshots.append((_state(m.student_a), _state(m.student_b)))
        return {**next(scripted), "pred": 0.0}

    monkeypatch.setattr(m, "evaluate", fake_evaluate)
    m.train()
    for it in range(5):  # total 10: phase A is iterations 0-4, evaluated after 3, 4 and 5
        assert m.train_step(data, it, 10)["phase"] == 0.0
    assert len(snapshots) == 3 and "best_a" in m.extra_state
    last_a = _state(m.student_a)
    m.switch_to_self_training(data, 5)  # the last state was evaluated already: no new call
    assert len(snapshots) == 3
    assert _same(m.student_a, snapshots[1][0]) and not _same(m.student_a, last_a)
    assert _same(m.student_b, snapshots[2][1])
    assert _same(m.teacher, snapshots[1][0])
    step = next(iter(m.optimizers["b"].state_dict()["state"].values()))["step"]
    assert float(step) == 5  # Adam state of B restored with it (5 updates)
    assert m.extra_state["phase"] == 1 and "best_a" not in m.extra_state
    assert m.train_step(data, 5, 10)["phase"] == 1.0


def test_switch_without_holdout_keeps_last_state(tiny_volume):
    m = _method(pretrain_fraction=0.5)
    data = _sampler(tiny_volume, holdout=0.0)
    assert data.holdout_batch() is None
    m.train()
    for it in range(3):
        m.train_step(data, it, 6)
    last_a, last_b = _state(m.student_a), _state(m.student_b)
    m.switch_to_self_training(data, 3)
    assert m.extra_state["phase"] == 1 and m.extra_state["switch_at"] == 3
    assert _same(m.student_a, last_a) and _same(m.student_b, last_b)
    assert _same(m.teacher, last_a)
    assert m.train_step(data, 3, 6)["phase"] == 1.0


def test_few_labeled_slices_are_all_trained_on_and_the_last_state_kept(tiny_volume):
    """Issue 12: with fewer than MIN_HOLDOUT_LABELED (10) labeled slices SDCL holds none out
    (5 labeled: trains on all 5) and ends phase A with its last state; with 10 or more it
    holds out a fifth as before."""
    img, lab = tiny_volume
    assert MIN_HOLDOUT_LABELED == 10

    def sampler(labeled):
        vols, _ = make_volumes([img], [lab], axis=0, labeled_slices=[labeled])
        return SliceSampler(
            vols, patch_size=32, batch_size=4, seed=0, holdout_fraction=sdcl.SDCL.holdout_fraction
        )

    five = [1, 3, 5, 7, 9]
    data = sampler(five)
    assert data.holdout == [] and sorted(s for _, s in data.labeled_index) == five
    m = _method(pretrain_fraction=0.5)
    m.train()
    for it in range(3):
        m.train_step(data, it, 6)
    last_a, last_b = _state(m.student_a), _state(m.student_b)
    m.switch_to_self_training(data, 3)
    assert _same(m.student_a, last_a) and _same(m.student_b, last_b)  # the last phase-A state
    assert "best_a" not in m.extra_state and m.evaluate(data) is None
    ten = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10]
    data = sampler(ten)
    assert len(data.holdout) == 2 and len(data.labeled_index) == 8


def test_phase_schedule_and_config_errors():
    m = _method(pretrain_fraction=0.2)
    assert not m.in_self_training(199, 1000) and m.in_self_training(200, 1000)
    assert not m.in_self_training(1, 2)  # a minutes budget's first estimate: wait
    assert _method(pretrain_fraction=0.0).in_self_training(0, 1)
    assert not _method(pretrain_fraction=1.0).in_self_training(10**6, 10)
    official = _method(anneal=0.0)
    assert official.lr_factor(500, 1000) == 1.0 and official.lr_factor(999, 1000) == 1.0
    assert m.lr_factor(699, 1000) == 1.0 and m.lr_factor(850, 1000) == pytest.approx(0.5)
    # the option: the last share of the iterations falls linearly to 0
    annealed = _method(anneal=0.25)
    factors = [annealed.lr_factor(i, 1000) for i in range(1000)]
    assert factors[:750] == [1.0] * 750 and factors[875] == pytest.approx(0.5)
    assert (np.diff(factors) <= 0).all() and factors[-1] == pytest.approx(1 / 250)
    assert annealed.lr_factor(1, 2) == 1.0  # a minutes budget's first estimate: no decay
    assert annealed.lr_factor(40, 41) == pytest.approx(1 / (0.25 * 41))  # its last step
    with pytest.raises(SemisegError, match="anneal"):
        _method(anneal=1.5)
    with pytest.raises(SemisegError, match="pretrain_fraction"):
        _method(pretrain_fraction=1.5)
    with pytest.raises(SemisegError, match="box_fraction"):
        _method(box_fraction=1.0)
    with pytest.raises(SemisegError, match="res_channels"):
        _method(res_channels="4,8,16")
    with pytest.raises(SemisegError, match="predict_with"):
        _method(predict_with="teacher")


# -- networks ---------------------------------------------------------------------------------
def test_resunet_shapes_and_depth():
    net = ResUNet(2, 4, channels=(4, 8, 16, 32, 64))
    x = torch.randn(2, 2, 48, 32)
    feats = net.encode(x)
    assert [f.shape[1:] for f in feats] == [
        (4, 48, 32),
        (8, 24, 16),
        (16, 12, 8),
        (32, 6, 4),
        (64, 3, 2),
    ]
    assert net(x).shape == (2, 4, 48, 32)
    assert [len(s) for s in net.stages] == [3, 4, 6, 3]
    assert sum(isinstance(mod, BasicBlock) for mod in net.modules()) == 16
    assert not any(isinstance(mod, nn.Dropout) and mod.p > 0 for mod in net.modules())


# -- training and prediction -------------------------------------------------------------------
def test_short_training_run_learns_and_predicts(tiny_volume, tmp_path):
    data = _sampler(tiny_volume)
    bundle = create_model("sdcl", {**TINY, "pretrain_fraction": 0.3, "eval_every": 5}, 1, 3, seed=0)
    m = bundle.method
    before = m.evaluate(data)
    events = []
    train(
        bundle,
        data,
        TrainConfig(iterations=36, batch_size=4, patch_size=32, checkpoint_every=0, warmup=0),
        out_dir=tmp_path,
        callback=events.append,
    )
    logs = [e.logs for e in events if not e.done]
    assert [lg["phase"] for lg in logs] == [0.0] * 11 + [1.0] * 25
    keys = {
        "loss",
        "loss_a",
        "loss_b",
        "loss_bcp",
        "loss_mse",
        "loss_kl",
        "discrepancy_ratio",
        "phase",
    }
    assert all(keys <= set(lg) for lg in logs)
    after = m.evaluate(data)
    assert after["pred"] > before["pred"] + 0.3 and after["pred"] > 0.5
    assert np.mean([lg["loss_bcp"] for lg in logs[-5:]]) < np.mean(
        [lg["loss_bcp"] for lg in logs[11:16]]
    )
    assert "holdout_dice" in logs[-1] and "best_final" in m.extra_state

    # reload (weights only) and predict the maps
    loaded = load_model(tmp_path).method
    loaded.eval()
    x = data.holdout_batch().image
    pred = loaded.predict(x)
    b, _, h, w = x.shape
    assert pred.probs.shape == (b, 3, h, w)
    assert torch.allclose(pred.probs.sum(1), torch.ones(b, h, w), atol=1e-5)
    assert set(pred.maps) == set(sdcl.SDCL.map_names)
    for name, v in pred.maps.items():
        assert v.shape == (b, h, w) and v.dtype == torch.float32, name
    assert pred.maps["confidence"].min() >= 1 / 3 - 1e-6 and pred.maps["confidence"].max() <= 1
    with torch.no_grad():
        la, lb = loaded.student_a(x), loaded.student_b(x)
    assert torch.equal(pred.maps["discrepancy"], (la.argmax(1) != lb.argmax(1)).float())
    assert torch.allclose(pred.probs, 0.5 * (la.softmax(1) + lb.softmax(1)), atol=1e-6)
    pseudo = pred.maps["pseudo"]
    assert torch.equal(pseudo, pseudo.round()) and pseudo.min() >= 0 and pseudo.max() <= 2
    filtered = largest_component_per_class(pseudo.long().numpy(), 3)
    assert np.array_equal(filtered, pseudo.long().numpy())  # already one component per class
    only_a = _method(predict_with="a")
    only_a.load_state_dict(load_model(tmp_path).method.state_dict())
    only_a.eval()
    assert torch.allclose(only_a.predict(x).probs, la.softmax(1), atol=1e-6)
