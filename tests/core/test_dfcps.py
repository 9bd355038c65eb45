"""DFCPS: pseudo-label semantics, view geometry, loss routing and totals (both variants),
DeepLabv3+ shapes/stride/weights, training on the tiny volume, prediction maps."""

import math

import numpy as np
import pytest
import torch

from src_models.data import SliceSampler, make_volumes
from src_models.errors import SemisegError
from src_models.inference import predict_volume
from src_models.methods import dfcps as dfcps_module
from src_models.methods.base import make_config
from src_models.methods.dfcps import (
    DFCPSConfig,
    masked_ce_mean,
    official_losses,
    paper_losses,
    pseudo_label,
)
from src_models.networks.deeplabv3plus import DeepLabV3Plus, ResNet50, load_resnet_weights
from src_models.recipe import RunRecipe, build_run
from src_models.training import TrainConfig, load_model, train
from src_models.training.checkpoint import create_model

TINY = {"channels": "4,8,16,32,64"}
TINY_DEEPLAB = {"backbone": "deeplabv3plus", "resnet_width": 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _logits(probs) -> torch.Tensor:
    """Per-pixel probabilities (B, H, W, K) -> logits (B, K, H, W) with exactly that softmax."""
    return torch.tensor(probs, dtype=torch.float64).log().permute(0, 3, 1, 2).float()


def _setup(tiny_volume, params=TINY, seed=0, batch=4):
    image, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[[2, 6, 9]] = labels[[2, 6, 9]]
    vols, k = make_volumes([image], [sparse])
    sampler = SliceSampler(vols, patch_size=32, batch_size=batch, seed=seed)
    bundle = create_model("dfcps", params, 1, k, "cpu", seed=seed, patch_size=32)
    return bundle, sampler


# -- pseudo-labels ----------------------------------------------------------------------
def test_low_confidence_foreground_is_ignored_not_made_background():
    # three pixels: confident background, uncertain foreground (p=0.6), confident class 2
    weak = _logits([[[[0.95, 0.03, 0.02], [0.3, 0.6, 0.1], [0.02, 0.03, 0.95]]]])
    y, mask = pseudo_label(weak, tau=0.9)
    assert y.tolist() == [[[0, 1, 2]]]  # the uncertain pixel keeps its class ...
    assert mask.tolist() == [[[1.0, 0.0, 1.0]]]  # ... and is ignored
    strong = torch.randn(1, 3, 1, 3, requires_grad=True)
    loss = masked_ce_mean(strong, y, mask)
    loss.backward()
    assert strong.grad[0, :, 0, 1].abs().max() == 0  # no push toward any class
    assert strong.grad[0, :, 0, 0].abs().max() > 0
    logp = strong.detach().log_softmax(dim=1)[0, :, 0]
    assert loss.item() == pytest.approx(-(logp[0, 0] + logp[2, 2]).item() / 3, rel=1e-5)
    # Treating the uncertain pixel as background (the blog's p > 0.9) would give another loss.
    as_background = masked_ce_mean(strong, torch.tensor([[[0, 0, 2]]]), torch.ones(1, 1, 3))
    assert as_background.item() > loss.item()


def test_masked_ce_all_ignored_is_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = masked_ce_mean(logits, torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


# -- losses against hand computation ----------------------------------------------------
def _ce_dice_by_hand(probs, label):
    """(CE + Dice)/2 with Python floats; probs list per pixel, label list of ids (K=2)."""
    ce = sum(-math.log(p[y]) for p, y in zip(probs, label, strict=True)) / len(label)
    dice = []
    for k in range(2):
        inter = sum(p[k] * (y == k) for p, y in zip(probs, label, strict=True))
        denom = sum(p[k] ** 2 for p in probs) + sum(y == k for y in label)
        dice.append(1 - (2 * inter + 1e-5) / (denom + 1e-5))
    return 0.5 * (ce + sum(dice) / 2)


def test_paper_losses_match_hand_computation():
    label = torch.tensor([[[0, 1]]])
    sup1 = [[0.9, 0.1], [0.2, 0.8]]
    sup2 = [[0.7, 0.3], [0.4, 0.6]]
    weak1 = [[0.95, 0.05], [0.3, 0.7]]  # Y1 = (0, 1), valid (1, 0)
    weak2 = [[0.2, 0.8], [0.05, 0.95]]  # Y2 = (1, 1), valid (0, 1)
    strong1 = [[0.6, 0.4], [0.5, 0.5]]
    strong2 = [[0.1, 0.9], [0.25, 0.75]]
    out = paper_losses(
        *(_logits([[p]]) for p in (sup1, sup2)),
        label,
        *(_logits([[p]]) for p in (weak1, weak2, strong1, strong2)),
        tau=0.9,
        weight=0.4,
    )
    sup = _ce_dice_by_hand(sup1, [0, 1]) + _ce_dice_by_hand(sup2, [0, 1])
    fixmatch = -math.log(0.6) / 2 + -math.log(0.75) / 2  # f1(s)->Y1 pixel 0, f2(s)->Y2 pixel 1
    cps = -math.log(0.2) / 2 + -math.log(0.7) / 2  # f2(w)->Y1 pixel 0, f1(w)->Y2 pixel 1
    assert out["loss_sup"].item() == pytest.approx(sup, rel=1e-5)
    assert out["loss_fixmatch"].item() == pytest.approx(fixmatch, rel=1e-5)
    assert out["loss_cps"].item() == pytest.approx(cps, rel=1e-5)
    assert out["loss"].item() == pytest.approx(sup + 0.4 * (fixmatch + cps), rel=1e-5)
    assert out["mask_ratio"].item() == pytest.approx(0.5)


def test_official_losses_match_hand_computation():
    # sample 0 labeled (class 0), sample 1 unlabeled; one pixel each
    label = torch.tensor([[[0]]])
    weak1 = _logits([[[[0.7, 0.3]]], [[[0.4, 0.6]]]])  # argmax (0, 1)
    weak2 = _logits([[[[0.2, 0.8]]], [[[0.9, 0.1]]]])  # argmax (1, 0)
    strong1 = _logits([[[[0.6, 0.4]]], [[[0.55, 0.45]]]])  # own argmax (0, 0)
    strong2 = _logits([[[[0.3, 0.7]]], [[[0.8, 0.2]]]])  # own argmax (1, 0)
    sup = -math.log(0.7) - math.log(0.2)
    cps = (-math.log(0.3) - math.log(0.4)) / 2 + (-math.log(0.2) - math.log(0.1)) / 2
    fm_self = (-math.log(0.6) - math.log(0.55)) / 2 + (-math.log(0.7) - math.log(0.8)) / 2
    fm_weak = (-math.log(0.6) - math.log(0.45)) / 2 + (-math.log(0.7) - math.log(0.8)) / 2
    out = official_losses(weak1, weak2, strong1, strong2, label)
    assert out["loss_sup"].item() == pytest.approx(sup, rel=1e-5)
    assert out["loss_cps"].item() == pytest.approx(cps, rel=1e-5)
    assert out["loss_fixmatch"].item() == pytest.approx(fm_self, rel=1e-5)
    assert out["loss"].item() == pytest.approx(sup + 1.5 * cps + fm_self, rel=1e-5)
    weak = official_losses(weak1, weak2, strong1, strong2, label, 1.0, 2.0, fm_target="weak")
    assert weak["loss_fixmatch"].item() == pytest.approx(fm_weak, rel=1e-5)
    assert weak["loss"].item() == pytest.approx(sup + cps + 2.0 * fm_weak, rel=1e-5)


def test_cross_terms_route_each_pseudo_label_to_the_right_network():
    # pixel 0: only f1 is confident (class 1); pixel 1: only f2 is confident (class 0)
    weak1 = _logits([[[[0.02, 0.98], [0.5, 0.5]]]]).requires_grad_()
    weak2 = _logits([[[[0.5, 0.5], [0.97, 0.03]]]]).requires_grad_()
    strong1 = _logits([[[[0.5, 0.5], [0.5, 0.5]]]]).requires_grad_()
    strong2 = _logits([[[[0.5, 0.5], [0.5, 0.5]]]]).requires_grad_()
    sup = torch.zeros(1, 2, 1, 2, requires_grad=True)
    out = paper_losses(
        sup,
        sup,
        torch.zeros(1, 1, 2, dtype=torch.long),
        weak1,
        weak2,
        strong1,
        strong2,
        tau=0.9,
        weight=1.0,
    )
    out["loss"].backward()
    # Y1 (pixel 0, class 1) supervises f1(strong) and f2(weak): both pushed toward class 1
    for g in (strong1.grad, weak2.grad):
        assert g[0, 1, 0, 0] < 0 < g[0, 0, 0, 0]
    # ... and nothing else: f2(strong) and f1(weak) get no gradient there
    assert strong2.grad[0, :, 0, 0].abs().max() == 0 and weak1.grad[0, :, 0, 0].abs().max() == 0
    # Y2 (pixel 1, class 0) supervises f2(strong) and f1(weak) only
    for g in (strong2.grad, weak1.grad):
        assert g[0, 0, 0, 1] < 0 < g[0, 1, 0, 1]
    assert strong1.grad[0, :, 0, 1].abs().max() == 0 and weak2.grad[0, :, 0, 1].abs().max() == 0
    # exact value: d/dz CE / N = (softmax - onehot) / 2 pixels
    assert strong1.grad[0, :, 0, 0].tolist() == pytest.approx([0.25, -0.25], abs=1e-6)


# -- views -----------------------------------------------------------------------------
def test_strong_view_is_photometric_of_the_weak_view_fed_to_the_networks(tiny_volume, monkeypatch):
    bundle, sampler = _setup(tiny_volume)
    method = bundle.method
    seen = {}
    original = dfcps_module.strong_photometric

    def recording(image, **kwargs):
        seen["in"], seen["out"] = image.clone(), original(image, **kwargs)
        return seen["out"]

    monkeypatch.setattr(dfcps_module, "strong_photometric", recording)
    inputs = []
    method.f1.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().clone()))
    method.f2.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().clone()))
    method.train()
    method.train_step(sampler, 0, 10)
    assert len(inputs) == 2 and torch.equal(inputs[0], inputs[1])  # one stacked pass each
    x = inputs[0]
    assert x.shape[0] == 12  # 4 labeled + 4 unlabeled weak + 4 strong
    assert torch.equal(x[4:8], seen["in"])  # the weak views ...
    assert torch.equal(x[8:], seen["out"])  # ... and their photometric perturbation
    assert not torch.equal(x[4:8], x[8:])


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_strong_view_keeps_the_edges_of_the_weak_view(tiny_volume, variant):
    bundle, _ = _setup(tiny_volume, params={**TINY, "variant": variant})
    weak = torch.full((16, 1, 32, 32), -1.0)
    weak[..., 13:] = 1.0  # a sharp vertical edge at column 13
    strong = bundle.method.strong_view(weak, torch.Generator().manual_seed(0))
    assert strong.shape == weak.shape and not torch.equal(strong, weak)

    def corr(a, b):
        a, b = a.flatten(1) - a.mean(dim=(1, 2, 3))[:, None], b.flatten(1) - b.mean()
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))

    assert corr(strong, weak).min() > 0.6  # the edge stays where the weak view has it
    assert corr(strong.flip(-1), weak).max() < 0.0  # a geometric change would move it


def test_official_variant_strong_view_has_no_gamma(tiny_volume, monkeypatch):
    """The official strong view is a gain/offset and a blur: no gamma (issue 12, item 6)."""
    bundle, _ = _setup(tiny_volume, params={**TINY, "variant": "official"})
    seen = {}
    original = dfcps_module.strong_photometric

    def recording(image, **kwargs):
        seen.update(kwargs)
        return original(image, **kwargs)

    monkeypatch.setattr(dfcps_module, "strong_photometric", recording)
    g = torch.Generator().manual_seed(0)
    weak = torch.randn(16, 1, 32, 32, generator=g)
    bundle.method.strong_view(weak, torch.Generator().manual_seed(1))
    assert seen["gamma"] == 0.0 and seen["jitter"] == "additive"
    # without the blur the official view is an affine map of each sample: no gamma curve
    kw = {**dfcps_module.OFFICIAL_STRONG, "p_blur": 0.0}
    strong = original(weak, generator=torch.Generator().manual_seed(1), **kw)
    for w, st in zip(weak, strong, strict=True):
        a, b = w.flatten(), st.flatten()
        fit = torch.linalg.lstsq(torch.stack([a, torch.ones_like(a)], 1), b[:, None]).solution
        resid = b - (fit[0] * a + fit[1])
        assert float(resid.abs().max()) < 1e-4
    # the paper variant keeps the default view (official-style ColorJitter, no gamma either)
    paper, _ = _setup(tiny_volume, params={**TINY, "variant": "paper"})
    seen.clear()
    paper.method.strong_view(weak, torch.Generator().manual_seed(1))
    assert "gamma" not in seen


# -- the method -------------------------------------------------------------------------
def test_config_defaults_and_errors(tiny_volume):
    c = DFCPSConfig()
    assert (c.variant, c.backbone, c.tau, c.unsup_weight, c.predict_with) == (
        "paper",
        "unet",
        0.9,
        0.4,
        "mean",
    )
    assert (c.cps_weight, c.fm_weight) == (1.5, 1.0)
    with pytest.raises(SemisegError, match="variant"):
        make_config(DFCPSConfig, {"variant": "blog"})
    with pytest.raises(SemisegError, match="tau"):
        create_model("dfcps", {**TINY, "tau": 1.5}, 1, 3)
    with pytest.raises(SemisegError, match="deeplabv3plus"):
        create_model("dfcps", {**TINY, "backbone_weights": "w.pth"}, 1, 3)


def test_two_networks_independent_and_optimisers_per_variant():
    paper = create_model("dfcps", TINY, 1, 3).method
    w1 = torch.cat([p.flatten() for p in paper.f1.parameters()])
    w2 = torch.cat([p.flatten() for p in paper.f2.parameters()])
    assert w1.shape == w2.shape and not torch.allclose(w1, w2)
    assert set(paper.optimizers) == {"net1", "net2"}
    g = paper.optimizers["net1"].param_groups[0]
    assert g["lr"] == 0.01 and g["nesterov"]
    official = create_model("dfcps", {**TINY, "variant": "official"}, 1, 3).method
    decay, no_decay = official.optimizers["net2"].param_groups
    assert decay["lr"] == no_decay["lr"] == 0.02 and not decay["nesterov"]
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    n_params = sum(p.numel() for p in official.f2.parameters())
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == n_params
    assert all(p.ndim == 1 for p in no_decay["params"])  # BN weights/biases and conv biases
    assert {id(p) for p in official.optimizers["net1"].param_groups[0]["params"]}.isdisjoint(
        {id(p) for p in official.f2.parameters()}
    )


def test_official_step_gives_each_network_its_own_strong_views(tiny_volume):
    bundle, sampler = _setup(tiny_volume, params={**TINY, "variant": "official"})
    method = bundle.method
    inputs = {}
    for name, net in method.networks.items():
        net.register_forward_pre_hook(lambda m, a, name=name: inputs.setdefault(name, a[0]))
    method.train()
    logs = method.train_step(sampler, 0, 10)
    # labeled weak, unlabeled weak, labeled strong, unlabeled strong through *each* network
    assert inputs["net1"].shape[0] == inputs["net2"].shape[0] == 16
    assert torch.equal(inputs["net1"], inputs["net2"])
    assert set(logs) == {"loss", "loss_sup", "loss_fixmatch", "loss_cps", "mask_ratio"}
    assert logs["mask_ratio"] == 1.0 and all(math.isfinite(v) for v in logs.values())
    assert logs["loss"] == pytest.approx(
        logs["loss_sup"] + 1.5 * logs["loss_cps"] + logs["loss_fixmatch"], rel=1e-5
    )


def test_dfcps_learns_the_tiny_volume_and_reloads(tiny_volume, tmp_path):
    image, labels = tiny_volume
    bundle, sampler = _setup(tiny_volume, params={**TINY, "lr": 0.05}, batch=2)
    before = predict_volume(bundle, image).labels
    logs = []
    train(
        bundle,
        sampler,
        TrainConfig(iterations=40, checkpoint_every=0, warmup=0),
        out_dir=tmp_path,
        callback=lambda p: logs.append(p.logs),
    )
    after = predict_volume(bundle, image, maps=["discrepancy", "confidence"])

    def dice(pred):
        return [
            2
            * ((pred == c) & (labels == c)).sum()
            / max(1, (pred == c).sum() + (labels == c).sum())
            for c in (1, 2)
        ]

    assert min(dice(after.labels)) > 0.85 and max(dice(before)) < 0.75
    assert logs[-2]["loss_sup"] < 0.5 * logs[0]["loss_sup"]
    assert max(p["mask_ratio"] for p in logs[-10:-1]) > 0.5  # pseudo-labels got confident
    assert max(p["loss_cps"] for p in logs[-10:-1]) > 0  # and were used
    assert set(after.maps) == {"discrepancy", "confidence"}
    assert set(np.unique(after.maps["discrepancy"])) <= {0.0, 1.0}
    assert after.maps["discrepancy"].mean() < 0.2  # the two networks mostly agree
    reloaded = load_model(tmp_path)
    assert np.array_equal(predict_volume(reloaded, image).labels, after.labels)


def test_predict_maps_shapes_and_ranges(tiny_volume):
    bundle, sampler = _setup(tiny_volume)
    method = bundle.method
    method.train()
    for it in range(3):
        method.train_step(sampler, it, 10)
    method.eval()
    x = torch.randn(3, 1, 32, 48)
    pred = method.predict(x)
    k = method.num_classes
    assert pred.probs.shape == (3, k, 32, 48)
    assert torch.allclose(pred.probs.sum(1), torch.ones(3, 32, 48), atol=1e-5)
    assert set(pred.maps) == set(method.map_names)
    for v in pred.maps.values():
        assert v.shape == (3, 32, 48) and v.dtype == torch.float32
    with torch.no_grad():
        p1, p2 = method.f1(x).softmax(1), method.f2(x).softmax(1)
    mean = (p1 + p2) / 2
    assert torch.allclose(pred.probs, mean, atol=1e-6)
    m = pred.maps
    assert torch.equal(m["discrepancy"], (p1.argmax(1) != p2.argmax(1)).float())
    assert 0 <= m["discrepancy_soft"].min() and m["discrepancy_soft"].max() <= 1
    assert (m["discrepancy_soft"][m["discrepancy"] == 1] > 0).all()
    assert torch.allclose(m["confidence_1"], p1.max(1).values, atol=1e-6)
    assert torch.allclose(m["confidence_2"], p2.max(1).values, atol=1e-6)
    assert 1 / k - 1e-6 <= m["confidence"].min() and m["confidence"].max() <= 1
    confident = mean.max(1).values >= 0.9
    assert (m["pseudo"][~confident] == -1).all()
    assert torch.equal(m["pseudo"][confident], mean.argmax(1)[confident].float())
    method.config.predict_with = "net1"
    assert torch.allclose(method.predict(x).probs, p1, atol=1e-6)


# -- DeepLabv3+ -------------------------------------------------------------------------
def test_deeplabv3plus_shapes_stride_and_architecture():
    net = DeepLabV3Plus(1, 3, width=8).eval()
    x = torch.randn(2, 1, 48, 64)
    low, deep = net.backbone(x)
    assert low.shape == (2, 32, 12, 16)  # layer1, stride 4, 4 * width channels
    assert deep.shape == (2, 256, 3, 4)  # layer4, output stride 16, 32 * width channels
    assert net(x).shape == (2, 3, 48, 64)
    assert DeepLabV3Plus(3, 2, width=8)(torch.randn(2, 3, 16, 32)).shape == (2, 2, 16, 32)
    with pytest.raises(SemisegError, match="divisible by 16"):
        net(torch.randn(1, 1, 40, 64))
    assert [len(getattr(net.backbone, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert [b.conv2.dilation[0] for b in net.backbone.layer4] == [2, 4, 8]
    assert all(
        m.stride == (1, 1) for m in net.backbone.layer4.modules() if isinstance(m, torch.nn.Conv2d)
    )
    assert [b[0].dilation[0] for b in net.aspp.branches] == [1, 6, 12, 18]
    full = DeepLabV3Plus(1, 2)  # standard widths: 48-channel low-level, 256 ASPP/decoder
    assert full.reduce[0].out_channels == 48 and full.aspp.project[0].out_channels == 256
    assert full.fuse[0][0].in_channels == 304
    # the torchvision-stem ResNet-50 has exactly torchvision's parameter count without fc
    assert sum(p.numel() for p in ResNet50(3, 64, stem="torchvision").parameters()) == 23508032


def test_load_resnet_weights_by_name_with_grey_stem(tmp_path):
    source = ResNet50(3, 8, stem="torchvision")
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(10, 256)
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": state}, path)
    net = DeepLabV3Plus(1, 2, width=8, stem="torchvision")
    report = load_resnet_weights(net, path)
    assert report.adapted == ["backbone.conv1.weight"]
    assert report.missing == [] and report.mismatched == []
    assert report.unexpected == ["module.fc.weight"]
    assert len(report.loaded) == len(source.state_dict())
    own = net.state_dict()
    assert torch.equal(own["backbone.layer3.2.conv2.weight"], source.layer3[2].conv2.weight)
    # grey stem = RGB kernel summed: same response as the grey image replicated to RGB
    stem = own["backbone.conv1.weight"]
    assert torch.allclose(stem, source.conv1.weight.sum(1, keepdim=True))
    assert "loaded" in report.summary()
    bad = tmp_path / "other.pth"
    torch.save({"head.weight": torch.zeros(3)}, bad)
    with pytest.raises(SemisegError, match="no tensor"):
        load_resnet_weights(net, bad)
    with pytest.raises(SemisegError, match="not found"):
        load_resnet_weights(net, tmp_path / "missing.pth")


def test_deeplab_backbone_weights_in_the_method(tiny_volume, tmp_path):
    path = tmp_path / "v1c.pth"
    torch.save(ResNet50(1, 8, stem="deep").state_dict(), path)
    params = {**TINY_DEEPLAB, "backbone_weights": str(path)}
    bundle, sampler = _setup(tiny_volume, params=params, batch=2)
    method = bundle.method
    s1, s2 = method.f1.state_dict(), method.f2.state_dict()
    assert torch.equal(s1["backbone.conv1.0.weight"], s2["backbone.conv1.0.weight"])
    assert not torch.equal(s1["classifier.weight"], s2["classifier.weight"])
    assert method.extra_state["backbone_weights"]["missing"] == []
    method.train()
    logs = method.train_step(sampler, 0, 10)
    assert all(math.isfinite(v) for v in logs.values())
    # a missing file: a trained model still loads (its checkpoint holds the weights), a new
    # run is refused by build_run before any work, and train_step refuses it too
    lost, _ = _setup(tiny_volume, params={**params, "backbone_weights": "gone.pth"})
    with pytest.raises(SemisegError, match="not found"):
        lost.method.check_new_run()
    with pytest.raises(SemisegError, match="not found"):
        lost.method.train_step(sampler, 0, 10)
    image, labels = tiny_volume
    recipe = RunRecipe(method="dfcps", params={**params, "backbone_weights": "gone.pth"})
    with pytest.raises(SemisegError, match="gone.pth not found"):
        build_run(recipe, [image], [labels], [[2, 6]])


def test_deeplab_official_variant_trains_end_to_end(tiny_volume, tmp_path):
    image, _ = tiny_volume
    bundle, sampler = _setup(tiny_volume, params={**TINY_DEEPLAB, "variant": "official"}, batch=2)
    train(bundle, sampler, TrainConfig(iterations=2, checkpoint_every=0), out_dir=tmp_path)
    pred = predict_volume(load_model(tmp_path), image, maps=["discrepancy_soft", "pseudo"])
    assert pred.labels.shape == image.shape
    assert pred.maps["pseudo"].min() >= -1 and pred.maps["pseudo"].max() < 3
