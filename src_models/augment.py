"""Batched augmentations on the training device.

Every function takes a batch (B, C, H, W) and draws its random parameters for the whole
batch at once from a CPU ``torch.Generator`` (so runs are reproducible whatever the
device), then applies them with batched tensor operations: no per-sample Python loops.

- :func:`weak_geometric`: the official 2D weak view (50 % rot90 + flip, 25 % small rotation,
  25 % untouched; :func:`draw_weak` draws it), applied identically to the image and its
  labels (labels resampled with nearest neighbour).
- :func:`strong_photometric`: intensity jitter (brightness/contrast as the official
  ColorJitter does to a grey image), Gaussian blur, Gaussian noise and cutout; geometry is
  untouched, so a weak view's prediction remains a per-pixel target for its strong view.
- :func:`random_boxes` / :func:`cutmix`: CutMix boxes (UniMatch/CrossMatch convention).
- :func:`random_box_mask`: the single fixed-size box of BCP/SDCL copy-paste.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _bernoulli(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) < p


@dataclass
class WeakDraw:
    """The random parameters of one weak view of a batch of B samples.

    branch: int (B,), :data:`UNTOUCHED`, :data:`ROT90_FLIP` or :data:`ROTATE`; k: rot90
    count in 0..3; flip_rows: bool (B,), flip along the row axis (axis 0 of a slice) rather
    than the column axis; degrees: float (B,) angle of the small rotation; zoom: float (B,).
    """

    branch: torch.Tensor
    k: torch.Tensor
    flip_rows: torch.Tensor
    degrees: torch.Tensor
    zoom: torch.Tensor


UNTOUCHED, ROT90_FLIP, ROTATE = 0, 1, 2


def draw_weak(
    b: int,
    *,
    generator: torch.Generator,
    p_rot90_flip: float = 0.5,
    p_rotate: float = 0.5,
    max_degrees: float = 20.0,
    angle_draw: str = "official",
    scale: tuple[float, float] = (1.0, 1.0),
) -> WeakDraw:
    """Draw the weak-view parameters of ``b`` samples (see :func:`weak_geometric`)."""
    if angle_draw not in ("official", "uniform"):
        raise ValueError(f"angle_draw must be 'official' or 'uniform', got {angle_draw!r}")
    gen = generator
    use_r90 = _bernoulli(b, p_rot90_flip, gen)
    use_rot = ~use_r90 & _bernoulli(b, p_rotate, gen)
    branch = torch.where(use_r90, ROT90_FLIP, torch.where(use_rot, ROTATE, UNTOUCHED))
    k = torch.randint(0, 4, (b,), generator=gen)
    flip_rows = _bernoulli(b, 0.5, gen)
    if angle_draw == "official":
        # np.random.randint(-20, 20): whole degrees in [-20, 19]. The missing +20 is a
        # harmless asymmetry of the official code, kept by default; "uniform" is symmetric.
        m = int(round(max_degrees))
        degrees = torch.randint(-m, max(m, 1 - m), (b,), generator=gen).float()
    else:
        degrees = _uniform(b, -max_degrees, max_degrees, gen)
    zoom = _uniform(b, scale[0], scale[1], gen)
    return WeakDraw(branch, k, flip_rows, degrees, zoom)


def weak_geometric(
    image: torch.Tensor,
    label: torch.Tensor | None = None,
    *,
    generator: torch.Generator,
    p_rot90_flip: float = 0.5,
    p_rotate: float = 0.5,
    max_degrees: float = 20.0,
    angle_draw: str = "official",
    image_mode: str = "nearest",
    scale: tuple[float, float] = (1.0, 1.0),
    fill: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weak view of the official 2D code (``RandomGenerator`` of SSL4MIS/SDCL
    ``code/dataloaders/dataset.py``; ``ACDCDataset.__getitem__`` of CrossMatch
    ``ACDC/dataset/acdc.py`` with ``ACDC/dataset/transform.py``):
    ``if random() > 0.5: random_rot_flip  elif random() > 0.5: random_rotate``.

    - with probability ``p_rot90_flip`` (0.5): rot90 by k·90°, k uniform in 0..3, AND a flip
      along a uniformly drawn axis (rows or columns; the official code always flips, so this
      branch yields only the four mirror images, never the identity);
    - otherwise, with probability ``p_rotate`` (0.5, i.e. 25 % of all samples): a rotation by
      whole degrees in [-20, 19] (``np.random.randint(-20, 20)``; ``angle_draw="uniform"``:
      continuous in ±``max_degrees``), image and labels resampled with nearest neighbour
      (``ndimage.rotate(order=0, reshape=False)``, constant fill); ``image_mode="bilinear"``
      interpolates the image instead;
    - otherwise (25 %) the sample is untouched.
    Every sample is also scaled by a factor drawn from ``scale`` (default none).

    Args:
        image: float (B, C, H, W). label: int (B, H, W) or None. fill: value for pixels
        rotated in from outside the image (the volume's background after normalisation; the
        official fill is 0 on images scaled to [0, 1], i.e. the background).
    Returns:
        (image, label) with the same shapes and dtypes; labels take values of the input only.
    """
    if image_mode not in ("nearest", "bilinear"):
        raise ValueError(f"image_mode must be 'nearest' or 'bilinear', got {image_mode!r}")
    b = image.shape[0]
    d = draw_weak(
        b,
        generator=generator,
        p_rot90_flip=p_rot90_flip,
        p_rotate=p_rotate,
        max_degrees=max_degrees,
        angle_draw=angle_draw,
        scale=scale,
    )
    use_r90, use_rot = d.branch == ROT90_FLIP, d.branch == ROTATE
    zoom = d.zoom
    angle = torch.where(use_r90, d.k.float() * (math.pi / 2), torch.zeros(b))
    angle = torch.where(use_rot, d.degrees * math.pi / 180, angle)
    # Output -> input map (affine_grid): rotation R(angle) after a flip diag(fx, fy).
    fx = torch.where(use_r90 & ~d.flip_rows, -1.0, 1.0)
    fy = torch.where(use_r90 & d.flip_rows, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Exact zeros for rot90 so nearest-neighbour sampling is a pure permutation.
    cos = torch.where(cos.abs() < 1e-6, torch.zeros_like(cos), cos)
    sin = torch.where(sin.abs() < 1e-6, torch.zeros_like(sin), sin)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos * fx / zoom
    theta[:, 0, 1] = -sin * fy / zoom
    theta[:, 1, 0] = sin * fx / zoom
    theta[:, 1, 1] = cos * fy / zoom
    identity = (d.branch == UNTOUCHED) & (zoom == 1.0)
    if bool(identity.all()):
        return image, label
    theta = theta.to(image.device, image.dtype)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    out = F.grid_sample(image - fill, grid, mode=image_mode, align_corners=False) + fill
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
    gamma: float = 0.0,
    jitter: str = "official",
    p_blur: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
    p_noise: float = 0.3,
    noise_std: float = 0.1,
    p_cutout: float = 0.5,
    cutout_area: tuple[float, float] = (0.02, 0.2),
) -> torch.Tensor:
    """A strong photometric view of a normalised batch (B, C, H, W); geometry unchanged.

    Intensity jitter, with probability ``p_jitter``:

    - ``jitter="official"`` (default): the grey-image effect of the official
      ``transforms.ColorJitter(0.5, 0.5, 0.5, 0.25)`` (CrossMatch ``ACDC/dataset/acdc.py``,
      UniMatch), which works on the slice scaled to [0, 1] (as uint8): each sample is mapped
      to [0, 1] by its own min-max range, then brightness (a factor in
      [1 - ``brightness``, 1 + ``brightness``] multiplying the image) and contrast (a blend
      with the image mean by a factor in [1 - ``contrast``, 1 + ``contrast``]) are applied in
      random order, each clamped to [0, 1] as PIL does, and the result is mapped back to the
      sample's range. Saturation and hue leave a grey (mode 'L') image unchanged in the
      official code, so they have no counterpart. Not reproduced: the uint8 quantisation;
      the [0, 1] range is the crop's own min-max (official: the slice's, fixed by the
      dataset's preprocessing). Multi-channel images use one mean over all channels.
    - ``jitter="additive"`` (the view used here before; ``variant="official"`` of DFCPS,
      whose official jitter is a gain and an offset of the normalised image): contrast as a
      scale about the image mean in [1 - ``contrast``, 1 + ``contrast``] plus an additive
      brightness shift of up to ``brightness`` (in units of the z-scored intensities).
    - ``gamma`` > 0 adds, in both modes and before them, a gamma in [1 - gamma, 1 + gamma]
      on the sample's min-max range (not in any official view; the earlier default 0.25
      used it as a stand-in for saturation/hue, which do nothing on a grey image).

    Then a Gaussian blur with probability ``p_blur`` (σ uniform in ``sigma``, pixels; the
    official PIL ``GaussianBlur(radius=σ)``, σ 0.1-2, p 0.5), Gaussian noise with probability
    ``p_noise`` and cutout (a box filled with the image mean) with probability ``p_cutout``:
    the last two are not in the official CrossMatch view (its method sets them to 0).
    """
    if jitter not in ("official", "additive"):
        raise ValueError(f"jitter must be 'official' or 'additive', got {jitter!r}")
    b = image.shape[0]
    gen = generator
    dev, dt = image.device, image.dtype
    out = image

    def col(v: torch.Tensor) -> torch.Tensor:
        return v.to(dev, dt).view(b, 1, 1, 1)

    jit = _bernoulli(b, p_jitter, gen)
    b_lo, b_hi = (
        (-brightness, brightness) if jitter == "additive" else (1 - brightness, 1 + brightness)
    )
    b_id = 0.0 if jitter == "additive" else 1.0
    bright = torch.where(jit, _uniform(b, b_lo, b_hi, gen), torch.full((b,), b_id))
    factor = torch.where(jit, _uniform(b, 1 - contrast, 1 + contrast, gen), torch.ones(b))
    contrast_first = _bernoulli(b, 0.5, gen)
    lo = out.amin(dim=(1, 2, 3), keepdim=True)
    hi = out.amax(dim=(1, 2, 3), keepdim=True)
    span = (hi - lo).clamp_min(1e-6)
    if gamma > 0:
        g = torch.where(jit, _uniform(b, 1 - gamma, 1 + gamma, gen), torch.ones(b))
        out = ((out - lo) / span).clamp(0, 1) ** col(g) * span + lo
    if jitter == "additive":
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * col(factor) + mean + col(bright)
    else:
        u = ((out - lo) / span).clamp(0, 1)

        def with_brightness(v: torch.Tensor) -> torch.Tensor:
            return (v * col(bright)).clamp(0, 1)

        def with_contrast(v: torch.Tensor) -> torch.Tensor:
            m = v.mean(dim=(1, 2, 3), keepdim=True)
            return (m + (v - m) * col(factor)).clamp(0, 1)

        u = torch.where(
            col(contrast_first.float()) > 0,
            with_brightness(with_contrast(u)),
            with_contrast(with_brightness(u)),
        )
        out = u * span + lo

    blur = _bernoulli(b, p_blur, gen)
    if bool(blur.any()):
        s = _uniform(b, sigma[0], sigma[1], gen)
        blurred = gaussian_blur(out, s)
        out = torch.where(col(blur.float()) > 0, blurred, out)

    noisy = _bernoulli(b, p_noise, gen).float() * noise_std
    if bool((noisy > 0).any()):
        noise = torch.randn(out.shape, generator=gen).to(dev, dt)
        out = out + noise * col(noisy)

    if p_cutout > 0:
        cut = random_boxes(
            b, out.shape[-2], out.shape[-1], generator=gen, p=p_cutout, area=cutout_area
        )
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
