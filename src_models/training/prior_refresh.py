"""Self-training on the product's own output: the prior's targets refreshed mid-run (an
option, ``--prior-refresh``: measured level to worse as a default, docs/benchmarks.md).

A 2D network learns from the labeled slices and from the propagation's sure voxels (the
prior of :class:`~src_models.data.sampler.SliceSampler`). What the product hands back is
better than either alone: the network fused with the propagation and smoothed across slices
(:func:`src_models.inference.predict_volume` with ``prior=``). Once, at ``prior_refresh`` of
the budget (:class:`~src_models.training.trainer.TrainConfig`), the prior's targets become
that output on each training volume (its class ids; weights from how sure it is, as the
propagation's; 0 on the annotated voxels of the labeled slices, which train as labeled, on
held-out slices, and on slices the walk does not reach unless the user said the outer
labeled slices are the structure's ends: there the fused output is background by
construction, not by evidence), so the rest of the run learns from targets that already
carry what the neighbouring slices say, which a network looking at one slice at a time
cannot see. Refreshing beyond the walk's reach too cost 1.5 points on a left-atrium volume
labeled strictly inside (the network unlearned the structure's continuation there).

A network that does not fit its own labeled slices yet (:data:`~src_models.training.fit.
MIN_FIT`) has nothing to add: the propagation's targets stay. Volumes whose prior is not the
propagation (the interpolation, or a volume too large for the walk) are left as they are.
A resumed or continued run refreshes again at the same share of its own budget (its sampler,
built anew, starts from the propagation of the labels it has then).
"""

from __future__ import annotations

import numpy as np

from src_models.data.sampler import SliceSampler, sure_weights
from src_models.methods.base import Method
from src_models.slice_smoothing import DEFAULT_SMOOTHING, smooth_across_slices
from src_models.training.fit import MIN_FIT, labeled_fit


def refresh_prior(
    method: Method,
    data: SliceSampler,
    prior_weight: float | None = None,
    smoothing: float = DEFAULT_SMOOTHING,
) -> int:
    """Replace ``data``'s propagation targets by the fused, smoothed prediction of
    ``method`` (``prior_weight``: the propagation's share, by default the product's, from
    the network's fit, :func:`~src_models.inference.prior_weight_for_fit`). Returns the
    number of volumes refreshed (0 when the network has not learned or no volume has a
    propagation)."""
    from src_models.inference import predict_training_volume, prior_weight_for_fit

    if not data.prior_probabilities:
        return 0
    fit = labeled_fit(method, data)
    if not fit >= MIN_FIT:  # NaN (no foreground labeled) too: nothing to check it against
        return 0
    weight = prior_weight_for_fit(fit) if prior_weight is None else prior_weight
    for v, walk in data.prior_probabilities.items():
        fused = predict_training_volume(method, data.volumes[v])  # blended in place
        fused *= 1.0 - weight
        for c, walk_c in enumerate(walk):  # float16 kept by the sampler; a class at a time
            fused[c] += weight * walk_c.astype(np.float32)
        fused = smooth_across_slices(fused, 1, smoothing)
        # the sampler takes out the annotated and held-out voxels, and what the walk does
        # not reach (SliceSampler.prior_reach)
        data.set_prior_targets(v, fused.argmax(0), sure_weights(fused.max(0)))
    return len(data.prior_probabilities)
