"""Layers shared by the networks.

:class:`StridedPointwiseConv` exists because of a native crash: on AVX2-only x86 CPUs (no
AVX-512), oneDNN's ``jit_avx2_1x1_convolution_bwd_weights_t`` corrupts the heap (``double
free or corruption``, segfault) in the backward of a 1x1 convolution with stride 2 on a
channels_last input with fewer than 8 input channels: exactly the ResUNet shortcut at small
widths. Reproduced here with ``ONEDNN_MAX_CPU_ISA=AVX2`` on torch 2.13.0+cpu for every input
width 1..7, output width 4/8/16, 1 and 2 threads; widths >= 8, stride 1 and NCHW do not
crash. A 1x1 convolution with stride s is the same map as taking every s-th pixel and then
applying a stride-1 1x1 convolution, and that form never reaches the crashing kernel (same
sweep: no crash), keeps channels_last, has the same weights and ``state_dict`` keys as
``nn.Conv2d``, and computes the same values (tests/core/test_networks.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StridedPointwiseConv(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` with stride, computed as subsample-then-stride-1 convolution."""

    def __init__(self, cin: int, cout: int, stride: int = 1, bias: bool = True) -> None:
        super().__init__(cin, cout, 1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sy, sx = self.stride
        if sy != 1 or sx != 1:
            x = x[:, :, ::sy, ::sx]
        return F.conv2d(x, self.weight, self.bias)
