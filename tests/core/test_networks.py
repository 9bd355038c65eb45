"""Networks: the crash-safe strided 1x1 convolution, and every network's backward on the
AVX2 oneDNN code path (forced with ONEDNN_MAX_CPU_ISA, so an AVX-512 machine checks it too)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import ROOT
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
    proc = subprocess.run(
        [sys.executable, "-c", BACKWARD_SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip().startswith("OK")


# -- initialisation (issue 12, item 5) -----------------------------------------------------
def _kaiming_std(weight: torch.Tensor) -> float:
    """std of kaiming_normal_(a=0, mode='fan_in'): √2 / √fan_in, fan_in as torch computes it."""
    fan_in = nn.init._calculate_fan_in_and_fan_out(weight)[0]
    return (2.0 / fan_in) ** 0.5


def _check_kaiming(layers, rel: float = 0.12) -> int:
    """Every layer with enough weights has the Kaiming-normal std (within ``rel``) and mean
    near 0; returns how many layers were checked."""
    checked = 0
    for m in layers:
        w = m.weight.detach()
        if w.numel() < 2000:
            continue
        std, expected = float(w.std()), _kaiming_std(w)
        assert abs(std / expected - 1) < rel, (m, std, expected)
        assert abs(float(w.mean())) < 0.1 * expected
        checked += 1
    return checked


def test_sdcl_unet_has_the_official_kaiming_initialisation():
    """SDCL's UNet_2d (code/networks/unet.py): kaiming_normal_ on every Conv2d /
    ConvTranspose2d, BatchNorm weight 1 and bias 0; PyTorch's default stays the default."""
    from src_models.methods.base import get_method, make_config
    from src_models.networks.unet import UNet

    torch.manual_seed(0)
    net = UNet(1, 3, init="kaiming")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert _check_kaiming(convs) >= 10
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    # PyTorch's default (kaiming_uniform_ a=√5: std 1/√(3·fan_in)) is clearly different
    plain = UNet(1, 3)
    big = [m for m in plain.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() > 2000]
    assert all(float(m.weight.detach().std()) < 0.6 * _kaiming_std(m.weight) for m in big)
    with pytest.raises(ValueError, match="init"):
        UNet(1, 3, init="xavier")
    # the SDCL method builds student A (and its teacher copy) with it
    cls = get_method("sdcl")
    method = cls(make_config(cls.Config, {}), 1, 3)
    assert method.config.init == "kaiming"
    for name in ("student_a", "teacher", "student_b"):
        convs = [m for m in getattr(method, name).modules() if isinstance(m, nn.Conv2d)]
        assert _check_kaiming(convs) >= 10, name


def test_diffusion_networks_have_the_reference_initialisation():
    """unet_ddpm's init_weights(model, 'kaiming') (dac1ad6): Kaiming-normal fan_in weights of
    every conv and linear layer with zero biases, BatchNorm2d weight N(1, 0.02), bias 0."""
    from src_models.methods.base import get_method, make_config
    from src_models.networks.ddpm_unet import DDPMUNet

    torch.manual_seed(0)
    net = DDPMUNet(4, 3, base_width=32)
    layers = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert _check_kaiming(layers) >= 8
    assert any(isinstance(m, nn.Linear) and m.weight.numel() >= 2000 for m in layers)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in layers if m.bias is not None)
    bn_w = torch.cat([m.weight.detach() for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
    bn_b = torch.cat([m.bias.detach() for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(float(bn_w.mean()) - 1) < 0.005 and abs(float(bn_w.std()) - 0.02) < 0.004
    assert float(bn_b.abs().max()) == 0
    plain = DDPMUNet(4, 3, base_width=32, init="default")
    assert any(
        float(m.bias.detach().abs().max()) > 0 for m in plain.modules() if isinstance(m, nn.Linear)
    )
    cls = get_method("diffusion")
    # PyTorch's init is the default (measured better at 800 iterations); init=kaiming gives
    # the reference's to every network
    assert make_config(cls.Config, {}).init == "default"
    method = cls(make_config(cls.Config, {"base_width": 8, "init": "kaiming"}), 1, 3)
    for net in method.networks.values():
        biases = [m.bias for m in net.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
        assert all(float(b.detach().abs().max()) == 0 for b in biases)
