"""How well a model fits the labeled slices: the guard against handing back a model that has
not learned.

A semi-supervised method's own step starts from the networks of its supervised warm-up. On a
loaded CPU a time budget can end a few iterations into it, with networks that an unlabeled
term has pulled away from anything useful (issue 18: SDCL, 13 iterations in 3 minutes,
returned an empty mask). The trainer scores the predicting networks on the labeled slices
when the warm-up ends and again when training ends; if the method's own phase lowered that
fit by more than :data:`HAND_BACK_DROP`, the warmed-up networks are handed back and the run
says so. The fit is also recorded in the model (``info["labeled_fit"]``): a fused
prediction trusts a model that fits its own labeled slices worse than :data:`MIN_FIT`
not at all and hands back the zero-training result instead.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from src_models.data.sampler import SliceSampler
from src_models.methods.base import Method
from src_models.metrics import dice

#: labeled slices scored at most (evenly chosen), so the check stays a fraction of a second
MAX_SLICES = 16
#: a drop of the labeled-slice Dice larger than this during the method's own phase hands
#: the warmed-up networks back
HAND_BACK_DROP = 0.05
#: below this labeled-slice Dice a model has not learned: fused predictions use the prior
MIN_FIT = 0.5
#: pixels around the labeled structure where a cross-section's fit is scored
#: (:func:`plane_fits`)
FIT_MARGIN = 8


def mean_slice_dice(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean foreground Dice over ``(prediction, truth)`` slice pairs, one score per class
    present in each slice's truth (truth < 0: unannotated, left out); NaN when no slice has
    foreground. The measure of :func:`labeled_fit`, for benchmarks that score a saved
    prediction the same way."""
    scores = []
    for pred, truth in pairs:
        known = truth >= 0
        scores += [dice((pred == c) & known, truth == c) for c in np.unique(truth[known]) if c]
    return float(np.mean(scores)) if scores else float("nan")


def labeled_fit(method: Method, data: SliceSampler) -> float:
    """Mean foreground Dice (:func:`mean_slice_dice`) of ``method``'s prediction on (up to
    :data:`MAX_SLICES` of) the labeled slices it trains on; NaN when none has foreground.
    Networks are left in train mode and the global RNG untouched."""
    from src_models.inference import predict_training_slice  # (inference imports training)

    pairs = data.labeled_index
    if not pairs:
        return float("nan")
    picks = np.unique(np.linspace(0, len(pairs) - 1, min(MAX_SLICES, len(pairs))).astype(int))

    def scored():
        for i in picks:
            v, s = pairs[int(i)]
            volume = data.volumes[v]
            yield predict_training_slice(method, volume, s), np.asarray(volume.labels[s])

    return mean_slice_dice(scored())


def plane_fits(method: Method, data: SliceSampler) -> dict[int, float]:
    """For a multi-planar run (:mod:`src_models.data.planes`), the fit of ``method``'s
    prediction along each cross axis on the labeled slices it trains on (mean foreground
    Dice, :func:`mean_slice_dice`), keyed by the spatial axis: the cross-sections through
    the labeled structure (and :data:`FIT_MARGIN` pixels on each side) are predicted and
    their rows on the labeled slices scored. Each cross-section holds a
    labeled slice as one row among the propagation's, so a network that fits it along the
    labeled axis may not along the others (left atrium at 2 minutes: 0.38-0.63, against
    0.65-0.88 along the labeled axis). Empty for a run on one axis."""
    from src_models.data.volumes import from_slices
    from src_models.inference import predict_training_volume  # (inference imports training)

    held = set(data.holdout)
    pairs: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    sources: dict[int, tuple[np.ndarray, list[int], np.ndarray]] = {}  # per volume cut
    for c, (v, axis) in data.cross_sources.items():
        source = data.volumes[v]
        if v not in sources:
            used = [s for s in source.labeled if (v, s) not in held]
            truth = from_slices(np.asarray(source.labels), source.axis)  # (Z, Y, X)
            sources[v] = (truth, used, np.take(truth, used, axis=source.axis) > 0)
        truth, used, seen = sources[v]
        others = tuple(b for b in range(3) if b != axis)
        along = np.flatnonzero(seen.any(axis=others))  # cross-sections through the structure
        if not len(along):
            continue
        first, last = along[0] - FIT_MARGIN, along[-1] + FIT_MARGIN + 1
        picks = list(range(max(0, first), min(truth.shape[axis], last)))
        probs = predict_training_volume(method, data.volumes[c], indices=picks)
        pred = np.full(truth.shape, -1, np.int16)  # -1: not predicted
        np.moveaxis(pred, axis, 0)[picks] = probs.argmax(axis=0)
        for s in used:
            p, t = np.take(pred, s, axis=source.axis), np.take(truth, s, axis=source.axis)
            pairs.setdefault(axis, []).append((p, np.where(p >= 0, t, -1)))
    fits = {axis: mean_slice_dice(scored) for axis, scored in pairs.items()}
    return {axis: fit for axis, fit in fits.items() if np.isfinite(fit)}
