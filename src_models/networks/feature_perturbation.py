"""Feature perturbation of a U-Net's encoder features, decoded in one stacked decoder pass.

Used by CrossMatch (and usable by any method with ``UNet.encode``/``decode``). The official
CrossMatch network (``AiEson/CrossMatch``, ``ACDC/model/unet.py``: ``PertDropout`` and
``UNet.forward(need_fp=True)``) encodes a stacked batch ``cat(x, u)`` once, splits every
encoder level into its two halves ``(f_x, f_u)``, perturbs the unlabeled half with a weak
(Dropout2d 0.25) and a strong (Dropout2d 0.75) channel dropout at all five levels (skip
connections included), and runs the decoder ONCE on ``cat(f_x, f_u, drop25(f_u),
drop75(f_u))``. In train mode BatchNorm therefore normalises the clean and the dropped
features with shared batch statistics; four separate decoder calls give different numbers.

Here the dropout is a function that is always active, whatever the module's train/eval mode
(in the official code the dropout modules sit in a plain Python list, so ``model.eval()``
does not reach them and they stay active by construction; this makes that explicit), and it
accepts a ``torch.Generator`` so test-time perturbations can be reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from src_models.networks.unet import UNet

Features = list[torch.Tensor]


def channel_dropout(
    x: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``Dropout2d(p)`` that is always on: each (sample, channel) map of (B, C, H, W) is zeroed
    with probability ``p`` and the kept ones are scaled by ``1 / (1 - p)``.

    ``generator``: a CPU generator for reproducible masks (drawn on the CPU, then moved);
    None uses torch's global RNG on ``x``'s device.
    """
    if p <= 0:
        return x
    if p >= 1:
        return torch.zeros_like(x)
    shape = (x.shape[0], x.shape[1], 1, 1)
    if generator is None:
        u = torch.rand(shape, device=x.device, dtype=x.dtype)
    else:
        u = torch.rand(shape, generator=generator).to(x.device, x.dtype)
    return x * ((u >= p).to(x.dtype) / (1 - p))


def perturb(
    feats: Sequence[torch.Tensor], p: float, generator: torch.Generator | None = None
) -> Features:
    """Channel dropout with rate ``p`` applied independently at every encoder level."""
    return [channel_dropout(f, p, generator) for f in feats]


def stacked_decode(
    net: UNet, streams: Sequence[Sequence[torch.Tensor]]
) -> tuple[torch.Tensor, ...]:
    """Decode several feature lists in ONE decoder call (levels concatenated along the batch)
    and return the logits of each stream, in order. In eval mode this equals separate
    ``net.decode`` calls; in train mode BatchNorm pools the statistics of all streams."""
    if len(streams) == 1:
        return (net.decode(streams[0]),)
    sizes = [s[0].shape[0] for s in streams]
    merged = [torch.cat(level) for level in zip(*streams, strict=True)]
    return tuple(net.decode(merged).split(sizes))


def split_levels(feats: Sequence[torch.Tensor], n_first: int) -> tuple[Features, Features]:
    """Split every level (B, ...) into its first ``n_first`` samples and the rest."""
    first = [f[:n_first] for f in feats]
    rest = [f[n_first:] for f in feats]
    return first, rest


def fp_forward(
    net: UNet,
    x: torch.Tensor,
    n_first: int,
    rates: Sequence[float] = (0.25, 0.75),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ...]:
    """The official ``net(cat(a, b), need_fp=True)``.

    ``x`` is the stacked batch ``cat(a, b)`` with ``a`` its first ``n_first`` samples. The
    encoder runs once on ``x``; the decoder runs once on ``cat(f_a, f_b, drop_r(f_b) for r
    in rates)``. Returns the logits ``(p_a, p_b, p_b_r1, p_b_r2, ...)``.
    """
    f_a, f_b = split_levels(net.encode(x), n_first)
    return stacked_decode(net, [f_a, f_b] + [perturb(f_b, r, generator) for r in rates])
