"""Supervised baseline: one U-Net trained on the labeled slices only with (CE + Dice) / 2.

Every semi-supervised method is compared with it at the same iteration budget, same batch
size and same patch size. Optimisation follows the 2D UniMatch/CrossMatch recipe (SGD
0.01, momentum 0.9, weight decay 1e-4, poly 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from src_models.data.sampler import SliceSampler
from src_models.losses import ce_dice_loss
from src_models.methods.base import Method, Prediction, confidence_map, param, register
from src_models.networks import UNet


@dataclass
class SupervisedConfig:
    lr: float = param(0.01, "SGD learning rate (poly-decayed with power 0.9)")
    momentum: float = param(0.9, "SGD momentum (Nesterov)")
    weight_decay: float = param(1e-4, "SGD weight decay")
    channels: tuple = param((16, 32, 64, 128, 256), "U-Net widths of the five levels")


def make_unet(config, in_channels: int, num_classes: int) -> UNet:
    return UNet(in_channels, num_classes, channels=tuple(int(c) for c in config.channels))


def make_sgd(params, config) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=True,
    )


@register
class Supervised(Method):
    name = "supervised"
    description = "Baseline: one U-Net trained on the labeled slices only (CE + Dice)."
    Config = SupervisedConfig

    def build(self) -> None:
        self.net = make_unet(self.config, self.in_channels, self.num_classes)
        self.networks = {"net": self.net}
        self.optimizers = {"net": make_sgd(self.net.parameters(), self.config)}

    def train_step(self, data: SliceSampler, iteration: int, total: int) -> dict[str, float]:
        batch = data.labeled()
        opt = self.optimizers["net"]
        with self.autocast():
            loss = ce_dice_loss(self.net(batch.image).float(), batch.label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> Prediction:
        probs = self.net(image).float().softmax(dim=1)
        return Prediction(probs, {"confidence": confidence_map(probs)})
