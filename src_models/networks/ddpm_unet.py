"""Conditional DDPM U-Net of the diffusion teacher–student method (one pathway).

Follows ``DDPM_Wrapper`` in ``models/networks_2d/unet_ddpm.py`` of
``ciampluca/hebbian-bootstraping-semi-supervised-medical-imaging`` (the authors'
'SuperDiffusion' code, later removed from that repository's HEAD): a plain 2D U-Net whose
blocks are the SSL4MIS ones (conv-BN-LeakyReLU, dropout, conv-BN-LeakyReLU; max-pool down,
1x1 projection + bilinear up), with the sinusoidal time embedding of
``denoising_diffusion_pytorch`` passed through an MLP (dim → 4·dim → GELU → width of the first
level) and **added once**, to the output of the first block. The lucidrains ResNet blocks,
attention and per-block time injection are all disabled in the reference; so are they here.

Widths: ``(w, w·m_1, ..., w·m_L)`` for base width ``w`` and multipliers ``m`` (reference:
w = 64, m = (1, 2, 4, 8), i.e. 64-64-128-256-512). Conditioning is channel concatenation,
done by the caller: the network just maps (B, in_channels, H, W) and t (B,) to
(B, out_channels, H, W).

Initialisation (``init="kaiming"``, the reference): ``unet_ddpm`` calls
``init_weights(model, 'kaiming')`` (``get_network``'s and ``train_semi_superdiff_2d.py``'s
default), which gives every convolution and linear layer (the time MLP included)
Kaiming-normal weights (``kaiming_normal_(a=0, mode='fan_in')``, gain √2) and zero biases, and
every BatchNorm2d a weight drawn from N(1, 0.02) and a zero bias. ``"default"``: PyTorch's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from src_models.networks.unet import ConvBlock, UpBlock


class SinusoidalTimeEmbedding(nn.Module):
    """t (B,) -> (B, dim): [sin(t·ω_i), cos(t·ω_i)], ω_i = θ^(−i/(dim/2 − 1))."""

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError("the time embedding needs an even dimension >= 4")
        half = dim // 2
        freqs = torch.exp(-math.log(theta) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


INITS = ("kaiming", "default")


def reference_init(net: nn.Module) -> None:
    """The reference ``init_weights(net, 'kaiming')`` of ``unet_ddpm.py`` (dac1ad6)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DDPMUNet(nn.Module):
    """U-Net with a time embedding.

    Args:
        in_channels: input channels (noised target ⊕ condition).
        out_channels: output channels (x0 mask logits or ε).
        base_width: w, the width of the first level.
        width_mults: multipliers of the L deeper levels (1 <= L <= 4).
        dropout: L + 1 dropout rates, first level to deepest (encoder only).
        init: ``"kaiming"`` (the reference's, :func:`reference_init`) or ``"default"``.
    Shapes: x (B, in, H, W), t (B,) int -> (B, out, H, W); H, W divisible by 2^L.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_width: int = 16,
        width_mults: Sequence[int] = (1, 2, 4, 8),
        dropout: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.4),
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not 1 <= len(width_mults) <= 4:
            raise ValueError("width_mults needs 1 to 4 multipliers")
        if len(dropout) != len(width_mults) + 1:
            raise ValueError("dropout needs one rate per level (len(width_mults) + 1)")
        widths = [int(base_width)] + [int(base_width * m) for m in width_mults]
        self.widths = tuple(widths)
        self.divisor = 2 ** len(width_mults)
        self.stem = ConvBlock(in_channels, widths[0], float(dropout[0]))
        time_dim = 4 * widths[0]
        emb_dim = max(4, widths[0] + widths[0] % 2)
        self.time_mlp = nn.Sequential(
            SinusoidalTimeEmbedding(emb_dim),
            nn.Linear(emb_dim, time_dim),
            nn.GELU(),
            nn.Linear(time_dim, widths[0]),
        )
        self.down = nn.ModuleList(
            [
                ConvBlock(widths[i], widths[i + 1], float(dropout[i + 1]))
                for i in range(len(width_mults))
            ]
        )
        levels = reversed(range(len(width_mults)))
        self.up = nn.ModuleList([UpBlock(widths[i + 1], widths[i], widths[i]) for i in levels])
        self.head = nn.Conv2d(widths[0], out_channels, 3, padding=1)
        if init == "kaiming":
            reference_init(self)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.stem(x) + self.time_mlp(t)[:, :, None, None]
        feats = [h]
        for block in self.down:
            h = block(F.max_pool2d(h, 2))
            feats.append(h)
        for block, skip in zip(self.up, reversed(feats[:-1]), strict=True):
            h = block(h, skip)
        return self.head(h)
