"""DeepLabv3+ with a ResNet-50 encoder: the network of the official DFCPS / CPS code.

Architecture as in TorchSemiSeg (which DFCPS forks): ``exp.voc/voc8.res50v3+.CPS+CutMix/
network.py`` (``SingleNetwork``, ``ASPP``, ``Head``) and ``furnace/base_model/resnet.py``
(``ResNet``, ``Bottleneck``) in ``charlesCXK/TorchSemiSeg``; DFCPS's own
``exp.voc/voc8.res50v3+.CPS+DFCPS/train.py`` (``JustlfC03/DFCPS``) uses it unchanged through
``model(x, step=1|2)``.

- Encoder: ResNet-50, bottleneck blocks 3-4-6-3 (expansion 4, stride on the 3x3 conv), stem
  either the "deep" one of ResNet-50-v1c used by the official code (three 3x3 convs of
  widths 64, 64, 128: ``deep_stem=True, stem_width=64``) or torchvision's 7x7 conv, then a
  3x3/2 max-pool. Output stride 16: layer4 keeps stride 1 and dilates its 3x3
  convolutions, by default with the official multi-grid 2, 4, 8 (``_nostride_dilate``).
- ASPP: a 1x1 branch, three 3x3 branches dilated 6/12/18, and image pooling (global mean,
  1x1 conv, broadcast), each conv-BN-ReLU, concatenated and projected by a 1x1 conv-BN-ReLU.
  The official ``ASPP`` normalises the four map branches jointly, uses LeakyReLU and *adds*
  the projected pooling branch instead of concatenating it; since the pooled map is constant,
  "concatenate then 1x1" spans the same functions, so the textbook form is kept.
- Decoder: the layer1 feature projected to 48 channels (1x1-BN-ReLU), the ASPP output
  upsampled bilinearly to its size, concatenated (256 + 48 = 304), two 3x3 conv-BN-ReLU of
  256, a 1x1 classifier, and bilinear upsampling to the input size.

``width`` scales every channel count (64 = the standard ResNet-50 / DeepLabv3+, 81 M
parameters for two networks); small widths are for tests. Any number of input channels;
H and W must be divisible by 16. Weights: random (Kaiming) or a user-supplied file via
:func:`load_resnet_weights` (no downloads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from src_models.errors import SemisegError
from src_models.networks.layers import StridedPointwiseConv

STEMS = ("deep", "torchvision")


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride, dilation), 1x1 expand (x4), each with BN; residual + ReLU."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 encoder with output stride 16; returns (layer1, layer4) features.

    Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1`` ...) and,
    for the deep stem, the official ResNet-50-v1c (``conv1.0``, ``conv1.1``, ``conv1.3`` ...),
    so either kind of weights file loads by name.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        layers: Sequence[int] = (3, 4, 6, 3),
        stem: str = "deep",
        layer4_dilations: Sequence[int] = (2, 4, 8),
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if len(layer4_dilations) != layers[3]:
            raise ValueError("layer4_dilations needs one dilation per layer4 block")
        if stem == "deep":
            self.conv1 = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            )
            self.inplanes = 2 * width
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.inplanes = width
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0], 1, [1] * layers[0])
        self.layer2 = self._make_layer(2 * width, layers[1], 2, [1] * layers[1])
        self.layer3 = self._make_layer(4 * width, layers[2], 2, [1] * layers[2])
        # Output stride 16: no stride in layer4, dilated 3x3 convolutions instead.
        self.layer4 = self._make_layer(8 * width, layers[3], 1, list(layer4_dilations))
        self.low_level_channels = width * Bottleneck.expansion
        self.out_channels = 8 * width * Bottleneck.expansion

    def _make_layer(
        self, planes: int, blocks: int, stride: int, dilations: list[int]
    ) -> nn.Sequential:
        cout = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != cout:
            downsample = nn.Sequential(
                StridedPointwiseConv(self.inplanes, cout, stride, bias=False),
                nn.BatchNorm2d(cout),
            )
        out = [Bottleneck(self.inplanes, planes, stride, dilations[0], downsample)]
        self.inplanes = cout
        out += [Bottleneck(cout, planes, 1, d) for d in dilations[1:]]
        return nn.Sequential(*out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)  # stride 4
        x = self.layer4(self.layer3(self.layer2(low)))  # stride 16
        return low, x


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, image pooling; 1x1 fusion."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(cin, cout, 1)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates]
        )
        self.pool = _conv_bn_relu(cin, cout, 1)
        self.project = _conv_bn_relu(cout * (len(rates) + 2), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [branch(x) for branch in self.branches]
        pooled = self.pool(x.mean(dim=(2, 3), keepdim=True))
        feats.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(feats, dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ / ResNet-50, output stride 16.

    Args:
        in_channels: image channels C. num_classes: output classes K.
        width: ResNet base width (64 = standard); the ASPP/decoder width is ``4 * width``
            (256) and the low-level projection ``0.75 * width`` (48).
        stem: "deep" (official ResNet-50-v1c) or "torchvision" (7x7 conv).
        aspp_rates: the three ASPP dilations. layer4_dilations: per-block layer4 dilation.
    Shapes: (B, C, H, W) -> logits (B, K, H, W), H and W divisible by 16.
    """

    divisor = 16

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 64,
        stem: str = "deep",
        aspp_rates: Sequence[int] = (6, 12, 18),
        layer4_dilations: Sequence[int] = (2, 4, 8),
    ) -> None:
        super().__init__()
        if width < 4:
            raise ValueError("DeepLabV3Plus width must be at least 4")
        head = 4 * width
        low = max(1, round(0.75 * width))
        self.backbone = ResNet50(in_channels, width, stem=stem, layer4_dilations=layer4_dilations)
        self.aspp = ASPP(self.backbone.out_channels, head, aspp_rates)
        self.reduce = _conv_bn_relu(self.backbone.low_level_channels, low, 1)
        self.fuse = nn.Sequential(_conv_bn_relu(head + low, head, 3), _conv_bn_relu(head, head, 3))
        self.classifier = nn.Conv2d(head, num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # Backbone: torchvision's ResNet init; head: the official init_weight (kaiming
        # normal, fan_in, relu) of ``business_layer``; BN weight 1, bias 0.
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                mode = "fan_out" if name.startswith("backbone.") else "fan_in"
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise SemisegError(
                f"DeepLabv3+ needs H and W divisible by {self.divisor}, got {h}x{w}: pad the "
                "input or choose a patch size that is a multiple of 16"
            )
        low, deep = self.backbone(x)
        deep = self.aspp(deep)
        deep = F.interpolate(deep, size=low.shape[-2:], mode="bilinear", align_corners=True)
        feat = self.fuse(torch.cat([deep, self.reduce(low)], dim=1))
        return F.interpolate(
            self.classifier(feat), size=(h, w), mode="bilinear", align_corners=True
        )


# -- user-supplied weights --------------------------------------------------------------
_PREFIXES = ("module.", "model.", "encoder.", "backbone.")


@dataclass
class WeightsReport:
    """Which tensors of a weights file were loaded into a :class:`DeepLabV3Plus`."""

    path: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  #: stem conv summed/spread over channels
    missing: list[str] = field(default_factory=list)  #: backbone tensors left at random init
    unexpected: list[str] = field(default_factory=list)  #: file tensors with no match
    mismatched: list[str] = field(default_factory=list)  #: same name, other shape

    def summary(self) -> str:
        return (
            f"{self.path}: loaded {len(self.loaded)} tensors ({len(self.adapted)} adapted to "
            f"the input channels), {len(self.missing)} backbone tensors missing, "
            f"{len(self.unexpected)} unused, {len(self.mismatched)} with another shape"
        )

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "loaded": len(self.loaded),
            "adapted": list(self.adapted),
            "missing": list(self.missing),
            "unexpected": len(self.unexpected),
            "mismatched": list(self.mismatched),
        }


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def _adapt_input_channels(w: torch.Tensor, channels: int) -> torch.Tensor:
    """Stem kernel (O, C_file, k, k) -> (O, channels, k, k) with the same response to an
    image replicated over the channels: sum for grey input, mean x C_file/channels else."""
    total = w.sum(dim=1, keepdim=True)
    return total.repeat(1, channels, 1, 1) / channels


def load_resnet_weights(net: DeepLabV3Plus, path: str | Path) -> WeightsReport:
    """Load a ResNet-50 (or whole-network) state dict by name into ``net``, in place.

    Accepts torchvision names (``conv1.weight``, ``layer1.0.conv1.weight``), the official
    ResNet-50-v1c names (``conv1.0.weight`` ...), and the same with ``module.``/``backbone.``
    prefixes, or a dict holding it under ``state_dict``/``model``. A stem kernel with another
    number of input channels (RGB weights, grey images) is adapted. Loaded with
    ``torch.load(weights_only=True)``: tensors only, never arbitrary pickles.

    Raises:
        SemisegError: the file is missing, unreadable, or no tensor matches.
    """
    path = Path(path)
    if not path.is_file():
        raise SemisegError(
            f"backbone weights file {path} not found: give an existing .pth file "
            "or leave backbone_weights empty for random initialisation"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SemisegError(
            f"cannot read backbone weights {path} ({type(exc).__name__}): it must "
            "be a PyTorch state dict of tensors (torch.save(model.state_dict()))"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise SemisegError(f"{path} holds no state dict: save it with torch.save(state_dict)")
    own = net.state_dict()
    stem_keys = {"backbone.conv1.weight", "backbone.conv1.0.weight"}
    report = WeightsReport(str(path))
    new: dict[str, torch.Tensor] = {}
    for raw, value in state.items():
        if not torch.is_tensor(value):
            continue
        key = _strip(raw)
        target = next((k for k in (key, "backbone." + key) if k in own), None)
        if target is None:
            report.unexpected.append(raw)
            continue
        if value.shape != own[target].shape:
            same_but_channels = (
                value.ndim == 4
                and value.shape[0] == own[target].shape[0]
                and value.shape[2:] == own[target].shape[2:]
            )
            if target in stem_keys and same_but_channels:
                value = _adapt_input_channels(value.float(), own[target].shape[1])
                report.adapted.append(target)
            else:
                report.mismatched.append(
                    f"{target} {tuple(value.shape)} vs {tuple(own[target].shape)}"
                )
                continue
        new[target] = value.to(own[target].dtype)
        report.loaded.append(target)
    if not new:
        raise SemisegError(
            f"no tensor of {path} matches the DeepLabv3+ ResNet-50 backbone: expected names like "
            "conv1.weight / layer1.0.conv1.weight (torchvision) or conv1.0.weight (v1c deep "
            "stem; set resnet_stem accordingly) and the same width"
        )
    report.missing = [k for k in own if k.startswith("backbone.") and k not in new]
    net.load_state_dict(new, strict=False)
    return report
