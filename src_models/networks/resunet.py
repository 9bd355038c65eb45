"""ResUNet: a ResNet-34-style encoder with the U-Net decoder (SDCL's student B, 2D).

Follows the official SDCL 2D network (``pascalcpp/SDCL``, ``code/networks/ResNet2d.py``,
class ``ResUNet_2d``, and ``code/networks/resnet.py``, ``ResNet2d`` / ``resnet34_2d``):

- stem: 7x7 conv (stride 1, no bias) - BatchNorm - ReLU to ``channels[0]``, no max-pooling,
  so the stem keeps the full resolution and serves as the first skip connection;
- four residual stages of BasicBlocks (3, 4, 6, 3 blocks: ResNet-34), each halving the
  resolution with a stride-2 first block (1x1 stride-2 conv + BN on the shortcut, computed
  as subsample + 1x1 conv: :mod:`src_models.networks.layers` says why) and
  widening to ``channels[1..4]``;
- the U-Net decoder (1x1 projection, bilinear x2, concat skip, two conv-BN-LeakyReLU) on the
  five features, as in :class:`~src_models.networks.unet.UNet`; no dropout anywhere;
- Kaiming-normal initialisation of every convolution, BatchNorm weight 1 / bias 0 (the
  official code applies it to the whole network, decoder included).

The official defaults are widths 16-32-64-128-256 (the U-Net's), which is what ``channels``
defaults to; tests use tiny widths. Official defect fixed here: ``resnet34_2d()`` ignores the
network's ``in_chns`` and always builds a one-channel stem; this stem takes ``in_channels``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from src_models.networks.layers import StridedPointwiseConv
from src_models.networks.unet import UNetDecoderMixin, UpBlock


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN plus the (projected) input, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                StridedPointwiseConv(cin, cout, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def residual_stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    """``blocks`` BasicBlocks, the first with stride 2 (halves H and W)."""
    return nn.Sequential(
        BasicBlock(cin, cout, stride=2), *[BasicBlock(cout, cout) for _ in range(blocks - 1)]
    )


class ResUNet(UNetDecoderMixin, nn.Module):
    """2D ResUNet.

    Args:
        in_channels: image channels C. num_classes: output classes K (incl. background).
        channels: five widths: the stem and the four residual stages (decoder alike).
        blocks: BasicBlocks per residual stage (ResNet-34: 3, 4, 6, 3).
    Shapes: (B, C, H, W) -> (B, K, H, W), H and W divisible by 16.
    """

    divisor = 16

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        blocks: Sequence[int] = (3, 4, 6, 3),
    ) -> None:
        super().__init__()
        if len(channels) != 5 or len(blocks) != 4:
            raise ValueError("ResUNet needs five channel widths and four stage depths")
        if min(blocks) < 1:
            raise ValueError("every residual stage needs at least one block")
        c = [int(v) for v in channels]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c[0], 7, padding=3, bias=False),
            nn.BatchNorm2d(c[0]),
            nn.ReLU(),
        )
        self.stages = nn.ModuleList(
            [residual_stage(c[i], c[i + 1], int(blocks[i])) for i in range(4)]
        )
        self.decoder = nn.ModuleList([UpBlock(c[i + 1], c[i], c[i]) for i in reversed(range(4))])
        self.head = nn.Conv2d(c[0], num_classes, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of the five levels, shallow to deep: (B, c_i, H/2^i, W/2^i)."""
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats
