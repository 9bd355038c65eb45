"""Diffusion teacher–student (Ciampi et al., 'SuperDiffusion'): a DDPM teacher pre-trained
without labels by cycle-consistent reconstruction, then co-trained with a twin student.

Reference code: ``ciampluca/hebbian-bootstraping-semi-supervised-medical-imaging`` (read at
commits e72b886 and 1de4983, the dac1ad6-era files, removed from HEAD):
``models/networks_2d/unet_ddpm.py`` (``SuperDiffusion``, a ``GaussianDiffusion`` subclass;
``DDPM_Wrapper``; ``DDPMUNet`` holding ``net`` and ``net_seg``),
``pretrain_superdiff_unsup_2d.py`` (phase 1) and ``train_semi_superdiff_2d.py`` (phase 2, the
loop over ``diff_rounds``); the diffusion maths of ``denoising_diffusion_pytorch``
(``src_models/diffusion_schedule.py``). Both phases are stages of one training run here.

Model. Each model has two pathways, **two separate networks** as in the reference
(``DDPMUNet.net`` and ``DDPMUNet.net_seg`` are two ``DDPM_Wrapper`` instances with their own
time MLPs, not one trunk with two heads):

- mask pathway ``seg``: input q(m_t | m_0) of the mask prior m_0 (one-hot, ±1) ⊕ image x,
  output z = predicted x0 of the mask (``objective='pred_x0'``). The soft K-channel mask is
  ``p = softmax(z)``: the reference maps z to (z + 1)/2 and its Dice loss applies a softmax
  to that, i.e. it trains softmax(z/2); we use softmax(z) for every loss and prediction.
  The mask fed to ``rec`` is ``2p − 1`` (``mask_output='softmax'``, default: a bounded
  K-channel mask) or, as in the reference, 2·(z + 1)/2 − 1 = z unbounded
  (``mask_output='affine'``).
- image pathway ``rec``: input q(x_t | x) ⊕ (2·mask − 1), output ε̂ (``objective='pred_noise'``);
  L_rec = ‖ε̂ − ε‖² (loss weight 1, as lucidrains' for ε-prediction); the reconstruction is
  x̂ = x_0(x_t, ε̂) (``predict_start_from_noise``).

Timesteps of seg and rec are drawn independently, uniform in [0, T), T = 1000, sigmoid β.
The images are z-scored volumes (``data/normalization.py``) and are noised as they are; the
reference applies ``normalize_to_neg_one_to_one`` (2x − 1) on top of its z-scoring, which only
rescales the signal-to-noise ratio.

Mask prior. The reference feeds ``zeros_like(mask)``; at dac1ad6 its ``forward`` one-hot
encodes a 1-channel target with ``one_hot(target, K)``, so the zero target becomes the ±1
one-hot of class 0, the background (the e72b886 code built ``cat([0, 1])``, the one-hot of
channel 1, instead). The exception is the student's labeled call, ``zeros_like(pred_train_sup2)``
(K channels), which skips the one-hot → all −1: two different priors in training, the
background one at test. We use ONE prior everywhere (training, rounds, inference): the ±1
one-hot of the background class, the dac1ad6 reference's main prior.

Phase 1 (iterations < ``pretrain_fraction``·total): teacher only, on ALL training slices
(labeled ones taken without their labels): z = seg(x), L_rec of rec denoising x conditioned on
the soft mask *with gradients*, so L_rec trains rec and, through the mask, seg (the paper's
cycle consistency). The reference also back-propagates a Dice loss of a 3x3 probe conv
(``DDPMUNet.final_conv``) against the ground truth through the whole teacher and then wipes
every gradient except the probe's (``reset_internal_grads``): a wasted backward (~21 % of its
step) that uses labels in an 'unsupervised' stage. It is not done here.

Phase 2 (``train_semi_superdiff_2d.py``): teacher T (phase-1 weights, still trained, no EMA)
and student S (only its mask pathway is built: the reference's student ``net`` is never used).
For unlabeled u: mT = seg_T(u), mS = seg_S(u); for r = 1..R:
(l_r, x̂_r) = rec_T(u | c_r.detach()), m_r = seg_T(x̂_r.detach()), where c_r = mT
(``rounds_mode='independent'``, the reference: each round restarts from the teacher mask) or
c_r = m_{r−1} (``'chained'``, the paper's 'iterative' wording). Then
``Lu = Dice(mS, argmax mT) + Dice(mT, argmax mS) + (w/R)·Σ_r [Dice(m_r, argmax mS) + l_r]``,
times the linear ramp λu = ``unsup_weight``·(k + 1)/K over the K phase-2 iterations (the
reference ramps per epoch). Labeled (x, y): the same with y for every pseudo-label:
``Ls = S(mS, y) + S(mT, y) + (w/R)·Σ_r [S(m_r, y) + l_r]`` with S = Dice (reference,
``sup_loss='dice'``) or (CE + Dice)/2 (``'ce_dice'``, default: the loss of the supervised
baseline, which converges faster in a short budget). Every Dice term has the reference's form
by default (``dice_form='reference'``, :func:`~src_models.losses.sample_dice_loss`: per
sample, smoothing 1, the class count taken from the one-hot of the target, i.e. the largest
class id in the batch + 1); ``'all_classes'`` is the same over all K classes (the reference's
class count depends on which classes a batch happens to contain: a defect), ``'pooled'`` the
batch-pooled Dice of the other methods (smoothing 1e-5, all K classes) used here before.
Because the masks are detached before ``rec``, L_rec trains only ``rec`` in phase 2; the Dice
of m_r trains only ``seg_T``. The unlabeled and labeled batches go through each network as
one concatenated batch (the reference does two forward/backward passes; the gradient is the
same up to BatchNorm statistics), and independent rounds are batched into one rec and one
seg pass.

Optimisation: separate Adam optimisers for T (seg + rec) and S. Reference (dac1ad6): Adam
lr 1e-3 in phase 1 (``reproduce_superdiff_unsupervised_pretraining_2d.sh``) and 1e-2 in
phase 2 (``reproduce_superdiff_semi_supervised_2d.sh``), batch 8 (the scripts' argparse
defaults, lr 0.5 and batch 2, are always overridden), each with a gradual warm-up (20 of 200
epochs) then StepLR(50 epochs, γ = 0.5), the teacher's optimiser created afresh for phase 2.
Here lr 1e-3 in both phases (the reference's phase-1 value; its phase-2 1e-2 is aggressive
for Adam on BatchNorm U-Nets with batch 8 — not benchmarked here), per
phase: linear warm-up over
``warmup_fraction`` of the phase, then ×0.5 every quarter of the phase (``lr_schedule='step'``);
the teacher's Adam state is reset when phase 2 starts.

Defect fixed (option): x̂ = x_t/√ᾱ_t − ... amplifies the ε̂ error by up to 1/√ᾱ_{T−1} ≈ 2000
at t near T, so the reference re-segments images with intensities in the thousands.
``clip_recon`` (default on) clamps x̂ to the intensity range of its clean image.
Also: 3 of the 4 teacher mask passes per sample in phase 2 see reconstructions, many of them
noise-like (t near T); in the reference they update the BatchNorm running statistics that
inference then applies to real images. Here (``recon_bn_update`` off) those passes use their
batch statistics without updating the running ones.

Inference. The reference runs seg once at one random t with random noise (no sampling
chain). Here: ``inference_passes`` passes at timesteps and noise drawn from a generator seeded
by ``inference_seed`` (the same noise field for every slice of a batch, so the result does
not depend on batching), probabilities averaged. The prediction uses the mean of teacher and
student (``predict_with='mean'``, default; the reference keeps whichever validates better).
Maps: ``confidence`` (max probability), ``uncertainty`` (4 × the per-voxel variance of the
class probabilities across the passes, averaged over classes, in [0, 1]), ``discrepancy``
(total-variation distance ½·Σ_k |p_T − p_S| between the averaged teacher and student
probabilities, in [0, 1]), ``pseudo`` (teacher argmax, float class ids).

Cost (measured with 1 thread, batch 8, patch 64, medians of paired steps; supervised baseline
0.21-0.27 s per step): the default base width 16 (16-16-32-64-128, 0.47 M parameters per
pathway, three pathways) costs 0.28-0.30 s in phase 1 (1.2-1.3x supervised) and 2.0 s in
phase 2 (8.1-8.5x; 6.8x in FLOPs), i.e. about 7x the supervised wall time over a run with
``pretrain_fraction`` 0.2. The reference width 64 (7.4 M per pathway) costs 1.9-2.2 s and
17-18 s (66-83x, 106x in FLOPs): the default is ~7x (phase 1) and ~8.5x (phase 2) cheaper.
A reference-structured step (separate unlabeled/labeled passes, sequential rounds, the wiped
probe backward) with the same width-64 networks takes 2.8 s / 15.8 s: phase 1 here is 0.73x
of it; phase 2 does the same 128 sample-passes and is not faster in float32 (1.07x), only
with ``cpu_bf16`` (6.8 s, 0.43x; at width 16: 1.4 s instead of 2.0 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from src_models.class_ids import class_ids
from src_models.data.sampler import SliceSampler
from src_models.diffusion_schedule import NoiseSchedule
from src_models.errors import SemisegError
from src_models.losses import ce_dice_loss, dice_loss, masked_cross_entropy, sample_dice_loss
from src_models.methods.base import Method, Prediction, confidence_map, param, poly_lr, register
from src_models.networks.ddpm_unet import DDPMUNet


@dataclass
class DiffusionConfig:
    base_width: int = param(
        16, "width of the first U-Net level (reference 64; 16 is ~10x cheaper on a CPU)"
    )
    width_mults: tuple = param((1, 2, 4, 8), "width multipliers of the deeper levels (1-4)")
    dropout: tuple = param(
        (0.05, 0.1, 0.2, 0.3, 0.4), "encoder dropout per level (one more than width_mults)"
    )
    timesteps: int = param(1000, "diffusion steps T (sigmoid beta schedule)")
    # The reference initialisation measured 8.9 points worse at this project's budget
    # (hippocampus protocol, 800 iterations: mean Dice 0.699 with 'kaiming', 0.787 with
    # 'default'; docs/benchmarks.md), so PyTorch's stays the default; 'kaiming' reproduces
    # the reference.
    init: str = param(
        "default",
        "initialisation of the three networks: 'default' = PyTorch's (measured 8.9 Dice "
        "points better at 800 iterations), 'kaiming' = the reference init_weights "
        "(Kaiming-normal conv/linear, zero biases, BatchNorm weight N(1, 0.02))",
        choices=("default", "kaiming"),
    )
    pretrain_fraction: float = param(
        0.2,
        "fraction of the iterations spent on phase 1 "
        "(unsupervised teacher pre-training on all slices)",
    )
    rounds: int = param(3, "R: re-segmentation rounds of reconstructed images per step")
    rounds_mode: str = param(
        "independent",
        "each round restarts from the teacher mask "
        "(independent, reference) or from the previous round's mask "
        "(chained)",
        choices=("independent", "chained"),
    )
    round_weight: float = param(1.0, "w: weight of the round terms (divided by R)")
    unsup_weight: float = param(1.0, "weight of the unlabeled loss at the end of its linear ramp")
    lr: float = param(1e-3, "Adam learning rate of teacher and student")
    lr_schedule: str = param(
        "step",
        "per phase: warm-up then x0.5 every quarter (step, like "
        "the reference), poly decay, or constant",
        choices=("step", "poly", "constant"),
    )
    warmup_fraction: float = param(0.1, "linear lr warm-up, as a fraction of each phase")
    dice_form: str = param(
        "reference",
        "Dice terms: per sample, smoothing 1, classes from the target's one-hot (reference); "
        "the same over all K classes (all_classes); batch-pooled, smoothing 1e-5 (pooled)",
        choices=("reference", "all_classes", "pooled"),
    )
    sup_loss: str = param(
        "ce_dice",
        "loss against the ground truth: (CE + Dice)/2 or Dice (reference)",
        choices=("ce_dice", "dice"),
    )
    mask_output: str = param(
        "softmax",
        "mask given to the image pathway: 2*softmax(z)-1 or "
        "the raw x0 prediction z (affine, reference)",
        choices=("softmax", "affine"),
    )
    clip_recon: bool = param(
        True,
        "clamp reconstructed images to the clean image's range "
        "before re-segmenting them (off = reference)",
    )
    recon_bn_update: bool = param(
        False,
        "let the re-segmentation of reconstructed images update the teacher's BatchNorm "
        "running statistics (reference: yes; off keeps them those of real images)",
    )
    cpu_bf16: bool = param(
        False,
        "bfloat16 autocast of the network passes on the CPU (1.6-2.6x faster on CPUs with "
        "AMX/AVX512-BF16, lower precision; off = float32 like every other method)",
    )
    inference_passes: int = param(8, "stochastic mask passes averaged at inference")
    inference_seed: int = param(0, "seed of the inference timesteps and noise")
    predict_with: str = param(
        "mean",
        "networks whose probabilities are the prediction",
        choices=("mean", "student", "teacher"),
    )


@dataclass
class Round:
    """One re-segmentation round: the mask conditioning ``rec`` (detached, (B, K, H, W)),
    its per-sample ε-MSE (B,), the reconstruction x̂ (B, C, H, W) and the re-segmentation
    logits z_r (B, K, H, W)."""

    condition: torch.Tensor
    loss_rec: torch.Tensor
    recon: torch.Tensor
    logits: torch.Tensor


@register
class Diffusion(Method):
    name = "diffusion"
    description = (
        "DDPM teacher pre-trained by cycle-consistent reconstruction, then "
        "co-trained with a twin student on multi-round pseudo-labels."
    )
    Config = DiffusionConfig
    map_names = ("confidence", "uncertainty", "discrepancy", "pseudo")
    map_meanings = {
        "uncertainty": "spread of the stochastic passes (4 x their variance): 0 (stable) to 1",
        "discrepancy": "how far apart teacher and student probabilities are: 0 (agree) to 1",
    }

    warmup_networks = ("teacher_seg", "student_seg")
    budget_note = (
        "Measured 1-4 points below the supervised baseline at 5 minutes with 3-5 labeled "
        "slices on the left atrium (before the propagation prior); +4.0 Dice points with 5 "
        "labeled volumes at 800 iterations (about 35 minutes on a 2-core CPU): for budgets "
        "of half an hour or more. docs/benchmarks.md"
    )

    def warmup_logits(self, name: str, image: torch.Tensor) -> torch.Tensor:
        """The mask pathway at a random timestep, as phase 2 trains it with labels."""
        return self.segment(self.networks[name], image)

    # -- construction -------------------------------------------------------------------
    def build(self) -> None:
        c = self.config
        if c.base_width < 2:
            raise SemisegError(f"base_width must be >= 2, got {c.base_width}")
        if not 1 <= len(c.width_mults) <= 4:
            raise SemisegError(
                "width_mults needs 1 to 4 multipliers, e.g. --set width_mults=1,2,4,8"
            )
        if len(c.dropout) != len(c.width_mults) + 1:
            raise SemisegError(
                f"dropout needs {len(c.width_mults) + 1} rates (one per level), "
                f"got {len(c.dropout)}"
            )
        if c.rounds < 1:
            raise SemisegError(f"rounds must be >= 1, got {c.rounds}")
        if c.inference_passes < 1:
            raise SemisegError(f"inference_passes must be >= 1, got {c.inference_passes}")
        if not 0.0 <= c.pretrain_fraction <= 0.9:
            raise SemisegError(f"pretrain_fraction must be in [0, 0.9], got {c.pretrain_fraction}")
        if not 0.0 <= c.warmup_fraction < 1.0:
            raise SemisegError(f"warmup_fraction must be in [0, 1), got {c.warmup_fraction}")
        if c.timesteps < 2:
            raise SemisegError(f"timesteps must be >= 2, got {c.timesteps}")
        k, ch = self.num_classes, self.in_channels

        def unet(cin: int, cout: int) -> DDPMUNet:
            return DDPMUNet(
                cin,
                cout,
                c.base_width,
                tuple(int(m) for m in c.width_mults),
                tuple(float(d) for d in c.dropout),
                init=c.init,
            )

        self.teacher_seg = unet(k + ch, k)  # noised mask prior ⊕ image -> x0 mask logits
        self.teacher_rec = unet(ch + k, ch)  # noised image ⊕ (2·mask − 1) -> ε
        self.student_seg = unet(k + ch, k)  # the student's image pathway is never used
        self.networks = {
            "teacher_seg": self.teacher_seg,
            "teacher_rec": self.teacher_rec,
            "student_seg": self.student_seg,
        }
        teacher_params = [*self.teacher_seg.parameters(), *self.teacher_rec.parameters()]
        self.optimizers = {
            "teacher": torch.optim.Adam(teacher_params, lr=c.lr),
            "student": torch.optim.Adam(self.student_seg.parameters(), lr=c.lr),
        }
        self.schedule = NoiseSchedule(c.timesteps).to(self.device)
        prior = -torch.ones(1, k, 1, 1)
        prior[:, 0] = 1.0  # ±1 one-hot of the background: the single prior of every seg pass
        self.prior = prior.to(self.device)

    # -- phases and schedules -----------------------------------------------------------
    def phase2_start(self, total: int) -> int:
        """First iteration of phase 2 (fixed once phase 2 has started)."""
        if "phase2_start" in self.extra_state:
            return int(self.extra_state["phase2_start"])
        return int(round(self.config.pretrain_fraction * total))

    def phase(self, iteration: int, total: int) -> int:
        return 2 if iteration >= self.phase2_start(total) else 1

    def _progress(self, iteration: int, total: int) -> tuple[int, int]:
        """(iterations done in the current phase, length of the current phase)."""
        start2 = self.phase2_start(total)
        if iteration >= start2:
            return iteration - start2, max(total - start2, 1)
        return iteration, max(start2, 1)

    def lr_factor(self, iteration: int, total: int) -> float:
        done, length = self._progress(iteration, total)
        c = self.config
        warm = int(round(c.warmup_fraction * length))
        if c.lr_schedule == "constant":
            return 1.0
        if done < warm:
            return (done + 1) / (warm + 1)
        if c.lr_schedule == "poly":
            return poly_lr(done - warm, max(length - warm, 1))
        return 0.5 ** int(4 * (done - warm) / max(length - warm, 1))

    def ramp(self, iteration: int, total: int) -> float:
        """λu: linear from unsup_weight/K to unsup_weight over the K phase-2 iterations."""
        done, length = self._progress(iteration, total)
        return self.config.unsup_weight * min(1.0, (done + 1) / length)

    # -- pathways -----------------------------------------------------------------------
    def _run(self, net: DDPMUNet, inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One network pass in the configured precision; float32 output."""
        bf16 = self.config.cpu_bf16 and self.device.type == "cpu"
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else self.autocast():
            out = net(inp, t)
        return out.float()

    def segment(
        self,
        net: DDPMUNet,
        x: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mask pathway: x0-mask logits z (B, K, H, W) of image x (B, C, H, W)."""
        b, _, h, w = x.shape
        prior = self.prior.expand(b, -1, h, w)
        t = self.schedule.sample_t(b, x.device) if t is None else t
        noise = torch.randn_like(prior) if noise is None else noise
        return self._run(net, torch.cat([self.schedule.q_sample(prior, t, noise), x], dim=1), t)

    def condition(self, z: torch.Tensor) -> torch.Tensor:
        """The mask given to the image pathway, 2·mask − 1 (see ``mask_output``)."""
        if self.config.mask_output == "affine":
            return z  # 2·(z + 1)/2 − 1
        return 2 * z.softmax(dim=1) - 1

    def reconstruct(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image pathway on x (B, C, H, W) given cond (B, K, H, W): (per-sample ε-MSE (B,),
        reconstruction x̂ (B, C, H, W))."""
        t = self.schedule.sample_t(x.shape[0], x.device)
        eps = torch.randn_like(x)
        x_t = self.schedule.q_sample(x, t, eps)
        eps_hat = self._run(self.teacher_rec, torch.cat([x_t, cond], dim=1), t)
        loss = (eps_hat - eps).pow(2).flatten(1).mean(dim=1)
        recon = self.schedule.predict_start_from_noise(x_t, t, eps_hat)
        if self.config.clip_recon:
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            hi = x.amax(dim=(1, 2, 3), keepdim=True)
            recon = torch.maximum(torch.minimum(recon, hi), lo)
        return loss, recon

    def resegment(self, recon: torch.Tensor) -> torch.Tensor:
        """Teacher mask pathway on reconstructions. Unless ``recon_bn_update``, BatchNorm uses
        the batch statistics but leaves its running averages (used at inference, on real
        images) untouched: momentum 0 keeps them as they are."""
        if self.config.recon_bn_update:
            return self.segment(self.teacher_seg, recon)
        norms = [m for m in self.teacher_seg.modules() if isinstance(m, nn.BatchNorm2d)]
        saved = [m.momentum for m in norms]
        for m in norms:
            m.momentum = 0.0
        try:
            return self.segment(self.teacher_seg, recon)
        finally:
            for m, momentum in zip(norms, saved, strict=True):
                m.momentum = momentum

    def cycle_rounds(self, x: torch.Tensor, z_teacher: torch.Tensor) -> list[Round]:
        """The R reconstruction / re-segmentation rounds of phase 2 on x (B, C, H, W)."""
        r_count = self.config.rounds
        if self.config.rounds_mode == "independent":
            # Every round is conditioned on the teacher mask: batch the R rounds.
            cond = self.condition(z_teacher).detach()
            loss, recon = self.reconstruct(
                x.repeat(r_count, 1, 1, 1), cond.repeat(r_count, 1, 1, 1)
            )
            z = self.resegment(recon.detach())
            return [
                Round(cond, lr, xr, zr)
                for lr, xr, zr in zip(
                    loss.chunk(r_count), recon.chunk(r_count), z.chunk(r_count), strict=True
                )
            ]
        out = []
        z_prev = z_teacher
        for _ in range(r_count):
            cond = self.condition(z_prev).detach()
            loss, recon = self.reconstruct(x, cond)
            z_prev = self.resegment(recon.detach())
            out.append(Round(cond, loss, recon, z_prev))
        return out

    # -- losses -------------------------------------------------------------------------
    def phase1_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unsupervised teacher objective on images x: L_rec through the predicted mask."""
        z = self.segment(self.teacher_seg, x)
        loss_rec, _ = self.reconstruct(x, self.condition(z))
        loss_rec = loss_rec.mean()
        return {"loss": loss_rec, "loss_rec": loss_rec}

    def dice(
        self, probs: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The Dice term of every loss here, in the configured ``dice_form``."""
        form = self.config.dice_form
        if form == "pooled":
            return dice_loss(probs, y, mask)
        return sample_dice_loss(
            probs, y, mask, smooth=1.0, classes="target" if form == "reference" else "all"
        )

    def _sup(self, z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None):
        if self.config.sup_loss == "dice":
            return self.dice(z.softmax(dim=1), y, mask)
        if self.config.dice_form == "pooled":
            return ce_dice_loss(z, y, mask)
        return 0.5 * (masked_cross_entropy(z, y, mask) + self.dice(z.softmax(dim=1), y, mask))

    def phase2_losses(
        self,
        u: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        ramp: float,
        y_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Co-training objective on unlabeled u and labeled (x, y) (y_mask: y's per-pixel
        weights or None); ``loss`` is the total."""
        c = self.config
        n = u.shape[0]
        both = torch.cat([u, x], dim=0)
        z_t = self.segment(self.teacher_seg, both)
        z_s = self.segment(self.student_seg, both)
        p_t, p_s = z_t.softmax(dim=1), z_s.softmax(dim=1)
        y_t, y_s = class_ids(p_t[:n]), class_ids(p_s[:n])
        rounds = self.cycle_rounds(both, z_t)
        w = c.round_weight / len(rounds)

        cross = self.dice(p_s[:n], y_t) + self.dice(p_t[:n], y_s)
        cross = cross + w * sum(self.dice(r.logits[:n].softmax(dim=1), y_s) for r in rounds)
        rec_u = w * sum(r.loss_rec[:n].mean() for r in rounds)
        sup = self._sup(z_s[n:], y, y_mask) + self._sup(z_t[n:], y, y_mask)
        sup = sup + w * sum(self._sup(r.logits[n:], y, y_mask) for r in rounds)
        rec_x = w * sum(r.loss_rec[n:].mean() for r in rounds)
        loss = ramp * (cross + rec_u) + sup + rec_x
        loss_rec = sum(r.loss_rec.mean() for r in rounds) / len(rounds)
        return {"loss": loss, "loss_rec": loss_rec, "loss_cross": cross, "loss_sup": sup}

    # -- training -----------------------------------------------------------------------
    def _all_slices(self, data: SliceSampler) -> torch.Tensor:
        """A batch from every training slice: labeled and unlabeled crops in proportion."""
        b = data.batch_size
        n_lab, n_unl = len(data.labeled_index), len(data.unlabeled_index)
        if set(data.unlabeled_index) & set(data.labeled_index):  # unlabeled() = all slices
            return data.unlabeled(b).image
        k = min(b, max(0, int(round(b * n_lab / (n_lab + n_unl)))))
        parts = []
        if k:
            parts.append(data.labeled(k).image)
        if b - k:
            parts.append(data.unlabeled(b - k).image)
        return torch.cat(parts, dim=0)

    def train_step(self, data: SliceSampler, iteration: int, total: int) -> dict[str, float]:
        opt_t, opt_s = self.optimizers["teacher"], self.optimizers["student"]
        if self.phase(iteration, total) == 1:
            images = self._all_slices(data)
            losses = self.step_forward(lambda: self.phase1_losses(images))
            opt_t.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt_t.step()
            return {
                "loss": losses["loss"].item(),
                "loss_rec": losses["loss_rec"].item(),
                "loss_cross": 0.0,
                "loss_sup": 0.0,
                "phase": 1.0,
                "ramp": 0.0,
            }
        if "phase2_start" not in self.extra_state:
            # The reference loads the pre-trained teacher into a fresh optimiser.
            self.extra_state["phase2_start"] = int(iteration)
            opt_t.state.clear()
        ramp = self.ramp(iteration, total)
        unl = data.unlabeled()
        lab = data.labeled()
        losses = self.step_forward(
            lambda: self.phase2_losses(unl.image, lab.image, lab.label, ramp, lab.mask)
        )
        opt_t.zero_grad(set_to_none=True)
        opt_s.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt_t.step()
        opt_s.step()
        logs = {k: float(v.item()) for k, v in losses.items()}
        return {**logs, "phase": 2.0, "ramp": ramp}

    # -- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> Prediction:
        c = self.config
        b, _, h, w = image.shape
        k = self.num_classes
        gen = torch.Generator().manual_seed(int(c.inference_seed))
        nets = {"teacher": self.teacher_seg, "student": self.student_seg}
        sums = {name: torch.zeros(b, k, h, w, device=image.device) for name in nets}
        sq = torch.zeros(b, k, h, w, device=image.device)  # Σ p² of the predicting ensemble
        for _ in range(c.inference_passes):
            t = self.schedule.sample_t(1, image.device, generator=gen).expand(b)
            noise = torch.randn(1, k, h, w, generator=gen).to(image.device).expand(b, -1, -1, -1)
            probs = {
                name: self.segment(net, image, t, noise).softmax(dim=1)
                for name, net in nets.items()
            }
            for name, p in probs.items():
                sums[name] += p
            if c.predict_with == "mean":
                p_pass = 0.5 * (probs["teacher"] + probs["student"])
            else:
                p_pass = probs[c.predict_with]
            sq += p_pass * p_pass
        passes = c.inference_passes
        p_t, p_s = sums["teacher"] / passes, sums["student"] / passes
        final = (
            0.5 * (p_t + p_s)
            if c.predict_with == "mean"
            else (p_t if c.predict_with == "teacher" else p_s)
        )
        variance = (sq / passes - final * final).clamp_min(0.0)
        maps = {
            "confidence": confidence_map(final),
            "uncertainty": (4 * variance.mean(dim=1)).clamp(0.0, 1.0),
            "discrepancy": (0.5 * (p_t - p_s).abs().sum(dim=1)).clamp(0.0, 1.0),
            "pseudo": class_ids(p_t).float(),
        }
        return Prediction(final, maps)
