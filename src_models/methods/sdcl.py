"""SDCL: Students Discrepancy-Informed Correction Learning (Song & Wang, MICCAI 2024).

Two students of different architecture, A (the common U-Net, with the official ``UNet_2d``'s
Kaiming-normal initialisation) and B (a ResUNet: ResNet-34 encoder + U-Net decoder,
:mod:`src_models.networks.resunet`, Kaiming-normal too), and a non-trainable teacher T,
an exponential moving average of A. One training run has two phases, split by
``pretrain_fraction`` of the iteration budget:

**Phase A (pre-training, labeled slices only).** Each step pastes a box of one labeled
batch into another, ``x = x_a·M + x_b·(1−M)`` (M: ones with a zero box of ``box_fraction``
of each side), mixes the labels the same way and trains both students with the BCP loss
(both regions weight 1). The best state of each student on the held-out labeled slices is
kept (evaluated from the second half of the phase, as the official code from epoch 50 of
100 every 5 epochs); at the switch both students (and their Adam states, as the official
``load_net_opt``) are restored from it and T is initialised from A.

**Phase B (self-training).** With labeled (x_a, y_a), (x_b, y_b) and unlabeled u_a, u_b:

1. pseudo-labels p_a, p_b = argmax T(u) (no grad), keeping the largest connected component
   per class and slice (:func:`~src_models.postprocess.largest_component_per_class`);
2. one box mask M for the batch;
3. bidirectional copy-paste ``x1 = u_a·M + x_b·(1−M)`` (p_a outside the box, weight
   ``pseudo_weight``; y_b inside, weight 1) and ``x2 = x_a·M + u_b·(1−M)`` (y_a outside,
   weight 1; p_b inside, weight ``pseudo_weight``);
4. both students predict x1 and x2; the discrepancy D = argmax A(x) ≠ argmax B(x) (no grad);
5. per student S: ``L_S = Σ_x [L_bcp(x) + λ_mse·L_mse(x) + λ_kl·L_kl(x)]`` with
   ``L_bcp = ½[Σ_region w·Dice + Σ_region w·CE]``, the correction MSE
   ``Σ D·w·mean_c(softmax − onehot(y))² / Σ D`` over all discrepancy pixels, and the
   entropy-maximising term ``Σ E·w·(−mean_c log p_c) / Σ E`` over E = D ∧ (argmax S ≠ y),
   the discrepancy pixels S gets wrong (the official ``KLDivLoss(log p, 1)``, equal to
   KL(uniform‖p) + log K); each student has its own Adam (lr 1e-3, constant in the
   official code; here by default falling linearly to 0 over the last 30 % of the method's
   own iterations, ``anneal``: a few-minute budget cannot select the best checkpoint on
   held-out slices as the official runs do, and otherwise ends on its last noisy step);
6. T ← α·T + (1−α)·A.

Official code: ``pascalcpp/SDCL``, ``code/ACDC_train.py`` (2D): ``pre_train`` (phase A),
``self_train`` (phase B), ``generate_mask`` (box), ``mix_loss`` (BCP loss), ``mix_mse_loss``
and ``mix_max_kl_loss`` (correction terms), ``get_XOR_region`` (D),
``get_ACDC_2DLargestCC`` / ``get_ACDC_masks`` (pseudo-labels), ``update_model_ema`` (EMA);
the masked Dice is BCP's ``DiceLoss._dice_mask_loss`` (``DeepMed-Lab-ECNU/BCP``,
``code/utils/losses.py``: squared denominator, smoothing 1e-10, batch-pooled, class mean).
The official ACDC schedule is 100 pre-training epochs (~11k iterations) then 400
self-training epochs (~45k): a pre-training share of about 0.2, the default here.

Differences from the official code, all deliberate:

- the four forward passes of each phase-B step (x1 and x2 through A and B) run as two stacked
  passes, one per student, of batch 2n (and the teacher's two as one): same losses (every
  loss is still computed per mixed input), but BatchNorm statistics pool x1 and x2;
- the EMA lerps the parameters in place and copies the buffers (BatchNorm running
  statistics) from A; the official ``update_model_ema`` reloads a whole state dict that also
  lerps the buffers, including the integer ``num_batches_tracked`` counter (a defect). With
  ``teacher_train_mode`` (default, as the official code) the teacher's BatchNorm uses batch
  statistics, so its buffers do not affect the pseudo-labels;
- the official ``generate_mask`` draws the box corner with ``np.random.randint(0, S − s)``,
  which never places the box against the bottom/right border; ``random_box_mask`` draws all
  ``S − s + 1`` positions;
- model selection uses labeled slices held out from training (``holdout_fraction`` 0.2),
  never test data. With fewer than ``MIN_HOLDOUT_LABELED`` (10) labeled slices none is held
  out: SDCL trains on all of them and keeps the last phase-A state (and, in phase B, the last
  state): a held-out fifth of 3-5 slices would be one of the user's few annotations;
- the official self-training also keeps the pair with the best validation mean Dice (every
  200 iterations) and tests it; ``select_best`` does the same on the held-out slices (with
  the prediction chosen by ``predict_with``).

Batch: each of the four loaders draws ``batch_size // 2`` images (the official 2D code: 12
per loader for its batch size 24), so each student sees ``batch_size`` images per phase-B
step (x1 and x2), like the supervised baseline; phase A mixes two labeled loaders into
``batch_size // 2`` images. Cost, measured with 1 thread on a shared 2-core CPU (batch 8,
patch 64, 3 classes, default widths): phase A ≈ 1.5-1.9x and phase B ≈ 3.3-3.8x the
supervised step; phase B ≈ 0.76-0.90x an official-style step (six unstacked passes,
per-slice ``skimage`` component loop, state-dict EMA, per-tensor Adam, ``argmax``). The
ResUNet (~6M parameters) costs about twice the U-Net.

Stopping early calls :meth:`finish`, which restores the selected state: a resumed run
continues from it (the selection records are kept in ``extra_state``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from src_models.augment import random_box_mask
from src_models.class_ids import class_ids
from src_models.data.sampler import Batch, SliceSampler
from src_models.errors import SemisegError
from src_models.losses import dice_loss, masked_cross_entropy, one_hot
from src_models.methods.base import Method, Prediction, confidence_map, param, register
from src_models.networks.resunet import ResUNet
from src_models.networks.unet import UNet
from src_models.postprocess import largest_component_torch

#: BCP's Dice smoothing (``DiceLoss._dice_mask_loss``)
DICE_SMOOTH = 1e-10


@dataclass
class SDCLConfig:
    lr: float = param(1e-3, "Adam learning rate of both students (constant, as the official)")
    alpha: float = param(0.99, "EMA decay α of the teacher (an EMA of student A)")
    lambda_mse: float = param(0.5, "weight λ_mse of the correction MSE (Pancreas: 0.3)")
    lambda_kl: float = param(0.05, "weight λ_kl of the entropy-maximising term (Pancreas: 0.1)")
    pseudo_weight: float = param(0.5, "loss weight of pseudo-labeled regions (ground truth: 1)")
    box_fraction: float = param(2 / 3, "side of the copy-paste box as a fraction of the patch")
    pretrain_fraction: float = param(
        0.2, "share of the iteration budget for phase A (official ACDC: ~11k of ~56k)"
    )
    teacher_train_mode: bool = param(
        True, "teacher in train mode (dropout, batch BatchNorm) for pseudo-labels, as official"
    )
    largest_component: bool = param(
        True, "keep only the largest connected component per class and slice of pseudo-labels"
    )
    #: measured (benchmarks/annotation_notes.md, "SDCL's learning rate annealed"): left
    #: atrium, 5 minutes, 5 and 6 slices, 4 runs: the network alone +0.7 to +11.5 points
    #: (it fits its own labeled slices better), the fused output +0.0 to +0.4
    anneal: float = param(
        0.3,
        "share of the method's own iterations, at their end, over which both students' "
        "learning rate falls linearly to 0 (0: constant, as the official)",
    )
    select_best: bool = param(
        True, "end with the student pair of best held-out Dice in phase B (else the last)"
    )
    eval_every: int = param(0, "iterations between held-out evaluations (0: 1/20 of a phase)")
    loader_batch: int = param(
        0, "images per loader (labeled a/b, unlabeled a/b); 0: training batch size // 2"
    )
    predict_with: str = param(
        "mean", "prediction: mean of both students, A or B", choices=("mean", "a", "b")
    )
    channels: tuple = param((16, 32, 64, 128, 256), "U-Net (student A, teacher) widths")
    init: str = param(
        "kaiming",
        "initialisation of student A (and the teacher): 'kaiming' = official UNet_2d "
        "(Kaiming-normal convolutions, BatchNorm 1/0), 'default' = PyTorch's",
        choices=("kaiming", "default"),
    )
    res_channels: tuple = param(
        (16, 32, 64, 128, 256), "ResUNet (student B) widths: stem and 4 ResNet-34 stages"
    )


# -- the pieces of the method, as functions of tensors ----------------------------------
def mix(base: torch.Tensor, partner: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Copy-paste ``base·M + partner·(1−M)`` of images (B, C, H, W) or labels (B, H, W);
    M: float (H, W), 1 where ``base`` is kept, 0 in the box pasted from ``partner``."""
    if base.is_floating_point():
        return base * M + partner * (1 - M)
    return torch.where(M > 0.5, base, partner)


def mix_weights(
    base: torch.Tensor | None, partner: torch.Tensor | None, M: torch.Tensor
) -> torch.Tensor | None:
    """Per-pixel label weights (B, H, W) of a copy-paste mix (None = all 1), or None."""
    if base is None and partner is None:
        return None
    ref = base if base is not None else partner
    ones = torch.ones_like(ref)
    return mix(ones if base is None else base, ones if partner is None else partner, M)


def region_weights(M: torch.Tensor, w_outside: float, w_inside: float, n: int) -> torch.Tensor:
    """Per-pixel loss weights (n, H, W): ``w_outside`` where M = 1, ``w_inside`` in the box."""
    w = M * w_outside + (1 - M) * w_inside
    return w.expand(n, *M.shape)


def bcp_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    M: torch.Tensor,
    w_outside: float,
    w_inside: float,
    pixel_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCP ``mix_loss``: ½[Σ_region w·Dice + Σ_region w·CE], regions outside/inside the box.

    logits (B, K, H, W); target int (B, H, W) (already mixed); M (H, W); pixel_weight
    (B, H, W) or None: the target's own per-pixel weights (interpolation prior), mixed alike."""
    n = logits.shape[0]
    outside = M.expand(n, *M.shape)
    inside = 1 - outside
    if pixel_weight is not None:
        outside, inside = outside * pixel_weight, inside * pixel_weight
    probs = logits.softmax(dim=1)
    dice = w_outside * dice_loss(probs, target, outside, smooth=DICE_SMOOTH)
    dice = dice + w_inside * dice_loss(probs, target, inside, smooth=DICE_SMOOTH)
    ce = w_outside * masked_cross_entropy(logits, target, outside)
    ce = ce + w_inside * masked_cross_entropy(logits, target, inside)
    return 0.5 * (dice + ce)


def discrepancy(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """D: bool (B, H, W), True where the students' argmax classes differ."""
    return class_ids(logits_a) != class_ids(logits_b)


def correction_mse(
    logits: torch.Tensor, target: torch.Tensor, D: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """``Σ D·w·mean_c(softmax − onehot(y))² / Σ D`` (0 without discrepancy): pulls the
    discrepancy pixels toward their label (official ``mix_mse_loss``)."""
    probs = logits.softmax(dim=1)
    sq = (probs - one_hot(target, logits.shape[1])).pow(2).mean(dim=1)
    d = D.float()
    return (d * weight * sq).sum() / d.sum().clamp_min(1.0)


def correction_entropy(
    logits: torch.Tensor, target: torch.Tensor, D: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """``Σ E·w·(−mean_c log p_c) / Σ E`` with E = D ∧ (argmax ≠ y): minimising it pushes the
    discrepancy pixels the student gets wrong toward the uniform distribution (maximum
    entropy); official ``mix_max_kl_loss`` (``KLDivLoss`` against a tensor of ones)."""
    with torch.no_grad():
        e = (D & (class_ids(logits) != target)).float()
    neg_log = -F.log_softmax(logits, dim=1).mean(dim=1)
    return (e * weight * neg_log).sum() / e.sum().clamp_min(1.0)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """T ← α·T + (1−α)·S parameter-wise in place; buffers (BatchNorm statistics) copied."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach(), 1.0 - alpha)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


def hard_dice(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean over foreground classes of the batch-pooled Dice of class ids (B, H, W); a class
    absent from both prediction and target counts 1."""
    scores = []
    for k in range(1, num_classes):
        p, t = pred == k, target == k
        denom = int(p.sum()) + int(t.sum())
        scores.append(1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom)
    return float(sum(scores) / len(scores)) if scores else 1.0


def _clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@register
class SDCL(Method):
    name = "sdcl"
    description = (
        "SDCL (MICCAI 2024): U-Net and ResUNet students corrected where they disagree, "
        "EMA teacher pseudo-labels with bidirectional copy-paste; labeled pre-training first."
    )
    Config = SDCLConfig
    map_names = ("confidence", "discrepancy", "confidence_a", "confidence_b", "pseudo")
    map_meanings = {
        "discrepancy": "1 where the two students predict different classes, 0 where they agree",
        "confidence_a": "student A alone: 1/K to 1",
        "confidence_b": "student B alone: 1/K to 1",
    }
    holdout_fraction = 0.2
    warmup_networks = ("a", "b")
    budget_note = (
        "Pays off from about 5 minutes when the labeled slices include the structure's first "
        "and last (--ends-labeled), and the default (auto) then trains it: with 4 labeled "
        "slices on a 2-core CPU, at 5 minutes, fused with the propagation, 0.908 against "
        "supervised's 0.894 (left atrium, 5 volumes) and 0.872 against 0.850 (hippocampus, 5 "
        "volumes), better on 9 of 10 volumes; at 2 minutes (the same runs' weights) level "
        "on the left atrium, below on the hippocampus (0.847 against 0.855). With the "
        "slices strictly inside it is level (0.876 against 0.879, 0.891 against 0.887). With 5 "
        "labeled volumes it is level with supervised at 800 iterations (about 11 minutes). "
        "docs/benchmarks.md"
    )

    # -- setup ----------------------------------------------------------------------------
    def build(self) -> None:
        cfg = self.config
        checks = [
            (0.0 <= cfg.pretrain_fraction <= 1.0, "pretrain_fraction must be in [0, 1]"),
            (0.0 <= cfg.alpha <= 1.0, "alpha must be in [0, 1]"),
            (0.0 < cfg.box_fraction < 1.0, "box_fraction must be in (0, 1)"),
            (cfg.pseudo_weight >= 0, "pseudo_weight must be >= 0"),
            (cfg.lambda_mse >= 0 and cfg.lambda_kl >= 0, "lambda_mse/lambda_kl must be >= 0"),
            (cfg.lr > 0, "lr must be positive"),
            (0.0 <= cfg.anneal <= 1.0, "anneal must be between 0 and 1"),
            (cfg.eval_every >= 0 and cfg.loader_batch >= 0, "eval_every/loader_batch must be >= 0"),
            (len(cfg.channels) == 5, "channels needs five widths, e.g. 16,32,64,128,256"),
            (len(cfg.res_channels) == 5, "res_channels needs five widths, e.g. 16,32,64,128,256"),
        ]
        for ok, message in checks:
            if not ok:
                raise SemisegError(f"sdcl: {message} (set it with --set key=value)")
        self.student_a = UNet(
            self.in_channels,
            self.num_classes,
            channels=tuple(int(c) for c in cfg.channels),
            init=cfg.init,
        )
        self.student_b = ResUNet(
            self.in_channels, self.num_classes, channels=tuple(int(c) for c in cfg.res_channels)
        )
        self.teacher = copy.deepcopy(self.student_a)
        self.teacher.requires_grad_(False)
        self.networks = {"a": self.student_a, "b": self.student_b, "teacher": self.teacher}
        # The fused kernel is the same Adam, measured ~4x faster on the CPU than the default
        # per-tensor loop for these ~8M parameters (~0.1 s per SDCL step).
        fused = self.device.type in ("cpu", "cuda")
        self.optimizers = {
            "a": torch.optim.Adam(self.student_a.parameters(), lr=cfg.lr, fused=fused),
            "b": torch.optim.Adam(self.student_b.parameters(), lr=cfg.lr, fused=fused),
        }
        self.extra_state = {"phase": 0, "last_eval": -1}
        self._holdout: tuple[int, Batch | None] | None = None

    def lr_factor(self, iteration: int, total: int) -> float:
        """1: Adam at a constant lr in both phases (official). With ``anneal`` the last
        share of the iterations falls linearly to 0: the official runs end on the student
        pair of best held-out Dice after ~56k iterations, a few-minute budget with no slice
        to hold out ends on whatever its last constant-lr step left (left atrium, 5 minutes:
        networks fitting their own labeled slices with Dice 0.58-0.90). A minutes budget
        reports ``total = iteration + 1`` until it has a rate estimate (3 steps): no decay
        before; at its end ``total = iteration + 1`` is the last step, decayed."""
        share = self.config.anneal
        if share <= 0 or (total <= iteration + 1 and iteration < 3):
            return 1.0
        left = (total - iteration) / (share * total)
        return float(min(1.0, max(0.0, left)))

    def end_warmup(self, data: SliceSampler) -> None:
        """The EMA teacher starts from the warmed-up student A (as it starts from A's
        initialisation without a warm-up)."""
        self.teacher.load_state_dict(self.student_a.state_dict())

    # -- phases ---------------------------------------------------------------------------
    def pretrain_iterations(self, total: int) -> int:
        return int(round(self.config.pretrain_fraction * total))

    def in_self_training(self, iteration: int, total: int) -> bool:
        """Phase B from ``pretrain_fraction·total`` on. A minutes budget first reports
        ``total = iteration + 1`` until it has a rate estimate: the switch waits for it."""
        if self.extra_state.get("phase", 0) == 1:
            return True
        f = self.config.pretrain_fraction
        if f <= 0.0:
            return True
        if f >= 1.0:
            return False
        return total > iteration + 1 and iteration >= self.pretrain_iterations(total)

    def _loader_batch(self, data: SliceSampler) -> int:
        return self.config.loader_batch or max(1, data.batch_size // 2)

    def train_step(self, data: SliceSampler, iteration: int, total: int) -> dict[str, float]:
        logs = self._train_step(data, iteration, total)
        self.extra_state["done"] = iteration + 1
        return logs

    def _train_step(self, data: SliceSampler, iteration: int, total: int) -> dict[str, float]:
        n = self._loader_batch(data)
        if not self.in_self_training(iteration, total):
            logs = self._pretrain_step(data, n)
            n_pre = self.pretrain_iterations(total)
            every = self.config.eval_every or max(1, n_pre // 20)
            done = iteration + 1
            if 2 * done >= n_pre and done % every == 0:
                self._select_pretrained(data, done, logs)
            return logs
        if self.extra_state.get("phase", 0) == 0:
            self.switch_to_self_training(data, iteration)
        logs = self._self_train_step(data, n)
        if self.config.select_best:
            start = int(self.extra_state.get("switch_at", 0))
            every = self.config.eval_every or max(1, (total - start) // 20)
            if (iteration + 1 - start) % every == 0:
                self._select_final(data, iteration + 1, logs)
        return logs

    def _box(self, data: SliceSampler, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        M = random_box_mask(h, w, generator=data.generator, fraction=self.config.box_fraction)
        return M.to(self.device, image.dtype)

    def _forward_students(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def forward():
            with self.autocast():
                return self.student_a(x), self.student_b(x)

        out_a, out_b = self.step_forward(forward)
        return out_a.float(), out_b.float()

    def _step(self, loss: torch.Tensor) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()  # the students share no parameter: one backward = two separate ones
        for opt in self.optimizers.values():
            opt.step()

    def _pretrain_step(self, data: SliceSampler, n: int) -> dict[str, float]:
        la, lb = data.labeled(n), data.labeled(n)
        M = self._box(data, la.image)
        x = mix(la.image, lb.image, M)
        y = mix(la.label, lb.label, M)
        wy = mix_weights(la.mask, lb.mask, M)
        out_a, out_b = self._forward_students(x)
        loss_a = bcp_loss(out_a, y, M, 1.0, 1.0, wy)
        loss_b = bcp_loss(out_b, y, M, 1.0, 1.0, wy)
        self._step(loss_a + loss_b)
        ratio = discrepancy(out_a.detach(), out_b.detach()).float().mean()
        return {
            "loss": loss_a.item() + loss_b.item(),
            "loss_a": loss_a.item(),
            "loss_b": loss_b.item(),
            "loss_bcp": loss_a.item() + loss_b.item(),
            "loss_mse": 0.0,
            "loss_kl": 0.0,
            "discrepancy_ratio": ratio.item(),
            "phase": 0.0,
        }

    @torch.no_grad()
    def pseudo_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Teacher logits (B, K, H, W) -> class ids (B, H, W), largest component per class."""
        labels = class_ids(logits)
        if self.config.largest_component:
            labels = largest_component_torch(labels, self.num_classes)
        return labels

    def _self_train_step(self, data: SliceSampler, n: int) -> dict[str, float]:
        cfg = self.config
        la, lb = data.labeled(n), data.labeled(n)
        ua, ub = data.unlabeled(n), data.unlabeled(n)
        with torch.no_grad():
            self.teacher.train(cfg.teacher_train_mode)
            with self.autocast():
                t_logits = self.teacher(torch.cat([ua.image, ub.image])).float()
            plab = self.pseudo_labels(t_logits)
        pa, pb = plab[:n], plab[n:]
        M = self._box(data, la.image)
        x1, y1 = mix(ua.image, lb.image, M), mix(pa, lb.label, M)
        x2, y2 = mix(la.image, ub.image, M), mix(la.label, pb, M)
        wy1, wy2 = mix_weights(None, lb.mask, M), mix_weights(la.mask, None, M)
        w1 = region_weights(M, cfg.pseudo_weight, 1.0, n)
        w2 = region_weights(M, 1.0, cfg.pseudo_weight, n)
        out_a, out_b = self._forward_students(torch.cat([x1, x2]))
        with torch.no_grad():
            D = discrepancy(out_a, out_b)
        parts = {}
        for key, out in (("a", out_a), ("b", out_b)):
            o1, o2 = out[:n], out[n:]
            bcp = bcp_loss(o1, y1, M, cfg.pseudo_weight, 1.0, wy1)
            bcp = bcp + bcp_loss(o2, y2, M, 1.0, cfg.pseudo_weight, wy2)
            mse = correction_mse(o1, y1, D[:n], w1) + correction_mse(o2, y2, D[n:], w2)
            ent = correction_entropy(o1, y1, D[:n], w1) + correction_entropy(o2, y2, D[n:], w2)
            parts[key] = (bcp, mse, ent, bcp + cfg.lambda_mse * mse + cfg.lambda_kl * ent)
        loss_a, loss_b = parts["a"][3], parts["b"][3]
        self._step(loss_a + loss_b)
        ema_update(self.teacher, self.student_a, cfg.alpha)
        return {
            "loss": loss_a.item() + loss_b.item(),
            "loss_a": loss_a.item(),
            "loss_b": loss_b.item(),
            "loss_bcp": parts["a"][0].item() + parts["b"][0].item(),
            "loss_mse": parts["a"][1].item() + parts["b"][1].item(),
            "loss_kl": parts["a"][2].item() + parts["b"][2].item(),
            "discrepancy_ratio": D.float().mean().item(),
            "phase": 1.0,
        }

    # -- model selection on the held-out labeled slices -------------------------------------
    def _holdout_batch(self, data: SliceSampler) -> Batch | None:
        if self._holdout is None or self._holdout[0] != id(data):
            self._holdout = (id(data), data.holdout_batch())
        return self._holdout[1]

    @torch.no_grad()
    def evaluate(self, data: SliceSampler, chunk: int = 32) -> dict[str, float] | None:
        """Hard Dice of A, B and the configured prediction on the held-out labeled slices
        (networks in eval mode), or None when nothing is held out."""
        batch = self._holdout_batch(data)
        if batch is None:
            return None
        self.eval()
        try:
            pa, pb = [], []
            for x in batch.image.split(chunk):
                out_a, out_b = self._forward_students(x)
                pa.append(out_a.softmax(dim=1))
                pb.append(out_b.softmax(dim=1))
        finally:
            self.train()
        probs_a, probs_b = torch.cat(pa), torch.cat(pb)
        k = self.num_classes
        return {
            "a": hard_dice(class_ids(probs_a), batch.label, k),
            "b": hard_dice(class_ids(probs_b), batch.label, k),
            "pred": hard_dice(class_ids(self._combine(probs_a, probs_b)), batch.label, k),
        }

    def _select_pretrained(self, data: SliceSampler, done: int, logs: dict | None = None) -> None:
        """Evaluate the current phase-A students; keep each one's best (weights + Adam)."""
        scores = self._holdout_scores(data, done)
        if scores is None:
            return
        for key, net in (("a", self.student_a), ("b", self.student_b)):
            best = self.extra_state.get(f"best_{key}")
            if best is None or scores[key] >= float(best["score"]):  # ties: the later state
                self.extra_state[f"best_{key}"] = {
                    "score": scores[key],
                    "iteration": done,
                    "net": _clone_state(net),
                    "opt": copy.deepcopy(self.optimizers[key].state_dict()),
                }
        if logs is not None:
            logs["holdout_dice_a"], logs["holdout_dice_b"] = scores["a"], scores["b"]

    def _restore_pretrained(self, keep_records: bool) -> None:
        for key, net in (("a", self.student_a), ("b", self.student_b)):
            best = self.extra_state.get(f"best_{key}")
            if not keep_records:
                self.extra_state.pop(f"best_{key}", None)
            if best is not None:
                net.load_state_dict(best["net"])
                self.optimizers[key].load_state_dict(best["opt"])
        self.teacher.load_state_dict(self.student_a.state_dict())

    def switch_to_self_training(self, data: SliceSampler, iteration: int) -> None:
        """End of phase A: evaluate the last state, restore each student's best phase-A
        state (the last when nothing is held out) and initialise the teacher from A."""
        if self.config.pretrain_fraction > 0:
            self._select_pretrained(data, iteration)
        self._restore_pretrained(keep_records=False)
        self.extra_state.update(phase=1, switch_at=iteration)

    def _holdout_scores(self, data: SliceSampler, done: int) -> dict | None:
        """Held-out Dice of A, B and their combination, at most once per iteration (None when
        already evaluated at ``done`` or nothing is held out)."""
        if self.extra_state.get("last_eval") == done:
            return None
        self.extra_state["last_eval"] = done
        return self.evaluate(data)

    def _select_final(self, data: SliceSampler, done: int, logs: dict | None = None) -> None:
        scores = self._holdout_scores(data, done)
        if scores is None:
            return
        best = self.extra_state.get("best_final")
        if best is None or scores["pred"] >= float(best["score"]):  # ties: the later state
            self.extra_state["best_final"] = {
                "score": scores["pred"],
                "iteration": done,
                "a": _clone_state(self.student_a),
                "b": _clone_state(self.student_b),
                "teacher": _clone_state(self.teacher),
            }
        if logs is not None:
            logs["holdout_dice"] = scores["pred"]

    def finish(self, data: SliceSampler) -> None:
        """End of training (or a stop): in phase A restore each student's best pre-trained
        state (teacher = A); in phase B with ``select_best`` the best held-out pair, the last
        state included. The records stay in ``extra_state``, so a resumed run (which then
        continues from the restored state) still compares against them."""
        done = int(self.extra_state.get("done", 0))
        if self.extra_state.get("phase", 0) == 0:
            self._select_pretrained(data, done)
            self._restore_pretrained(keep_records=True)
            return
        if self.config.select_best:
            self._select_final(data, done)
            best = self.extra_state.get("best_final")
            if best is not None:
                self.student_a.load_state_dict(best["a"])
                self.student_b.load_state_dict(best["b"])
                self.teacher.load_state_dict(best["teacher"])

    # -- inference --------------------------------------------------------------------------
    def _combine(self, probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
        if self.config.predict_with == "a":
            return probs_a
        if self.config.predict_with == "b":
            return probs_b
        return 0.5 * (probs_a + probs_b)

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> Prediction:
        out_a, out_b = self._forward_students(image)
        probs_a, probs_b = out_a.softmax(dim=1), out_b.softmax(dim=1)
        probs = self._combine(probs_a, probs_b)
        with self.autocast():
            t_logits = self.teacher(image)
        maps = {
            "confidence": confidence_map(probs),
            "discrepancy": discrepancy(out_a, out_b).float(),
            "confidence_a": confidence_map(probs_a),
            "confidence_b": confidence_map(probs_b),
            "pseudo": self.pseudo_labels(t_logits.float()).float(),
        }
        return Prediction(probs, maps)

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        self.extra_state = {"phase": 0, "last_eval": -1, **dict(state)}
