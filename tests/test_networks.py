"""Networks: the crash-safe strided 1x1 convolution, and every network's backward on the
AVX2 oneDNN code path (forced with ONEDNN_MAX_CPU_ISA, so an AVX-512 machine checks it too)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from src_models.networks.layers import StridedPointwiseConv
from src_models.networks.resunet import ResUNet


@pytest.mark.parametrize("stride", [1, 2])
def test_strided_pointwise_conv_equals_conv2d(stride):
    torch.manual_seed(0)
    ref = nn.Conv2d(5, 7, 1, stride=stride, bias=True)
    ours = StridedPointwiseConv(5, 7, stride, bias=True)
    assert set(ours.state_dict()) == set(ref.state_dict())  # checkpoints stay compatible
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 15, 16).to(memory_format=torch.channels_last)
    xr = x.clone().requires_grad_()
    xo = x.clone().requires_grad_()
    yr, yo = ref(xr), ours(xo)
    assert yo.shape == yr.shape == (2, 7, (15 - 1) // stride + 1, 16 // stride)
    torch.testing.assert_close(yo, yr, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(yr)
    yr.backward(g)
    yo.backward(g)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-5, atol=1e-5)


def test_resunet_shortcuts_use_the_crash_safe_convolution():
    net = ResUNet(1, 2, channels=(4, 8, 16, 32, 64), blocks=(1, 1, 1, 1))
    pointwise = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    strided = [m for m in pointwise if m.stride != (1, 1)]
    assert strided and all(isinstance(m, StridedPointwiseConv) for m in strided)


BACKWARD_SCRIPT = textwrap.dedent(
    """
    import torch
    from src_models.networks.deeplabv3plus import DeepLabV3Plus
    from src_models.networks.resunet import ResUNet
    from src_models.networks.unet import UNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tiny = (4, 8, 16, 32, 64)
    nets = [UNet(1, 2, channels=tiny), ResUNet(1, 3, channels=tiny, blocks=(1, 1, 1, 1)),
            ResUNet(3, 2, channels=(2, 4, 6, 8, 16), blocks=(1, 1, 1, 1))]
    nets.append(DeepLabV3Plus(in_channels=1, num_classes=2, width=4))
    for net in nets:
        net = net.to(memory_format=torch.channels_last)
        c = net.stem[0].in_channels if hasattr(net, "stem") else 1
        for _ in range(3):
            x = torch.randn(4, c, 32, 32).to(memory_format=torch.channels_last)
            net(x).float().sum().backward()
    print("OK", len(nets))
    """
)


def test_every_network_backward_on_the_avx2_code_path():
    """Runs in a child so that the crash, were it back, fails this test instead of the run."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", BACKWARD_SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip().startswith("OK")
