"""How far apart the slices are, counted in the slices' own pixels.

The zero-training rules that look across slices were measured on isotropic volumes (the
hippocampus at 1 mm, the left atrium at 0.625 mm), where a gap of ``g`` slices is ``g``
pixels long. On a volume whose slices are thicker than their pixels, the same ``g`` slices
span ``g * ratio`` pixels (:func:`slice_ratio`), and it is the physical gap the rules
respond to: how sharp an edge must be to hold a random walk across it
(:func:`src_models.propagation.walk_beta`), how far the structure's area may turn unseen
(:data:`src_models.area_profile.MAX_GAP`), how wide the smoothing across slices is
(:func:`src_models.slice_smoothing.smoothing_for_spacing`). Counted in slices, the walk's
rule gave the thick left atrium (every 4th slice, 2.5 mm against 0.625 mm pixels, 5 volumes)
beta 50 where 400-700 measured best, 2.4 / 2.8 Dice points under (4 / 3 slices strictly
inside), and applied the areas across gaps of 17-20 pixel-lengths' worth of slices, 1.6
points under (4 slices with the ends): benchmarks/annotation_notes.md, "thick slices".
Counted in pixels: +2.3 / +2.0 points there strictly inside (5 of 5 volumes better), +1.2
with the ends, −0.1 to −0.4 with 5-6 slices and the ends, +0.5 on average over 13 thick
scenarios of both datasets (stop 40 in the same notes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def slice_ratio(spacing: Sequence[float] | None, axis: int) -> float:
    """The spacing of the slices along ``axis`` over their finest pixel, for voxels of
    ``spacing`` (its last 3 values: Z, Y, X; a channel's value before them is ignored):
    1 on isotropic voxels, 4 for 2.5 mm slices of 0.625 mm pixels, 1 when the spacing is
    unknown (None, fewer than 3 values, or any not a positive number)."""
    values = [float(s) for s in spacing][-3:] if spacing is not None else []
    if len(values) < 3 or not all(math.isfinite(s) and s > 0 for s in values):
        return 1.0
    in_plane = min(s for a, s in enumerate(values) if a != axis)
    return values[axis] / in_plane
