"""CrossMatch: image- and feature-level perturbations with self-knowledge distillation.

Zhao et al., "CrossMatch: Enhance Semi-Supervised Medical Image Segmentation with
Perturbation Strategies and Knowledge Distillation" (2024). Reference implementation
``AiEson/CrossMatch``: the training iteration of ``ACDC/train_cross_match.py`` (``main``, the
loop body from the no-grad mix-partner pass to ``optimizer.step()``), the feature perturbation
of ``ACDC/model/unet.py`` (``PertDropout``, ``UNet.forward(need_fp=True)``) and the masked
Dice of ``ACDC/util/utils.py`` (``DiceLoss._dice_loss``). Written from those files, not
copied; names follow the paper/official code (``p_w``, ``pm_fw``, ``L_tkd``, ...).

One iteration (labeled ``x, y``; unlabeled weak view ``u_w`` with two independent strong views
``u_s1, u_s2``; a second unlabeled batch ``m_w, m_s1, m_s2`` used only as CutMix partner):

1. no grad: ``pm`` (clean) and ``pm_fw``, ``pm_fs`` (weak/strong feature-perturbed) of the
   partner ``m_w``. See ``partner_bn`` below for the network mode.
2. CutMix: ``u_s1`` takes ``m_s1`` inside box 1, ``u_s2`` takes ``m_s2`` inside box 2.
3. two stacked gradient passes (:func:`fp_forward`):
   ``p_x, p_w, p_w_fw, p_w_fs = fp(cat(x, u_w))``; ``p_s1, p_s2, p_s2_fw, p_s2_fs =
   fp(cat(u_s1, u_s2))``; the encoder runs once per pass, the decoder once on four streams.
4. pseudo-labels/confidences from the detached ``p_w`` (inside each box: from ``pm``), and
   from ``p_w_fw``/``p_w_fs`` (inside box 2: from ``pm_fw``/``pm_fs``) for L_dkd.
5. :func:`crossmatch_loss`: ``L_x = (CE + Dice)/2``; Dice-only unsupervised terms whose
   pixels with confidence < τ are removed; ``L_tkd`` (clean ``p_w`` teaches the four
   perturbed students), ``L_dkd`` (each perturbed weak-view decoder teaches the same decoder
   on s2); ``loss = (L_x + 0.25 L_s1 + 0.25 L_s2 + w_kd((1-η) L_tkd + η L_dkd)) / 2``.

Differences from the official code, all deliberate and documented:

- Partner pass network mode (``partner_bn``). The official code at its current HEAD (commit
  cd1e25c, "fix dropout in eval mode", December 2025) runs the no-grad partner pass with the
  network in **train mode**: the ``model.eval()`` before it is commented out, so BatchNorm uses
  the batch statistics (and updates its running statistics) and the encoder dropout is on.
  ``partner_bn="train"`` (default) does that. The code before cd1e25c (2024) called
  ``model.eval()``: BatchNorm used running statistics and the encoder dropout was off, while
  the feature-perturbation dropouts stayed active only because ``PertDropout`` keeps them in a
  plain Python list that ``eval()`` does not reach; ``partner_bn="eval"`` reproduces that, with
  the perturbation made explicit (an always-on functional dropout).
- Wasted work (``faithful_partner_pass``). The official partner pass calls ``model(m_w)`` and
  then ``model(cat(x, m_w), need_fp=True)``, recomputing ``pm`` and decoding ``x`` only to
  throw it away. In eval mode the network is per-sample, so one encoder pass on ``m_w`` and one
  decoder pass on ``cat(f_m, drop25(f_m), drop75(f_m))`` give the same ``pm`` (up to rounding) and
  ``pm_fw``/``pm_fs`` from the same distribution (1 encoder + 3 decoder batches instead of
  3 + 5). In train mode the default takes all three from the single fp pass on
  ``cat(x, m_w)``; its BatchNorm batch statistics differ from those of ``model(m_w)``, so
  ``pm`` differs slightly from the official one. ``faithful_partner_pass=True`` runs the two
  official calls literally.
- The strong view is :func:`strong_photometric` on the weak view: the grey-image effect of the
  official ``ColorJitter(0.5, 0.5, 0.5, 0.25)`` p 0.8 (multiplicative brightness and contrast
  on the sample scaled to [0, 1]; saturation and hue do nothing on a grey image), blur
  σ 0.1–2 p 0.5; its noise and cutout are off by default because the official strong
  augmentation has neither. Not reproduced: the official uint8 quantisation of the views.
- The 3D (LA) code ramps the threshold as ``(τ + (1-τ)·sigmoid_rampup(it, 17000))·ln 2``
  (``LA/code/train_cross_match.py``): a quirk that lowers τ=0.75 to 0.52–0.69. It is available
  as ``tau_schedule="la_ramp"``; the default is the 2D constant τ.

Cost (1 thread, hippocampus, batch 8 labeled + 8 unlabeled + 8 partners, patch 64, median CPU
time per step; measured with ``partner_bn="eval"``, the default then; ``"train"`` encodes
``cat(x, m_w)`` and decodes four streams in the partner pass, about 1 encoder + 1 decoder
batch of n more): 1.53 s, 5.5x the supervised step on 8 labeled (0.28 s); 6.5x at equal memory
format (channels-last for both, or for neither), close to the ~6.7x ratio of convolution work
(no-grad: 1 encoder + 3 decoder batches; two gradient passes: 2 + 4 each). A step with the
official partner pass (``faithful_partner_pass``, plain format) takes 1.97 s: this one is 0.78x
of it (0.92x at the plain format).

Maps of :meth:`CrossMatch.predict`: ``confidence`` (max softmax of the clean decoder),
``discrepancy`` (mean total-variation distance ½Σ_k|p_k - q_k| in [0, 1] between the clean
softmax ``p`` and each of K decodings ``q`` of channel-dropped encoder features, alternating
the weak and strong rates by default; the dropout masks come from a generator seeded with
``discrepancy_seed`` at each call, so a prediction is reproducible for a given batch), and
``pseudo`` (the clean class id where confidence ≥ τ, else -1: the pixels a training step would
leave out of the unsupervised loss). ``discrepancy`` is computed only when it is read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass

import torch

from src_models.augment import cutmix, random_boxes, strong_photometric
from src_models.data.sampler import SliceSampler
from src_models.errors import SemisegError
from src_models.losses import dice_loss, masked_cross_entropy
from src_models.methods.base import Method, Prediction, confidence_map, param, register
from src_models.methods.supervised import make_sgd, make_unet
from src_models.networks.feature_perturbation import fp_forward, perturb, stacked_decode

#: Smoothing of the official ``DiceLoss._dice_loss`` (ACDC/util/utils.py).
DICE_SMOOTH = 1e-4


@dataclass
class CrossMatchConfig:
    lr: float = param(0.01, "SGD learning rate (poly-decayed with power 0.9)")
    momentum: float = param(0.9, "SGD momentum (Nesterov)")
    weight_decay: float = param(1e-4, "SGD weight decay")
    channels: tuple = param((16, 32, 64, 128, 256), "U-Net widths of the five levels")
    tau: float = param(0.95, "confidence threshold τ: pseudo-labels below it are ignored")
    eta: float = param(0.3, "η: weight of the decoder distillation L_dkd vs L_tkd (1-η)")
    w_kd: float = param(0.5, "weight of the distillation loss (0.5 in 2D, 1.0 in the 3D code)")
    w_s: float = param(0.25, "weight of each of the two strong-view losses L_s1, L_s2")
    weak_dropout: float = param(0.25, "channel dropout rate of the weak feature perturbation")
    strong_dropout: float = param(0.75, "channel dropout rate of the strong feature perturbation")
    cutmix_p: float = param(0.5, "probability that a strong view gets a CutMix box")
    cutmix_area: tuple = param((0.02, 0.4), "CutMix box area, fraction of the patch (min,max)")
    cutmix_ratio: tuple = param((0.3, 1 / 0.3), "CutMix box aspect ratio range (min,max)")
    strong_noise_p: float = param(
        0.0, "probability of Gaussian noise in the strong view (0: none, as in the official code)"
    )
    strong_cutout_p: float = param(
        0.0, "probability of cutout in the strong view (0: none, as in the official code)"
    )
    partner_bn: str = param(
        "train",
        "network mode of the no-grad mix-partner pass: 'train' = official HEAD cd1e25c "
        "(BN batch stats, dropout on), 'eval' = the 2024 code (BN running stats, feature "
        "dropout still on)",
        choices=("eval", "train"),
    )
    faithful_partner_pass: bool = param(
        False,
        "run the official two partner calls literally (~10% slower, same result in 'eval' mode)",
    )
    tau_schedule: str = param(
        "constant",
        "'constant' τ (2D code) or 'la_ramp': the 3D code's (τ+(1-τ)·sigmoid_rampup)·ln2 quirk",
        choices=("constant", "la_ramp"),
    )
    tau_ramp_length: int = param(17000, "iterations of the 'la_ramp' rampup (0: the whole run)")
    discrepancy_k: int = param(4, "perturbed decodings K of the 'discrepancy' map")
    discrepancy_perturbation: str = param(
        "both",
        "dropout of the K decodings: alternate weak/strong, or only one",
        choices=("both", "weak", "strong"),
    )
    discrepancy_seed: int = param(0, "seed of the discrepancy map's dropout masks")
    channels_last: bool = param(
        True,
        "channels-last memory format (faster convolutions on the CPU; same results up to rounding)",
    )


# -- pieces of the loss --------------------------------------------------------------------
@dataclass
class Target:
    """Hard pseudo-labels ``label`` int64 (B, H, W) and their confidence ``conf`` (B, H, W)."""

    label: torch.Tensor
    conf: torch.Tensor

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> Target:
        """argmax / max softmax of detached logits (B, K, H, W)."""
        conf, label = logits.detach().float().softmax(dim=1).max(dim=1)
        return cls(label, conf)

    def mixed(self, partner: Target, box: torch.Tensor) -> Target:
        """The target of a CutMixed view: ``partner`` inside ``box`` (bool (B, H, W))."""
        return Target(cutmix(self.label, partner.label, box), cutmix(self.conf, partner.conf, box))

    def valid(self, tau: float) -> torch.Tensor:
        """Float mask (B, H, W): 1 where confidence ≥ τ (pixels that count), else 0."""
        return (self.conf >= tau).float()


def masked_dice(probs: torch.Tensor, target: Target, tau: float) -> torch.Tensor:
    """Dice of ``probs`` (B, K, H, W) against a pseudo-label target, pixels below τ removed
    from every sum (batch-pooled, background included, Σp²+Σy² denominators); 0 when every
    pixel is removed (official ``DiceLoss`` with ``ignore = conf < τ``)."""
    return dice_loss(probs, target.label, target.valid(tau), smooth=DICE_SMOOTH)


@dataclass
class StepOutputs:
    """Logits (B, K, H, W) of one iteration. ``p_*_fw``/``p_*_fs``: weak/strong feature-
    perturbed decodings; ``pm*``: the no-grad outputs of the CutMix partner ``m_w``."""

    p_x: torch.Tensor
    p_w: torch.Tensor
    p_w_fw: torch.Tensor
    p_w_fs: torch.Tensor
    p_s1: torch.Tensor
    p_s2: torch.Tensor
    p_s2_fw: torch.Tensor
    p_s2_fs: torch.Tensor
    pm: torch.Tensor
    pm_fw: torch.Tensor
    pm_fs: torch.Tensor


def crossmatch_loss(
    out: StepOutputs,
    y: torch.Tensor,
    box1: torch.Tensor,
    box2: torch.Tensor,
    *,
    tau: float,
    eta: float = 0.3,
    w_kd: float = 0.5,
    w_s: float = 0.25,
    y_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every loss term of one CrossMatch iteration (official ACDC/train_cross_match.py).

    Args:
        out: the logits. y: labels int64 (B, H, W), y_mask their per-pixel weights or None.
        box1, box2: CutMix boxes bool (B, H, W) of the strong views s1 and s2. tau: confidence
        threshold.
    Returns:
        ``loss`` (the total), ``loss_x``, ``loss_s1``, ``loss_s2``, ``loss_tkd``,
        ``loss_dkd``, ``mask_ratio`` (fraction of weak-view pixels with confidence ≥ τ) and
        ``mask_ratio_fg`` (the same among pixels whose pseudo-label is not background, class
        0: it shows when foreground pseudo-labels start to pass τ; 0 if none is predicted).
    """
    # Teachers. Only the argmax/max-softmax of p_w_fw and p_w_fs are used as targets (they have
    # no gradient); the same logits stay students in L_tkd with their gradient.
    t_w = Target.from_logits(out.p_w)
    fg = (t_w.label != 0).float()
    t_m = Target.from_logits(out.pm)
    mix1, mix2 = t_w.mixed(t_m, box1), t_w.mixed(t_m, box2)
    mix2_fw = Target.from_logits(out.p_w_fw).mixed(Target.from_logits(out.pm_fw), box2)
    mix2_fs = Target.from_logits(out.p_w_fs).mixed(Target.from_logits(out.pm_fs), box2)

    def probs(logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(dim=1)

    p_x = out.p_x.float()
    s2_fw, s2_fs = probs(out.p_s2_fw), probs(out.p_s2_fs)
    loss_x = 0.5 * (
        masked_cross_entropy(p_x, y, y_mask)
        + dice_loss(p_x.softmax(dim=1), y, y_mask, smooth=DICE_SMOOTH)
    )
    loss_s1 = masked_dice(probs(out.p_s1), mix1, tau)
    loss_s2 = masked_dice(probs(out.p_s2), mix2, tau)
    loss_tkd = (
        masked_dice(probs(out.p_w_fw), t_w, tau)
        + masked_dice(probs(out.p_w_fs), t_w, tau)
        + masked_dice(s2_fw, mix2, tau)
        + masked_dice(s2_fs, mix2, tau)
    ) / 4
    loss_dkd = (masked_dice(s2_fw, mix2_fw, tau) + masked_dice(s2_fs, mix2_fs, tau)) / 2
    loss = (
        loss_x + w_s * loss_s1 + w_s * loss_s2 + w_kd * ((1 - eta) * loss_tkd + eta * loss_dkd)
    ) / 2
    return {
        "loss": loss,
        "loss_x": loss_x,
        "loss_s1": loss_s1,
        "loss_s2": loss_s2,
        "loss_tkd": loss_tkd,
        "loss_dkd": loss_dkd,
        "mask_ratio": t_w.valid(tau).mean(),
        "mask_ratio_fg": (t_w.valid(tau) * fg).sum() / fg.sum().clamp_min(1),
    }


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t)²) for t = current/length clipped to [0, 1] (Laine & Aila; SSL4MIS)."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * phase * phase))


class LazyMaps(MutableMapping):
    """A dict of maps whose expensive entries are computed on first read and cached."""

    def __init__(
        self,
        values: dict[str, torch.Tensor],
        lazy: dict[str, Callable[[], torch.Tensor]],
        order: Sequence[str] = (),
    ) -> None:
        self._values = dict(values)
        self._lazy = {k: f for k, f in lazy.items() if k not in self._values}
        known = list(self._values) + list(self._lazy)
        self._order = [k for k in order if k in known] + [k for k in known if k not in order]

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self._lazy:
            self._values[key] = self._lazy.pop(key)()
        return self._values[key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self._lazy.pop(key, None)
        if key not in self._order:
            self._order.append(key)
        self._values[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self._order:
            raise KeyError(key)
        self._order.remove(key)
        self._lazy.pop(key, None)
        self._values.pop(key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)


# -- the method ----------------------------------------------------------------------------
@register
class CrossMatch(Method):
    name = "crossmatch"
    description = (
        "CrossMatch: weak/strong image views with CutMix and weak/strong feature "
        "dropout, distilled from the clean decoder (Dice on confident pixels)."
    )
    Config = CrossMatchConfig
    map_names = ("confidence", "discrepancy", "pseudo")
    map_meanings = {
        "discrepancy": "how far the decodings of perturbed features move the probabilities: "
        "0 (stable) to 1",
    }

    warmup_networks = ("net",)
    budget_note = (
        "Measured below the supervised baseline at 5 minutes with 3-5 labeled slices on the "
        "left atrium (5-8 points; above it by 7 on a hippocampus volume), before the "
        "propagation prior; +1.6 Dice points with 5 labeled volumes at 800 iterations "
        "(about 29 minutes on a 2-core CPU): for budgets of half an hour or more. "
        "docs/benchmarks.md"
    )

    def build(self) -> None:
        self._check_config()
        self.net = make_unet(self.config, self.in_channels, self.num_classes)
        if self.config.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.networks = {"net": self.net}
        self.optimizers = {"net": make_sgd(self.net.parameters(), self.config)}

    def _check_config(self) -> None:
        c = self.config

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise SemisegError(f"crossmatch: {message}")

        need(0 < c.tau <= 1, f"tau={c.tau} must be in (0, 1]; the official 2D value is 0.95")
        need(0 <= c.eta <= 1, f"eta={c.eta} must be in [0, 1] (official 0.3)")
        need(c.w_kd >= 0 and c.w_s >= 0, "the loss weights w_kd and w_s must be >= 0")
        for key in ("weak_dropout", "strong_dropout"):
            need(0 <= getattr(c, key) < 1, f"{key}={getattr(c, key)} must be in [0, 1)")
        for key in ("cutmix_p", "strong_noise_p", "strong_cutout_p"):
            need(0 <= getattr(c, key) <= 1, f"{key}={getattr(c, key)} must be in [0, 1]")
        area, ratio = tuple(c.cutmix_area), tuple(c.cutmix_ratio)
        need(
            len(area) == 2 and 0 < area[0] <= area[1] <= 1,
            f"cutmix_area={area} must be two fractions 0 < min <= max <= 1, e.g. 0.02,0.4",
        )
        need(
            len(ratio) == 2 and 0 < ratio[0] <= ratio[1],
            f"cutmix_ratio={ratio} must be two positive numbers min <= max, e.g. 0.3,3.3",
        )
        need(c.discrepancy_k >= 1, f"discrepancy_k={c.discrepancy_k} must be >= 1")
        need(c.tau_ramp_length >= 0, "tau_ramp_length must be >= 0 (0: the whole run)")

    # -- schedule --------------------------------------------------------------------------
    def threshold(self, iteration: int, total: int) -> float:
        """τ used at ``iteration``. ``la_ramp``: the official 3D code sets the threshold after
        each step from the step's index, so iteration 0 uses τ and iteration i uses the ramp
        at i - 1, scaled by ln 2."""
        c = self.config
        if c.tau_schedule == "constant" or iteration == 0:
            return float(c.tau)
        length = c.tau_ramp_length or total
        return (c.tau + (1 - c.tau) * sigmoid_rampup(iteration - 1, length)) * math.log(2)

    # -- training --------------------------------------------------------------------------
    @property
    def rates(self) -> tuple[float, float]:
        return (self.config.weak_dropout, self.config.strong_dropout)

    def _memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    @torch.no_grad()
    def partner_pass(self, x: torch.Tensor, m_w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """No-grad outputs ``pm, pm_fw, pm_fs`` of the CutMix partner ``m_w`` (B, C, H, W).

        The feature perturbation is active BY DESIGN (it makes the perturbed teachers inside
        the boxes); ``partner_bn`` chooses BatchNorm's mode (see the module docstring). The
        network's train/eval mode is restored afterwards.
        """
        net, c, n = self.net, self.config, x.shape[0]
        was_training = net.training
        net.train(c.partner_bn == "train")
        try:
            if c.faithful_partner_pass:  # the official two calls, work included
                pm = net(m_w)
                _, _, pm_fw, pm_fs = fp_forward(net, torch.cat((x, m_w)), n, self.rates)
            elif c.partner_bn == "eval":  # per-sample network: x would change nothing
                f_m = net.encode(m_w)
                pm, pm_fw, pm_fs = stacked_decode(
                    net, [f_m] + [perturb(f_m, r) for r in self.rates]
                )
            else:
                _, pm, pm_fw, pm_fs = fp_forward(net, torch.cat((x, m_w)), n, self.rates)
        finally:
            net.train(was_training)
        return pm, pm_fw, pm_fs

    def _strong(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        c = self.config
        return strong_photometric(
            image, generator=gen, p_noise=c.strong_noise_p, p_cutout=c.strong_cutout_p
        )

    def _boxes(self, n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
        c = self.config
        box = random_boxes(
            n,
            h,
            w,
            generator=gen,
            p=c.cutmix_p,
            area=tuple(c.cutmix_area),
            ratio=tuple(c.cutmix_ratio),
        )
        return box.to(self.device)

    def train_step(self, data: SliceSampler, iteration: int, total: int) -> dict[str, float]:
        c, net, gen = self.config, self.net, data.generator
        batch = data.labeled()
        x, y = self._memory_format(batch.image), batch.label
        n = x.shape[0]
        u_w = self._memory_format(data.unlabeled(n).image)
        m_w = self._memory_format(data.unlabeled(n).image)
        u_s1, u_s2 = self._strong(u_w, gen), self._strong(u_w, gen)
        m_s1, m_s2 = self._strong(m_w, gen), self._strong(m_w, gen)
        box1, box2 = self._boxes(n, *u_w.shape[-2:], gen), self._boxes(n, *u_w.shape[-2:], gen)
        tau = self.threshold(iteration, total)

        # 1. the mix partner's teachers (no grad, feature perturbation on).
        with self.autocast():
            pm, pm_fw, pm_fs = self.partner_pass(x, m_w)
        # 2. CutMix of the strong views.
        u_s1, u_s2 = cutmix(u_s1, m_s1, box1), cutmix(u_s2, m_s2, box2)
        # 3. two batch-stacked gradient passes (encoder once, decoder once on four streams).
        net.train()

        def forward():
            with self.autocast():
                return fp_forward(net, torch.cat((x, u_w)), n, self.rates) + fp_forward(
                    net, self._memory_format(torch.cat((u_s1, u_s2))), n, self.rates
                )

        p_x, p_w, p_w_fw, p_w_fs, p_s1, p_s2, p_s2_fw, p_s2_fs = self.step_forward(forward)
        # 4-5. pseudo-labels, confidence masks and losses.
        out = StepOutputs(p_x, p_w, p_w_fw, p_w_fs, p_s1, p_s2, p_s2_fw, p_s2_fs, pm, pm_fw, pm_fs)
        terms = crossmatch_loss(
            out, y, box1, box2, tau=tau, eta=c.eta, w_kd=c.w_kd, w_s=c.w_s, y_mask=batch.mask
        )
        opt = self.optimizers["net"]
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        names = list(terms)
        logs = dict(
            zip(names, torch.stack([terms[k].detach() for k in names]).tolist(), strict=True)
        )
        if c.tau_schedule != "constant":
            logs["tau"] = tau
        self.extra_state["tau"] = tau
        return logs

    # -- inference -------------------------------------------------------------------------
    def _discrepancy_rates(self) -> list[float]:
        c = self.config
        choice = {"both": self.rates, "weak": self.rates[:1], "strong": self.rates[1:]}
        pool = choice[c.discrepancy_perturbation]
        return [pool[i % len(pool)] for i in range(c.discrepancy_k)]

    def discrepancy(self, feats: list[torch.Tensor], clean: torch.Tensor) -> torch.Tensor:
        """Mean total-variation distance (B, H, W) in [0, 1] between the clean softmax
        ``clean`` (B, K, H, W) and K decodings of channel-dropped ``feats``. Decoded one at
        a time (memory of a single batch; identical to stacking in eval mode)."""
        gen = torch.Generator().manual_seed(int(self.config.discrepancy_seed))
        rates = self._discrepancy_rates()
        total = torch.zeros_like(clean[:, 0])
        for r in rates:
            q = self.net.decode(perturb(feats, r, gen)).float().softmax(dim=1)
            total += 0.5 * (q - clean).abs().sum(dim=1)
        return total / len(rates)

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> Prediction:
        """Clean-decoder probabilities and the maps (``discrepancy`` computed when read)."""
        feats = self.net.encode(self._memory_format(image))
        probs = self.net.decode(feats).float().softmax(dim=1)
        conf, label = probs.max(dim=1)
        tau = float(self.extra_state.get("tau", self.config.tau))
        pseudo = torch.where(conf >= tau, label.float(), torch.full_like(conf, -1.0))

        def discrepancy() -> torch.Tensor:
            with torch.no_grad(), self.autocast():
                return self.discrepancy(feats, probs)

        maps = LazyMaps(
            {"confidence": confidence_map(probs), "pseudo": pseudo},
            {"discrepancy": discrepancy},
            order=self.map_names,
        )
        return Prediction(probs.contiguous(), maps)
