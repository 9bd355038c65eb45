"""Batched augmentations on the training device.

Every function takes a batch (B, C, H, W) and draws its random parameters for the whole
batch at once from a CPU ``torch.Generator`` (so runs are reproducible whatever the
device), then applies them with batched tensor operations: no per-sample Python loops.

- :func:`weak_geometric`: flip, rot90, small rotation and scale, applied identically to the
  image and its labels (labels resampled with nearest neighbour).
- :func:`strong_photometric`: intensity jitter (brightness/contrast/gamma), Gaussian blur,
  Gaussian noise and cutout; geometry is untouched, so a weak view's prediction remains a
  per-pixel target for its strong view.
- :func:`random_boxes` / :func:`cutmix`: CutMix boxes (UniMatch/CrossMatch convention).
- :func:`random_box_mask`: the single fixed-size box of BCP/SDCL copy-paste.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _bernoulli(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) < p


def weak_geometric(
    image: torch.Tensor,
    label: torch.Tensor | None = None,
    *,
    generator: torch.Generator,
    p_rot90_flip: float = 0.5,
    p_rotate: float = 0.25,
    max_degrees: float = 20.0,
    scale: tuple[float, float] = (1.0, 1.0),
    fill: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weak view: with p ``p_rot90_flip`` a random rot90 + flip, else with p ``p_rotate``
    a rotation in ±``max_degrees`` (UniMatch/CrossMatch/SDCL 2D convention); every sample
    is also scaled by a factor drawn from ``scale``.

    Args:
        image: float (B, C, H, W). label: int (B, H, W) or None. fill: value for pixels
        rotated in from outside the image (the volume's background after normalisation).
    Returns:
        (image, label) with the same shapes and dtypes; labels take values of the input only.
    """
    b, _, h, w = image.shape
    gen = generator
    use_r90 = _bernoulli(b, p_rot90_flip, gen)
    use_rot = ~use_r90 & _bernoulli(b, p_rotate, gen)
    k = torch.randint(0, 4, (b,), generator=gen)
    flip = _bernoulli(b, 0.5, gen)
    degrees = _uniform(b, -max_degrees, max_degrees, gen)
    zoom = _uniform(b, scale[0], scale[1], gen)
    angle = torch.where(use_r90, k.float() * (math.pi / 2), torch.zeros(b))
    angle = torch.where(use_rot, degrees * math.pi / 180, angle)
    flip_sign = torch.where(use_r90 & flip, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Exact zeros for rot90 so nearest-neighbour sampling is a pure permutation.
    cos = torch.where(cos.abs() < 1e-6, torch.zeros_like(cos), cos)
    sin = torch.where(sin.abs() < 1e-6, torch.zeros_like(sin), sin)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos * flip_sign / zoom
    theta[:, 0, 1] = -sin / zoom
    theta[:, 1, 0] = sin * flip_sign / zoom
    theta[:, 1, 1] = cos / zoom
    identity = ~(use_r90 | use_rot) & (zoom == 1.0)
    if bool(identity.all()):
        return image, label
    theta = theta.to(image.device, image.dtype)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    out = F.grid_sample(image - fill, grid, mode="bilinear", align_corners=False) + fill
    out_label = None
    if label is not None:
        lab = F.grid_sample(
            label[:, None].to(image.dtype), grid, mode="nearest", align_corners=False
        )
        out_label = lab[:, 0].round().to(label.dtype)
    return out, out_label


def gaussian_blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each sample of (B, C, H, W) with its own sigma (B,) in pixels, separably."""
    b, c, h, w = image.shape
    radius = int(math.ceil(3 * float(sigma.max())))
    radius = max(1, min(radius, (min(h, w) - 1) // 2))
    x = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    s = sigma.to(image.device, image.dtype).clamp_min(1e-3)[:, None]
    kernel = torch.exp(-(x[None] ** 2) / (2 * s**2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K)
    kernel = kernel.repeat_interleave(c, dim=0)  # (B*C, K)
    flat = image.reshape(1, b * c, h, w)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=b * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


def strong_photometric(
    image: torch.Tensor,
    *,
    generator: torch.Generator,
    p_jitter: float = 0.8,
    brightness: float = 0.5,
    contrast: float = 0.5,
    gamma: float = 0.25,
    p_blur: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
    p_noise: float = 0.3,
    noise_std: float = 0.1,
    p_cutout: float = 0.5,
    cutout_area: tuple[float, float] = (0.02, 0.2),
) -> torch.Tensor:
    """A strong photometric view of a normalised batch (B, C, H, W); geometry unchanged.

    The intensity jitter mirrors ColorJitter(0.5, 0.5, 0.5, 0.25) of the 2D official code for a
    z-scored image: brightness is an additive shift of up to ``brightness`` std, contrast a
    scale about the image mean in [1 - contrast, 1 + contrast], and (for single-channel
    images, where saturation/hue have no meaning) a gamma in [1 - gamma, 1 + gamma] applied
    on the image's own min-max range. Cutout fills a box with the image mean.
    """
    b = image.shape[0]
    gen = generator
    dev, dt = image.device, image.dtype
    out = image

    def col(v: torch.Tensor) -> torch.Tensor:
        return v.to(dev, dt).view(b, 1, 1, 1)

    jitter = _bernoulli(b, p_jitter, gen)
    shift = torch.where(jitter, _uniform(b, -brightness, brightness, gen), torch.zeros(b))
    factor = torch.where(jitter, _uniform(b, 1 - contrast, 1 + contrast, gen), torch.ones(b))
    g = torch.where(jitter, _uniform(b, 1 - gamma, 1 + gamma, gen), torch.ones(b))
    lo = out.amin(dim=(1, 2, 3), keepdim=True)
    hi = out.amax(dim=(1, 2, 3), keepdim=True)
    span = (hi - lo).clamp_min(1e-6)
    out = ((out - lo) / span).clamp(0, 1) ** col(g) * span + lo
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * col(factor) + mean + col(shift)

    blur = _bernoulli(b, p_blur, gen)
    if bool(blur.any()):
        s = _uniform(b, sigma[0], sigma[1], gen)
        blurred = gaussian_blur(out, s)
        out = torch.where(col(blur.float()) > 0, blurred, out)

    noisy = _bernoulli(b, p_noise, gen).float() * noise_std
    noise = torch.randn(out.shape, generator=gen).to(dev, dt)
    out = out + noise * col(noisy)

    cut = random_boxes(b, out.shape[-2], out.shape[-1], generator=gen, p=p_cutout, area=cutout_area)
    cut = cut.to(dev)[:, None]
    out = torch.where(cut, out.mean(dim=(1, 2, 3), keepdim=True), out)
    return out


def random_boxes(
    n: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
) -> torch.Tensor:
    """CutMix boxes: bool (n, H, W), True inside each sample's box.

    With probability ``p`` a sample gets a box of area fraction in ``area`` and aspect ratio
    in ``ratio`` (log-uniform), at a uniform position; otherwise its mask is all False.
    """
    gen = generator
    has = _bernoulli(n, p, gen)
    frac = _uniform(n, area[0], area[1], gen)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), gen)
    r = torch.exp(log_r)
    bh = (torch.sqrt(frac * height * width / r)).clamp(1, height).long()
    bw = (torch.sqrt(frac * height * width * r)).clamp(1, width).long()
    top = (torch.rand(n, generator=gen) * (height - bh + 1).float()).long()
    left = (torch.rand(n, generator=gen) * (width - bw + 1).float()).long()
    ys = torch.arange(height)[None, :, None]
    xs = torch.arange(width)[None, None, :]
    inside = (
        (ys >= top[:, None, None])
        & (ys < (top + bh)[:, None, None])
        & (xs >= left[:, None, None])
        & (xs < (left + bw)[:, None, None])
    )
    return inside & has[:, None, None]


def cutmix(base: torch.Tensor, partner: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Replace ``base`` by ``partner`` inside ``boxes`` (bool (B, H, W)).

    Works for images (B, C, H, W) and for per-pixel targets (B, H, W) / (B, K, H, W).
    """
    mask = boxes.to(base.device)
    if base.ndim == 4:
        mask = mask[:, None]
    return torch.where(mask, partner, base)


def random_box_mask(
    height: int, width: int, *, generator: torch.Generator, fraction: float = 2 / 3
) -> torch.Tensor:
    """The BCP/SDCL copy-paste mask: float (H, W), ones with one zero box of ``fraction`` of
    each side at a uniform random position (the official 2D code hard-codes 170 of 256)."""
    bh, bw = max(1, int(round(height * fraction))), max(1, int(round(width * fraction)))
    top = int(torch.randint(0, height - bh + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - bw + 1, (1,), generator=generator))
    mask = torch.ones(height, width)
    mask[top : top + bh, left : left + bw] = 0
    return mask
