"""Losses against hand-computed values and their ignore-mask semantics."""

import math

import torch

from src_models.losses import ce_dice_loss, dice_loss, masked_cross_entropy, sample_dice_loss


def test_dice_loss_hand_computed():
    probs = torch.tensor([[[[0.8, 0.4]], [[0.2, 0.6]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    # class 0: inter .8, denom (.64+.16)+1 = 1.8 -> 1 - 1.6/1.8; class 1: inter .6, denom
    # (.04+.36)+1 = 1.4 -> 1 - 1.2/1.4
    expected = ((1 - 1.6 / 1.8) + (1 - 1.2 / 1.4)) / 2
    assert math.isclose(dice_loss(probs, target, smooth=0).item(), expected, rel_tol=1e-6)


def test_masked_pixels_do_not_count_and_all_ignored_is_zero():
    probs = torch.tensor([[[[0.8, 0.1]], [[0.2, 0.9]]]])
    target = torch.tensor([[[0, 0]]])
    mask = torch.tensor([[[1.0, 0.0]]])
    only_first = dice_loss(probs[..., :1], target[..., :1])
    assert math.isclose(dice_loss(probs, target, mask).item(), only_first.item(), rel_tol=1e-6)
    zero = dice_loss(probs, target, torch.zeros(1, 1, 2))
    assert zero.item() == 0.0 and not torch.isnan(zero)
    logits = torch.randn(1, 2, 1, 2, requires_grad=True)
    ce = masked_cross_entropy(logits, target, torch.zeros(1, 1, 2))
    assert ce.item() == 0.0
    ce.backward()  # still differentiable


def test_masked_cross_entropy_hand_computed():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])
    target = torch.tensor([[[0, 1]]])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert math.isclose(
        masked_cross_entropy(logits, target, torch.tensor([[[1.0, 0.0]]])).item(), ce0, rel_tol=1e-6
    )
    both = (ce0 + math.log(2)) / 2
    assert math.isclose(masked_cross_entropy(logits, target).item(), both, rel_tol=1e-6)
    ce_dice = ce_dice_loss(logits, target).item()
    assert math.isclose(
        ce_dice, 0.5 * (both + dice_loss(logits.softmax(1), target).item()), rel_tol=1e-6
    )


def test_sample_dice_is_the_reference_per_sample_dice_with_target_class_count():
    """The diffusion reference's DiceLoss (loss/loss_function.py): softmax, one-hot of the
    target without num_classes, BinaryDiceLoss(smooth=1, p=2) per class averaged over the
    samples, sum over classes / class count."""
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 4, 5, 6, generator=g).softmax(dim=1)
    target = torch.randint(0, 3, (3, 5, 6), generator=g)  # classes 0..2 present, 3 absent

    def reference(p, t, c):
        total = 0.0
        for k in range(c):
            per_sample = []
            for b in range(p.shape[0]):
                pk, yk = p[b, k].flatten(), (t[b] == k).float().flatten()
                num = 2 * (pk * yk).sum() + 1
                den = (pk**2 + yk**2).sum() + 1
                per_sample.append(1 - num / den)
            total += torch.stack(per_sample).mean()
        return total / c

    got = sample_dice_loss(probs, target)
    assert math.isclose(got.item(), reference(probs, target, 3).item(), rel_tol=1e-6)
    every = sample_dice_loss(probs, target, classes="all")
    assert math.isclose(every.item(), reference(probs, target, 4).item(), rel_tol=1e-6)
    # not the batch-pooled form of the other methods
    assert abs(got.item() - dice_loss(probs, target).item()) > 1e-3
    # masked pixels do not count; a sample with every pixel ignored contributes 0
    mask = torch.ones(3, 5, 6)
    mask[1] = 0
    masked = sample_dice_loss(probs, target, mask)
    kept = reference(probs[[0, 2]], target[[0, 2]], 3).item() * 2 / 3
    assert math.isclose(masked.item(), kept, rel_tol=1e-6)
