"""2D segmentation networks. Every network maps (B, C, H, W) -> logits (B, K, H, W) and needs
H and W divisible by :attr:`divisor` (inference pads to it)."""

from src_models.networks.unet import UNet

__all__ = ["UNet"]
