"""Segmentation losses with an optional per-pixel validity mask.

Conventions (shared by every method):
- ``probs``/``logits``: float (B, K, H, W); ``target``: int64 (B, H, W) class ids.
- ``mask``: float or bool (B, H, W); 0 removes a pixel (an ignored pseudo-label) from every
  sum, weights in (0, 1] scale it. When every pixel is ignored a loss is 0, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int (B, H, W) -> float (B, K, H, W)."""
    return F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).float()


def dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    include_background: bool = True,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """Batch-pooled soft Dice loss, mean over classes (UniMatch/SSL4MIS ``DiceLoss``).

    Per class k: ``1 - (2 Σ m p y + s) / (Σ m p² + Σ m y² + s)`` with sums over the batch and
    pixels and m the mask; the squared denominator is the official one. ``target`` may be
    class ids (B, H, W) or a soft/one-hot target (B, K, H, W). All-ignored gives exactly 0.
    """
    k = probs.shape[1]
    y = one_hot(target, k) if target.ndim == 3 else target.float()
    m = torch.ones_like(probs[:, 0]) if mask is None else mask.float()
    m = m[:, None]
    dims = (0, 2, 3)
    inter = (probs * y * m).sum(dims)
    denom = (probs * probs * m).sum(dims) + (y * y * m).sum(dims)
    dice = 1 - (2 * inter + smooth) / (denom + smooth)
    if not include_background:
        dice = dice[1:]
    return dice.mean()


def sample_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    smooth: float = 1.0,
    classes: str = "target",
) -> torch.Tensor:
    """Per-sample soft Dice loss: the ``DiceLoss`` of the diffusion reference
    (``ciampluca/hebbian-bootstraping-semi-supervised-medical-imaging``,
    ``loss/loss_function.py``: ``BinaryDiceLoss(smooth=1, p=2)`` per class, mean over the batch).

    Per sample b and class k: ``1 - (2 Σ m p y + s) / (Σ m (p² + y²) + s)`` with sums over the
    pixels only; the mean over samples, then the mean over classes 0..C-1. ``target``: class
    ids (B, H, W). ``classes="target"`` (the reference) takes C from the one-hot of the target,
    ``F.one_hot(target)`` without ``num_classes``, i.e. C = (largest id in the batch) + 1: a
    batch without the last class(es) leaves them out of the loss and weighs the others more
    (a defect of the reference, kept by default for fidelity); ``classes="all"`` uses all K
    classes of ``probs``. A sample with every pixel ignored contributes 0 for each class.
    """
    k = probs.shape[1]
    if classes not in ("target", "all"):
        raise ValueError(f"classes must be 'target' or 'all', got {classes!r}")
    c = k if classes == "all" else min(k, int(target.max()) + 1)
    y = one_hot(target, k)[:, :c]
    p = probs[:, :c]
    m = torch.ones_like(probs[:, 0]) if mask is None else mask.float()
    m = m[:, None]
    inter = (p * y * m).sum((2, 3))  # (B, C)
    denom = ((p * p + y * y) * m).sum((2, 3))
    dice = 1 - (2 * inter + smooth) / (denom + smooth)
    return dice.mean(dim=0).sum() / c


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Pixel-mean cross entropy over valid pixels: Σ m·CE / Σ m (0 when Σ m = 0)."""
    ce = F.cross_entropy(logits, target.long(), reduction="none")
    if mask is None:
        return ce.mean()
    m = mask.float()
    return (ce * m).sum() / m.sum().clamp_min(1e-8) if m.sum() > 0 else ce.sum() * 0.0


def ce_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(CE + Dice) / 2 on softmax probabilities: the supervised loss of every method."""
    probs = logits.softmax(dim=1)
    return 0.5 * (masked_cross_entropy(logits, target, mask) + dice_loss(probs, target, mask))
