"""Supervised baseline: one U-Net trained on the labeled slices only with (CE + Dice) / 2.

Every semi-supervised method is compared with it at the same budget, batch size and patch
size. Optimisation: AdamW at 3e-3 with poly 0.9 decay by default, because the baseline must
be as good as it can be in the minutes a CPU user waits (one minute on a left-atrium volume
with 3 labeled slices: Dice 0.78 against 0.04-0.23 with SGD at 0.01; docs/benchmarks.md);
``optimizer=sgd`` is the 2D UniMatch/CrossMatch recipe (SGD 0.01, momentum 0.9, weight
decay 1e-4, poly 0.9) that the methods' own steps use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from src_models.data.sampler import SliceSampler
from src_models.errors import SemisegError
from src_models.losses import ce_dice_loss
from src_models.methods.base import Method, Prediction, confidence_map, param, register
from src_models.networks import UNet


@dataclass
class SupervisedConfig:
    optimizer: str = param(
        "adamw",
        "adamw (fast in a short budget) or sgd (the UniMatch recipe)",
        choices=("adamw", "sgd"),
    )
    lr: float = param(0.0, "learning rate, poly-decayed with power 0.9 (0: 3e-3 adamw, 0.01 sgd)")
    momentum: float = param(0.9, "SGD momentum (Nesterov)")
    weight_decay: float = param(1e-4, "SGD weight decay")
    channels: tuple = param((16, 32, 64, 128, 256), "U-Net widths of the five levels")


def make_unet(config, in_channels: int, num_classes: int) -> UNet:
    return UNet(in_channels, num_classes, channels=tuple(int(c) for c in config.channels))


def make_sgd(params, config, lr: float | None = None) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params,
        lr=config.lr if lr is None else lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=True,
    )


@register
class Supervised(Method):
    name = "supervised"
    description = (
        "What the default (auto) trains, except from 5 minutes with the labeled ends: one "
        "U-Net trained on the labeled slices (CE + Dice) and on the confident voxels of "
        "their propagation along the image (with the labeled ends: cut along all three "
        "axes, its prediction averaged over the axes it fits the labeled slices along); its "
        "prediction is fused with the propagation."
    )
    Config = SupervisedConfig

    def build(self) -> None:
        self.net = make_unet(self.config, self.in_channels, self.num_classes)
        self.networks = {"net": self.net}
        c = self.config
        if c.lr < 0:
            raise SemisegError(f"lr must be >= 0 (0: the optimiser's default), got {c.lr}")
        if c.optimizer == "adamw":
            opt = torch.optim.AdamW(
                self.net.parameters(), lr=c.lr or 3e-3, weight_decay=c.weight_decay
            )
        else:
            opt = make_sgd(self.net.parameters(), c, lr=c.lr or 0.01)
        self.optimizers = {"net": opt}

    def train_step(self, data: SliceSampler, iteration: int, total: int) -> dict[str, float]:
        batch = data.labeled()
        opt = self.optimizers["net"]
        with self.autocast():
            logits = self.step_forward(lambda: self.net(batch.image))
        loss = ce_dice_loss(logits.float(), batch.label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> Prediction:
        probs = self.net(image).float().softmax(dim=1)
        return Prediction(probs, {"confidence": confidence_map(probs)})
