"""DFCPS: Dual FixMatch Cross Pseudo Supervision (Chen et al., ISBI 2024, arXiv 2402.11273).

Two independently initialised networks f1, f2. Each sees a weak view X_w and a strong view
X_s of every unlabeled slice. The pseudo-label of network a, Y_a = argmax f_a(X_w), supervises
its own strong prediction f_a(X_s) (the FixMatch part) and the other network's weak prediction
f_b(X_w) (the cross pseudo supervision part). Spec: ``../shared/methods/dfcps.md``.

Official code: ``JustlfC03/DFCPS``, ``exp.voc/voc8.res50v3+.CPS+DFCPS/train.py`` (the loop
body: the eight ``model(..., step=1|2)`` calls, ``### cps loss ###``, ``### standard cross
entropy loss ###``, ``### Fix-match Loss``, ``loss = loss_sup + loss_sup_r + cps_loss +
fm_loss``), ``config.py`` (``cps_weight = 1.5``, ``fm_weight = 1.0``, ``lr_power = 0.9``,
``momentum = 0.9``, ``weight_decay = 1e-4``), ``train.sh`` (``learning_rate = 0.0025`` times 8
GPUs = 0.02 for a total batch of 8 labeled + 8 unlabeled), ``dataloader.py``
(``TrainPre_weak``: mirror, scale, crop; ``TrainPre_strong``: its own mirror/scale/crop, then
``adjust_brightness_contrast`` and ``random_gaussian_blur``). The network is TorchSemiSeg's
DeepLabv3+ (see :mod:`src_models.networks.deeplabv3plus`); the two optimisers and their
parameter groups follow ``furnace/utils/init_func.py`` (``group_weight``) of
``charlesCXK/TorchSemiSeg``.

Two variants:

``variant="paper"`` (default), as the paper and spec describe it:
  - X_w = the sampler's weak geometric view; X_s = ``strong_photometric(X_w)``: the same
    geometry, so the weak argmax is a per-pixel target for the strong view.
  - Y_a = argmax softmax f_a(X_w), with the pixels whose confidence is below τ *ignored*
    (mask 0), never relabelled: the blog's ``(p > 0.9).float()`` turns every uncertain
    foreground pixel into background, which this avoids.
  - for (a, b) in ((1, 2), (2, 1)): L_fm += CE(f_a(X_s), Y_a), L_cps += CE(f_b(X_w), Y_a),
    each a FixMatch-style masked mean (Σ m·CE / number of pixels, Sohn et al. 2020, eq. 4), so
    the unsupervised terms grow with the share of confident pixels.
  - L = L_sup + w·(L_fm + L_cps), L_sup = Σ_a (CE + Dice)/2 of f_a on the labeled slices.
    w = 0.4 as the seed blog's ω; the official code instead weighs CPS by 1.5 and FixMatch by
    1.0 (``variant="official"``).

``variant="official"``: the official loss structure, with its two bugs corrected:
  - CPS on argmax without threshold over the labeled and unlabeled weak views:
    ``1.5·[CE(f1(X_w), argmax f2(X_w)) + CE(f2(X_w), argmax f1(X_w))]``.
  - FixMatch: each network's strong output trained toward its *own* argmax
    (``fm_target="self"``), over the labeled and unlabeled strong views. The official strong
    view is drawn with independent mirror/scale/crop, so it is not aligned with the weak one
    and the code could only use the strong prediction's own argmax (an entropy-minimisation
    term). Our strong view shares the weak view's geometry, so ``fm_target="weak"`` offers the
    FixMatch the paper describes (f_a(X_s) toward argmax f_a(X_w)) within this variant.
  - supervised CE (no Dice) of both networks on the labeled weak views;
    ``L = L_sup + L_sup_r + 1.5·L_cps + 1.0·L_fm``; two SGD optimisers (lr 0.02, momentum
    0.9, weight decay 1e-4 except on BN parameters and biases, poly 0.9).
  - NOT reproduced, bug 1: ``pred_unsup_r_strong = model(unsup_imgs_strong, step=1)`` sends
    branch 2's unlabeled strong input through branch 1 (branch 1 then gets that FixMatch
    term twice and branch 2 none); here each network sees its own strong input.
  - NOT reproduced, bug 2: ``adjust_brightness_contrast`` runs after ``normalize`` and uses
    ``contrast = int(U(0, 3) * 255)`` as the gain, i.e. multiplies the normalised image by
    0..765 and adds ``int(U(0.5, 1.5) * 255) - 128``, i.e. -1..254. Here the strong view is a
    moderate gain and offset of the normalised slice (``strong_photometric(jitter="additive")``:
    contrast 0.5-1.5 about the mean, offset ±0.5, always applied; no gamma, which the official
    view does not have) plus the official blur (kernel 3/5/7 with probability 3/4, i.e.
    σ 0.8..1.4), no noise, no cutout.
  - Not a bug but not copied: the official eighth forward pass repeats the sixth, and the
    eight passes are separate; here each network runs once on all its views stacked
    (labeled weak, unlabeled weak, labeled strong, unlabeled strong), so BatchNorm sees one
    batch of 4B slices instead of four of B.

Pseudo-labels are computed from the same training-mode forward pass that is trained (detached),
as in UniMatch; there is no extra no-grad pass. Inference averages both networks' softmax
(``predict_with="mean"``); the official evaluation uses branch 1 only (``"net1"``).

Maps: ``confidence`` (max of the predicted probabilities), ``discrepancy`` (argmax f1 ≠ argmax
f2: where the two networks disagree, the CPS signal and the place a user corrects first),
``discrepancy_soft`` (total variation ½·Σ_k |p1 - p2|, 0..1), ``confidence_1``/``_2``, and
``pseudo`` (the class id of the mean prediction where its confidence ≥ τ, else -1: the part
of the prediction confident enough to serve as a pseudo-label).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from src_models.augment import strong_photometric
from src_models.class_ids import class_ids
from src_models.data.sampler import SliceSampler
from src_models.errors import SemisegError
from src_models.losses import ce_dice_loss, masked_cross_entropy
from src_models.methods.base import Method, Prediction, confidence_map, param, register
from src_models.methods.supervised import make_sgd, make_unet
from src_models.networks.deeplabv3plus import STEMS, DeepLabV3Plus, load_resnet_weights

log = logging.getLogger(__name__)

#: the official strong view, corrected (see the module docstring, bug 2)
OFFICIAL_STRONG = {
    # adjust_brightness_contrast is a gain and an offset: the additive form, and no gamma
    # (the official strong view has none)
    "jitter": "additive",
    "gamma": 0.0,
    "p_jitter": 1.0,
    "p_blur": 0.75,
    "sigma": (0.8, 1.4),
    "p_noise": 0.0,
    "p_cutout": 0.0,
}


@dataclass
class DFCPSConfig:
    variant: str = param(
        "paper",
        "paper: thresholded pseudo-labels, FixMatch + CPS on "
        "unlabeled slices; official: the official code's loss structure",
        choices=("paper", "official"),
    )
    backbone: str = param(
        "unet",
        "network of both branches: the common U-Net, or DeepLabv3+ "
        "with a ResNet-50 encoder as in the official code",
        choices=("unet", "deeplabv3plus"),
    )
    tau: float = param(
        0.9,
        "confidence threshold τ: weak-view pixels below it are ignored "
        "(paper variant; also the threshold of the 'pseudo' map)",
    )
    unsup_weight: float = param(
        0.4,
        "paper variant: weight w of FixMatch + CPS (seed blog "
        "ω = 0.4; the official code uses CPS 1.5 and FixMatch 1.0)",
    )
    cps_weight: float = param(1.5, "official variant: weight of the cross pseudo supervision")
    fm_weight: float = param(1.0, "official variant: weight of the FixMatch term")
    fm_target: str = param(
        "self",
        "official variant: FixMatch target of each strong output: "
        "its own argmax (self, as the official code) or the same network's "
        "weak argmax (weak, possible here as both views share geometry)",
        choices=("self", "weak"),
    )
    lr: float = param(
        0.0,
        "SGD learning rate (poly 0.9); 0 = the variant's default: 0.01 "
        "(paper, as the supervised baseline) or 0.02 (official: 0.0025 x 8 GPUs "
        "for a total batch of 8+8; scale with the batch size)",
    )
    momentum: float = param(0.9, "SGD momentum (Nesterov in the paper variant, plain in official)")
    weight_decay: float = param(1e-4, "SGD weight decay (official: not on BN weights and biases)")
    channels: tuple = param((16, 32, 64, 128, 256), "U-Net widths of the five levels")
    resnet_width: int = param(
        64, "DeepLabv3+: ResNet base width (64 = ResNet-50; smaller values only for quick tests)"
    )
    resnet_stem: str = param(
        "deep",
        "DeepLabv3+: ResNet stem, deep (ResNet-50-v1c of the "
        "official code) or torchvision (7x7 conv); must match the "
        "weights file",
        choices=STEMS,
    )
    backbone_weights: str = param(
        "",
        "DeepLabv3+: path to a ResNet-50 state dict (.pth) "
        "loaded into both encoders; empty = random init (no downloads)",
    )
    predict_with: str = param(
        "mean",
        "inference: mean of both networks' softmax, or network 1 only (as the official evaluation)",
        choices=("mean", "net1"),
    )


# -- losses (pure functions of logits, testable on tiny tensors) ------------------------
def pseudo_label(logits_weak: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Y = argmax softmax and the validity mask (max prob ≥ τ), both without gradient.

    Args: logits_weak float (B, K, H, W). Returns: Y int64 (B, H, W), mask float (B, H, W)
    in {0, 1}. A low-confidence pixel keeps its argmax class in Y and gets mask 0 (ignored);
    it is never turned into background.
    """
    conf, y = logits_weak.detach().float().softmax(dim=1).max(dim=1)
    return y, (conf >= tau).float()


def masked_ce_mean(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FixMatch's masked cross entropy Σ m·CE / (B·H·W): ignored pixels add 0."""
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    return (ce * mask).mean()


def paper_losses(
    sup1: torch.Tensor,
    sup2: torch.Tensor,
    label: torch.Tensor,
    weak1: torch.Tensor,
    weak2: torch.Tensor,
    strong1: torch.Tensor,
    strong2: torch.Tensor,
    tau: float,
    weight: float,
    label_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The paper-variant loss.

    Args:
        sup1, sup2: logits (Bl, K, H, W) of f1, f2 on the labeled slices; label (Bl, H, W);
            label_mask: its per-pixel weights (Bl, H, W) or None (interpolation prior).
        weak1, weak2 / strong1, strong2: logits (Bu, K, H, W) of f1, f2 on the unlabeled
            weak / strong views.
    Returns:
        ``loss = loss_sup + weight·(loss_fixmatch + loss_cps)`` and its parts (tensors), and
        ``mask_ratio`` (share of unlabeled pixels with a valid pseudo-label, both networks).
    """
    y1, m1 = pseudo_label(weak1, tau)
    y2, m2 = pseudo_label(weak2, tau)
    loss_sup = ce_dice_loss(sup1.float(), label, label_mask) + ce_dice_loss(
        sup2.float(), label, label_mask
    )
    loss_fixmatch = sup1.new_zeros((), dtype=torch.float32)
    loss_cps = sup1.new_zeros((), dtype=torch.float32)
    # (f_a(strong), f_b(weak), Y_a, mask_a) for (a, b) in ((1, 2), (2, 1))
    for strong_a, weak_b, y_a, m_a in ((strong1, weak2, y1, m1), (strong2, weak1, y2, m2)):
        loss_fixmatch = loss_fixmatch + masked_ce_mean(strong_a, y_a, m_a)
        loss_cps = loss_cps + masked_ce_mean(weak_b, y_a, m_a)
    loss = loss_sup + weight * (loss_fixmatch + loss_cps)
    return {
        "loss": loss,
        "loss_sup": loss_sup,
        "loss_fixmatch": loss_fixmatch,
        "loss_cps": loss_cps,
        "mask_ratio": 0.5 * (m1.mean() + m2.mean()),
    }


def official_losses(
    weak1: torch.Tensor,
    weak2: torch.Tensor,
    strong1: torch.Tensor,
    strong2: torch.Tensor,
    label: torch.Tensor,
    cps_weight: float = 1.5,
    fm_weight: float = 1.0,
    fm_target: str = "self",
    label_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The official loss structure (``train.py``), on stacked labeled + unlabeled views.

    Args:
        weak1, weak2: logits (Bl + Bu, K, H, W) of f1, f2 on the weak views, labeled first.
        strong1, strong2: the same for the strong views. label: (Bl, H, W).
        fm_target: "self" (official: each strong output toward its own argmax) or "weak"
            (toward the same network's weak argmax).
    Returns:
        ``loss = loss_sup + cps_weight·loss_cps + fm_weight·loss_fixmatch`` and its parts;
        loss_sup = CE(f1) + CE(f2) on the labeled weak views (``loss_sup + loss_sup_r``).
    """
    if fm_target not in ("self", "weak"):
        raise SemisegError(f"fm_target must be 'self' or 'weak', got {fm_target!r}")
    n = label.shape[0]
    weak1, weak2 = weak1.float(), weak2.float()
    strong1, strong2 = strong1.float(), strong2.float()
    loss_sup = masked_cross_entropy(weak1[:n], label, label_mask) + masked_cross_entropy(
        weak2[:n], label, label_mask
    )
    y1, y2 = class_ids(weak1.detach()), class_ids(weak2.detach())
    loss_cps = F.cross_entropy(weak1, y2) + F.cross_entropy(weak2, y1)
    if fm_target == "self":
        t1, t2 = class_ids(strong1.detach()), class_ids(strong2.detach())
    else:
        t1, t2 = y1, y2
    loss_fixmatch = F.cross_entropy(strong1, t1) + F.cross_entropy(strong2, t2)
    loss = loss_sup + cps_weight * loss_cps + fm_weight * loss_fixmatch
    return {
        "loss": loss,
        "loss_sup": loss_sup,
        "loss_fixmatch": loss_fixmatch,
        "loss_cps": loss_cps,
        "mask_ratio": torch.ones(()),
    }


def official_param_groups(net: nn.Module, lr: float) -> list[dict]:
    """TorchSemiSeg's ``group_weight``: weight decay on conv/linear weights only, not on
    biases and normalisation parameters."""
    decay, no_decay = [], []
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            decay.append(m.weight)
            if m.bias is not None:
                no_decay.append(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            no_decay += [p for p in (m.weight, m.bias) if p is not None]
    grouped = {id(p) for p in decay + no_decay}
    decay += [p for p in net.parameters() if id(p) not in grouped]
    return [{"params": decay, "lr": lr}, {"params": no_decay, "lr": lr, "weight_decay": 0.0}]


# -- the method -------------------------------------------------------------------------
@dataclass
class _Opt:
    """The fields :func:`make_sgd` reads, with the variant's resolved learning rate."""

    lr: float
    momentum: float
    weight_decay: float


@register
class DFCPS(Method):
    name = "dfcps"
    description = (
        "DFCPS: two networks; each one's confident weak-view pseudo-label trains its "
        "own strong view (FixMatch) and the other's weak view (cross pseudo "
        "supervision)."
    )
    Config = DFCPSConfig
    map_names = (
        "confidence",
        "discrepancy",
        "discrepancy_soft",
        "confidence_1",
        "confidence_2",
        "pseudo",
    )
    map_meanings = {
        "discrepancy": "1 where the two networks predict different classes, 0 where they agree",
        "discrepancy_soft": "how far apart the two networks' probabilities are: 0 to 1",
        "confidence_1": "network 1 alone: 1/K to 1",
        "confidence_2": "network 2 alone: 1/K to 1",
    }

    warmup_networks = ("net1", "net2")
    budget_note = (
        "With 4 labeled slices on one CPU core it trails the default at 2 minutes and "
        "matches it at 5 (hippocampus: 0.837 / 0.855 against 0.850 / 0.846, fused with the "
        "propagation); with 5 labeled volumes it gains +5.9 Dice points at 800 iterations "
        "(about 23 minutes on a 2-core CPU). docs/benchmarks.md"
    )

    def build(self) -> None:
        c = self.config
        if not 0.0 <= c.tau <= 1.0:
            raise SemisegError(f"tau must be in [0, 1], got {c.tau}: e.g. --set tau=0.9")
        if c.backbone_weights and c.backbone != "deeplabv3plus":
            raise SemisegError(
                "backbone_weights applies to the DeepLabv3+ backbone only: add "
                "--set backbone=deeplabv3plus or leave backbone_weights empty"
            )
        # Two independent initialisations: consecutive draws from the seeded global RNG.
        self.f1 = self._make_network()
        self.f2 = self._make_network()
        self.weights_report = None
        self._weights_missing = ""
        if c.backbone_weights:
            self._load_backbone_weights(c.backbone_weights)
        self.networks = {"net1": self.f1, "net2": self.f2}
        lr = c.lr if c.lr > 0 else (0.02 if c.variant == "official" else 0.01)
        if c.variant == "official":
            self.optimizers = {
                k: torch.optim.SGD(
                    official_param_groups(net, lr),
                    lr=lr,
                    momentum=c.momentum,
                    weight_decay=c.weight_decay,
                )
                for k, net in self.networks.items()
            }
        else:
            opt_config = _Opt(lr, c.momentum, c.weight_decay)
            self.optimizers = {
                k: make_sgd(net.parameters(), opt_config) for k, net in self.networks.items()
            }

    def _make_network(self) -> nn.Module:
        c = self.config
        if c.backbone == "unet":
            return make_unet(c, self.in_channels, self.num_classes)
        if c.resnet_width < 4:
            raise SemisegError(f"resnet_width must be at least 4, got {c.resnet_width}")
        return DeepLabV3Plus(
            self.in_channels, self.num_classes, width=int(c.resnet_width), stem=c.resnet_stem
        )

    def _load_backbone_weights(self, path: str) -> None:
        if not Path(path).is_file():
            # Tolerated here so a trained model still loads on a machine without the file
            # (its checkpoint replaces these weights); a new run refuses it before any work
            # (check_new_run, called by build_run).
            self._weights_missing = path
            return
        for net in (self.f1, self.f2):  # same encoder init for both, as the official code
            self.weights_report = load_resnet_weights(net, path)
        report = self.weights_report
        log.info("DFCPS backbone weights: %s", report.summary())
        if report.missing or report.mismatched:
            warnings.warn(f"partial backbone weights: {report.summary()}", stacklevel=3)
        self.extra_state["backbone_weights"] = report.as_dict()

    def check_new_run(self) -> None:
        if self._weights_missing:
            raise SemisegError(
                f"backbone weights file {self._weights_missing} not found: give "
                "an existing file or leave backbone_weights empty"
            )

    # -- views ---------------------------------------------------------------------------
    def strong_view(self, weak: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Photometric perturbation of the weak view (same geometry), (B, C, H, W)."""
        if self.config.variant == "official":
            return strong_photometric(weak, generator=generator, **OFFICIAL_STRONG)
        return strong_photometric(weak, generator=generator)

    # -- training ------------------------------------------------------------------------
    def train_step(self, data: SliceSampler, iteration: int, total: int) -> dict[str, float]:
        c = self.config
        if iteration == 0:
            self.check_new_run()
        lab = data.labeled()
        unl = data.unlabeled()
        nl, nu = lab.image.shape[0], unl.image.shape[0]
        if c.variant == "official":
            x_w = torch.cat([lab.image, unl.image])
            x = torch.cat([x_w, self.strong_view(x_w, data.generator)])
            with self.autocast():
                out1, out2 = self.step_forward(lambda: (self.f1(x), self.f2(x)))
            n = nl + nu
            losses = official_losses(
                out1[:n],
                out2[:n],
                out1[n:],
                out2[n:],
                lab.label,
                c.cps_weight,
                c.fm_weight,
                c.fm_target,
                lab.mask,
            )
        else:
            x_s = self.strong_view(unl.image, data.generator)
            x = torch.cat([lab.image, unl.image, x_s])
            with self.autocast():
                out1, out2 = self.step_forward(lambda: (self.f1(x), self.f2(x)))
            sup1, weak1, strong1 = out1.split([nl, nu, nu])
            sup2, weak2, strong2 = out2.split([nl, nu, nu])
            losses = paper_losses(
                sup1,
                sup2,
                lab.label,
                weak1,
                weak2,
                strong1,
                strong2,
                c.tau,
                c.unsup_weight,
                lab.mask,
            )
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        for opt in self.optimizers.values():
            opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    # -- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> Prediction:
        with self.autocast():
            l1, l2 = self.f1(image), self.f2(image)
        p1, p2 = l1.float().softmax(dim=1), l2.float().softmax(dim=1)
        mean = 0.5 * (p1 + p2)
        probs = mean if self.config.predict_with == "mean" else p1
        conf_mean, arg_mean = mean.max(dim=1)
        pseudo = torch.where(
            conf_mean >= self.config.tau, arg_mean.float(), torch.full_like(conf_mean, -1.0)
        )
        maps = {
            "confidence": confidence_map(probs),
            "discrepancy": (class_ids(p1) != class_ids(p2)).float(),
            "discrepancy_soft": 0.5 * (p1 - p2).abs().sum(dim=1),
            "confidence_1": confidence_map(p1),
            "confidence_2": confidence_map(p2),
            "pseudo": pseudo,
        }
        return Prediction(probs, maps)
