"""Augmentations keep image/label geometry aligned and are batched and reproducible."""

import torch

from src_models.augment import (
    ROT90_FLIP,
    ROTATE,
    UNTOUCHED,
    cutmix,
    draw_weak,
    gaussian_blur,
    random_box_mask,
    random_boxes,
    strong_photometric,
    weak_geometric,
)


def _batch(n=16, size=32):
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(n, size, size, dtype=torch.int64)
    for i in range(n):
        y, x = torch.randint(0, size - 10, (2,), generator=g).tolist()
        label[i, y : y + 8 + i % 3, x : x + 5] = 1 + i % 2
    image = label.float()[:, None] * 10 + 0.01 * torch.randn(n, 1, size, size, generator=g)
    return image, label


def test_weak_view_branch_shares_match_the_official_random_generator():
    """``if random() > 0.5: rot90 + flip elif random() > 0.5: rotate`` (SDCL
    code/dataloaders/dataset.py, CrossMatch ACDC/dataset/acdc.py): 50 / 25 / 25 %."""
    d = draw_weak(40000, generator=torch.Generator().manual_seed(0))
    shares = {b: float((d.branch == b).float().mean()) for b in (ROT90_FLIP, ROTATE, UNTOUCHED)}
    assert abs(shares[ROT90_FLIP] - 0.5) < 0.03, shares
    assert abs(shares[ROTATE] - 0.25) < 0.03, shares
    assert abs(shares[UNTOUCHED] - 0.25) < 0.03, shares
    # rot90 k uniform in 0..3, flip axis uniform; angles np.random.randint(-20, 20)
    r90 = d.branch == ROT90_FLIP
    assert torch.bincount(d.k[r90], minlength=4).min() > 0.22 * int(r90.sum())
    assert abs(float(d.flip_rows[r90].float().mean()) - 0.5) < 0.03
    deg = d.degrees[d.branch == ROTATE]
    assert torch.equal(deg, deg.round())
    assert float(deg.min()) == -20 and float(deg.max()) == 19
    uniform = draw_weak(4000, generator=torch.Generator().manual_seed(0), angle_draw="uniform")
    assert float(uniform.degrees.abs().max()) <= 20 and not torch.equal(
        uniform.degrees, uniform.degrees.round()
    )


def _dihedral(img: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(the four rotations, the four mirror images) of a (H, W) tensor."""
    rots = [torch.rot90(img, k, (0, 1)) for k in range(4)]
    return rots, [torch.flip(r, (0,)) for r in rots]


def test_weak_geometric_applies_the_drawn_branch_to_every_sample():
    n, size = 3000, 16
    image = torch.arange(size * size, dtype=torch.float32).reshape(1, 1, size, size)
    image = image.expand(n, -1, -1, -1).contiguous()
    label = image[:, 0].long()
    d = draw_weak(n, generator=torch.Generator().manual_seed(4))
    out, out_label = weak_geometric(image, label, generator=torch.Generator().manual_seed(4))
    assert torch.equal(out_label, out[:, 0].long())  # nearest: image and labels move together
    rots, mirrors = _dihedral(image[0, 0])
    kind = []
    for i in range(n):
        o = out[i, 0]
        if torch.equal(o, image[i, 0]):
            kind.append(UNTOUCHED)
        elif any(torch.equal(o, m) for m in mirrors):
            kind.append(ROT90_FLIP)
        else:
            assert not any(torch.equal(o, r) for r in rots)  # rot90 is always flipped
            kind.append(ROTATE)
    kind = torch.tensor(kind)
    # every rot90+flip draw is a mirror image, every untouched draw the input itself
    assert torch.equal(kind[d.branch == ROT90_FLIP], torch.full_like(kind[d.branch == 1], 1))
    assert bool((kind[d.branch == UNTOUCHED] == UNTOUCHED).all())
    big = (d.branch == ROTATE) & (d.degrees.abs() >= 10)
    assert bool((kind[big] == ROTATE).all())
    # measured from the outputs: half mirrored, about a quarter untouched
    assert abs(float((kind == ROT90_FLIP).float().mean()) - 0.5) < 0.03
    assert abs(float((kind == UNTOUCHED).float().mean()) - 0.25) < 0.05


def test_weak_geometric_keeps_image_and_labels_aligned():
    image, label = _batch()
    out, out_label = weak_geometric(
        image,
        label,
        generator=torch.Generator().manual_seed(3),
        p_rot90_flip=0.5,
        p_rotate=1.0,
        image_mode="bilinear",
    )
    assert out.shape == image.shape and out_label.dtype == torch.int64
    assert set(out_label.unique().tolist()) <= {0, 1, 2}
    # the image value encodes the class: after augmentation it must still agree
    recovered = (out[:, 0] / 10).round().clamp(0, 2).long()
    agree = (recovered == out_label).float().mean()
    assert agree > 0.97
    assert not torch.equal(out_label, label)  # something was actually transformed


def test_rot90_flip_is_an_exact_permutation():
    image, label = _batch()
    out, out_label = weak_geometric(
        image, label, generator=torch.Generator().manual_seed(1), p_rot90_flip=1.0
    )
    for i in range(image.shape[0]):
        assert sorted(out_label[i].flatten().tolist()) == sorted(label[i].flatten().tolist())


def test_strong_photometric_keeps_geometry_and_is_reproducible():
    image, label = _batch()
    kw = dict(p_cutout=0.0, p_blur=0.0, p_noise=0.0, p_jitter=1.0)
    a = strong_photometric(image, generator=torch.Generator().manual_seed(5), **kw)
    b = strong_photometric(image, generator=torch.Generator().manual_seed(5), **kw)
    torch.testing.assert_close(a, b)
    # jitter is monotone per image: the foreground stays brighter than the background
    for i in range(image.shape[0]):
        assert a[i, 0][label[i] > 0].mean() > a[i, 0][label[i] == 0].mean()


def test_strong_jitter_official_is_multiplicative_brightness_and_contrast_on_0_1():
    """ColorJitter on a grey [0, 1] image: brightness multiplies, contrast blends with the
    mean, both clamped to [0, 1]; mapped back to each sample's own range."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(64, 1, 16, 16, generator=g) * 2 + 3
    off = dict(p_blur=0.0, p_noise=0.0, p_cutout=0.0, p_jitter=1.0)
    same = strong_photometric(
        image, generator=torch.Generator().manual_seed(1), brightness=0.0, contrast=0.0, **off
    )
    torch.testing.assert_close(same, image)
    out = strong_photometric(image, generator=torch.Generator().manual_seed(1), contrast=0.0, **off)
    lo = image.amin(dim=(1, 2, 3), keepdim=True)
    hi = image.amax(dim=(1, 2, 3), keepdim=True)
    assert bool((out >= lo - 1e-5).all() and (out <= hi + 1e-5).all())  # clamped to [0, 1]
    torch.testing.assert_close(out.amin(dim=(1, 2, 3), keepdim=True), lo)  # 0 stays 0
    u, v = (image - lo) / (hi - lo), (out - lo) / (hi - lo)
    factors = []
    for i in range(64):  # one multiplicative factor per sample where nothing was clamped
        keep = (v[i] < 0.999) & (u[i] > 0.05)
        f = v[i][keep] / u[i][keep]
        assert float(f.max() - f.min()) < 1e-3
        factors.append(float(f.mean()))
    assert 0.5 <= min(factors) < 0.7 and 1.3 < max(factors) <= 1.5
    # the additive form (used by DFCPS' official variant) shifts instead
    add = strong_photometric(
        image,
        generator=torch.Generator().manual_seed(1),
        jitter="additive",
        contrast=0.0,
        **off,
    )
    shift = (add - image).flatten(1)
    assert float((shift.max(1).values - shift.min(1).values).max()) < 1e-4


def test_gaussian_blur_per_sample_sigma_preserves_mean():
    x = torch.zeros(2, 1, 21, 21)
    x[:, :, 10, 10] = 1
    y = gaussian_blur(x, torch.tensor([0.5, 2.0]))
    assert y[0].max() > y[1].max()
    torch.testing.assert_close(y.sum(dim=(1, 2, 3)), torch.ones(2), atol=1e-4, rtol=0)


def test_random_boxes_and_cutmix():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(200, 32, 32, generator=g, p=0.5, area=(0.02, 0.4))
    frac = boxes.float().mean(dim=(1, 2))
    has = frac > 0
    assert 0.3 < has.float().mean() < 0.7
    assert frac[has].min() > 0.01 and frac[has].max() < 0.5
    a, b = torch.zeros(200, 1, 32, 32), torch.ones(200, 1, 32, 32)
    mixed = cutmix(a, b, boxes)
    torch.testing.assert_close(mixed[:, 0], boxes.float())
    torch.testing.assert_close(cutmix(a[:, 0].long(), b[:, 0].long(), boxes), boxes.long())


def test_random_box_mask_size():
    m = random_box_mask(48, 30, generator=torch.Generator().manual_seed(0))
    assert (m == 0).sum() == 32 * 20
