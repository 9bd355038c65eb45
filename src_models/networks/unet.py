"""The common 2D U-Net of the semi-supervised literature (UniMatch / SSL4MIS / CrossMatch).

Channels 16-32-64-128-256, BatchNorm, LeakyReLU, encoder dropout 0.05-0.5 per level, no
dropout in the decoder, bilinear upsampling after a 1x1 projection. ``encode`` and ``decode``
are public so a method can perturb the encoder features before decoding (CrossMatch,
UniMatch's feature perturbation): ``net(x) == net.decode(net.encode(x))``.

Initialisation (``init``): ``"default"`` is PyTorch's (the CrossMatch/UniMatch 2D U-Net has no
init of its own: CrossMatch's ``sparse_init_weight`` touches only 3D layers); ``"kaiming"`` is
SDCL's ``UNet_2d`` (``pascalcpp/SDCL``, ``code/networks/unet.py``): Kaiming-normal weights of
every convolution (``kaiming_normal_`` defaults: fan_in, gain √2), convolution biases left at
PyTorch's default, BatchNorm weight 1 and bias 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Sequential):
    """conv3x3-BN-LeakyReLU, dropout, conv3x3-BN-LeakyReLU."""

    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(),
        )


class UpBlock(nn.Module):
    """1x1 projection of the deeper feature, bilinear x2 upsampling, concat skip, ConvBlock."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(cin, cskip, 1)
        self.conv = ConvBlock(cskip * 2, cout, 0.0)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        deep = F.interpolate(
            self.project(deep), size=skip.shape[-2:], mode="bilinear", align_corners=True
        )
        return self.conv(torch.cat([skip, deep], dim=1))


class UNetDecoderMixin:
    """The U-Net decoder pass shared by every encoder-decoder here: ``decoder`` (four
    :class:`UpBlock`, deep to shallow) and ``head`` run on the encoder's five features."""

    decoder: nn.ModuleList
    head: nn.Module

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def decode(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits (B, K, H, W) from the five encoder features."""
        x = feats[-1]
        for block, skip in zip(self.decoder, reversed(feats[:-1]), strict=True):
            x = block(x, skip)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


INITS = ("default", "kaiming")


def kaiming_init(net: nn.Module) -> None:
    """SDCL's initialisation: Kaiming-normal (fan_in, a=0) weights of every Conv2d and
    ConvTranspose2d (biases untouched), BatchNorm2d weight 1 and bias 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class UNet(UNetDecoderMixin, nn.Module):
    """2D U-Net.

    Args:
        in_channels: image channels C. num_classes: output classes K (incl. background).
        channels: five encoder widths. dropout: five encoder dropout rates.
        init: ``"default"`` (PyTorch's) or ``"kaiming"`` (SDCL's, :func:`kaiming_init`).
    Shapes: (B, C, H, W) -> (B, K, H, W), H and W divisible by 16.
    """

    divisor = 16

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
        init: str = "default",
    ) -> None:
        super().__init__()
        if len(channels) != 5 or len(dropout) != 5:
            raise ValueError("UNet needs five channel widths and five dropout rates")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.encoder = nn.ModuleList(
            [ConvBlock(in_channels, channels[0], dropout[0])]
            + [ConvBlock(channels[i - 1], channels[i], dropout[i]) for i in range(1, 5)]
        )
        self.decoder = nn.ModuleList(
            [UpBlock(channels[i + 1], channels[i], channels[i]) for i in reversed(range(4))]
        )
        self.head = nn.Conv2d(channels[0], num_classes, 3, padding=1)
        if init == "kaiming":
            kaiming_init(self)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of the five levels, shallow to deep: (B, c_i, H/2^i, W/2^i)."""
        feats = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        return feats
