"""Which slices to annotate next: ranked suggestions, each with its score and the reason.

The correction loop asks it after every round (``semiseg suggest``, the review dock's *Next
slice*). Strategies, given the labeled slices, the per-slice mean of the method's
uncertainty (discrepancy between its networks, or 1 - confidence) and the slices where the
prediction holds the structure:

- ``strided``: the middle of the largest gap between labeled slices, where the gap before
  the first (after the last) labeled slice starts (ends) at the predicted structure's end;
  an end of the predicted structure that no labeled slice covers comes first. Evenly spaced
  ("strided") choices are a strong baseline that most active-learning scores fail to beat
  for slice annotation (Burmeister et al. 2022; nnActive, TMLR 2025).
- ``uncertainty``: the unlabeled slice with the highest mean uncertainty (the plugin's first
  *Next slice*).
- ``uncertainty-distance``: uncertainty times the distance to the nearest labeled (or already
  suggested) slice, so suggestions spread out instead of piling up next to each other (the
  diversity idea behind ClaSP PE); within the extent ``strided`` spreads over (the predicted
  structure and the labeled slices) while it has an unlabeled slice: far from every labeled
  slice, the distance outweighed a tiny uncertainty, and it picked the volume's first slice,
  empty, on the hippocampus strictly inside.
- ``strided-then-uncertainty-distance``: ``strided`` while fewer than
  :data:`STRIDED_UNTIL` slices are labeled, then ``uncertainty-distance``. With a few slices
  the model's uncertainty says little yet (active learning's cold start: uncertainty scores
  lose to even spacing until the model has seen enough), and ``uncertainty-distance`` was
  below ``strided`` in the first rounds of the correction loop and above it from the third
  on.

Each pick counts as labeled for the next one, so ``n`` suggestions spread over the volume.
With ``ends_labeled`` (the user labeled the structure's first and last slices) nothing
beyond the outer labeled slices is suggested: those slices are known background.
The default is ``strided-then-uncertainty-distance`` (stop 38): in
``benchmarks/correction_loop.py`` (both arms in the same runs, whole-slice corrections) it is
at or above ``strided`` at every round of all four groups with today's product (5 volumes
each but the left atrium strictly inside, 3; after round 5: the hippocampus with the ends
0.948 against 0.945, run in stop 42; the left atrium with the ends 0.952 against 0.940, stops
42 and 44; strictly inside, both re-run in stop 44, the hippocampus 0.945 against 0.930 and
the left atrium 0.938 against 0.927) and reaches interpolation with 10 evenly spaced
slices on the hippocampus strictly inside (0.945 against 0.942), ties it with the ends
(0.9479 against 0.9480), and stays under it on the left atrium (0.952 / 0.938 against
0.954 / 0.943; stop 43: there the loop's output is the walk of its picks; stop 44, the
loop replayed with the walk alone in ``benchmarks/pick_ceiling.py``: a greedy oracle that
knows the truth ends 0.7 points above the default's picks and 0.2 above that
interpolation). Until stop 37 the
default was ``strided``, when no score was at or above it at every round.
``uncertainty-distance`` (stop 31) ends higher on all four after 5 rounds (+0.9, +1.2,
+0.6, +2.3 points: hippocampus / left atrium with the ends, then strictly inside) but is
below it in the first rounds (left atrium: -1.2 at round 1 with the ends, -1.7 and -0.9 at
rounds 1-2 strictly inside): with 3 labeled slices, spacing wins; with 6 and more, where the
model is unsure does.
``strided-then-uncertainty-distance`` (stop 32) ends higher on all four (+0.2, +1.1, +1.3,
+2.0) and is at or above ``strided`` at every round on three, but 0.18 and 0.29 points below
it at rounds 3 and 4 on the hippocampus with the ends (5 volumes); re-run there with the
slices beyond the ends trained as background (stop 34), 0.06 points below at round 3 and
+0.3 after round 5 (the left atrium with the ends: at or above at every round, +1.1); with
stop 38's product (the walk's edge weight from the labeled slices' spacing, the masks
leaning towards the labeled areas, the prior's share from the fit) at or above it at every
round there too. ``strided`` stays a choice (``--strategy``, the box beside the dock's
*Next slice*).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from src_models.errors import SemisegError

STRATEGIES = (
    "strided",
    "uncertainty",
    "uncertainty-distance",
    "strided-then-uncertainty-distance",
)
DEFAULT_STRATEGY = "strided-then-uncertainty-distance"
#: ``strided-then-uncertainty-distance`` spaces the picks evenly while fewer slices than this
#: are labeled (counting the picks made so far)
STRIDED_UNTIL = 5


@dataclass
class Suggestion:
    """A slice to annotate: its index, the strategy's score and why, in words, and the
    strategy that chose it (``strided-then-uncertainty-distance`` switches)."""

    index: int
    score: float
    why: str
    by: str = ""


def _gaps(done: list[int], first: int, last: int) -> list[tuple[int, int, bool, bool]]:
    """(a, b, a_labeled, b_labeled) intervals of unlabeled slices between ``first`` and
    ``last`` bounded by labeled slices or by those ends."""
    edges = sorted(set(done))
    out = []
    points = [(first, False)] + [(s, True) for s in edges] + [(last, False)]
    for (a, la), (b, lb) in zip(points[:-1], points[1:], strict=True):
        if b > a:
            out.append((a, b, la, lb))
    return out


def _strided(done: list[int], first: int, last: int) -> Suggestion | None:
    if first not in done and first < min(done, default=last + 1):
        return Suggestion(
            first, float("inf"), f"slice {first}: the predicted structure's first end"
        )
    if last not in done and last > max(done, default=first - 1):
        return Suggestion(last, float("inf"), f"slice {last}: the predicted structure's last end")
    best = None
    for a, b, la, lb in _gaps(done, first, last):
        inner = (b - a - 1) if (la and lb) else (b - a)
        if inner <= 0:
            continue
        mid = (a + b) // 2 if la and lb else (a + b + (1 if la else 0)) // 2
        if mid in done:
            continue
        if best is None or inner > best.score:
            best = Suggestion(
                int(mid), float(inner), f"slice {mid}: the middle of a gap of {inner} slices"
            )
    return best


def _current_strategy(strategy: str, n_labeled: int) -> str:
    """The strategy the next pick follows, with ``n_labeled`` slices labeled so far."""
    if strategy == "strided-then-uncertainty-distance":
        return "strided" if n_labeled < STRIDED_UNTIL else "uncertainty-distance"
    return strategy


def suggest(
    labeled: Sequence[int],
    n_slices: int,
    uncertainty: np.ndarray | None = None,
    structure: np.ndarray | None = None,
    n: int = 5,
    strategy: str = DEFAULT_STRATEGY,
    ends_labeled: bool = False,
) -> list[Suggestion]:
    """Up to ``n`` slices to annotate next, best first.

    Args:
        labeled: the slices already labeled.
        n_slices: slices along the axis.
        uncertainty: (n_slices,) mean uncertainty per slice (needed by the uncertainty
            strategies).
        structure: (n_slices,) bool, slices where the prediction holds the structure (the
            extent ``strided`` spreads over; default all slices).
        ends_labeled: the outer labeled slices are the structure's first and last: the
            extent is theirs and no slice beyond them is suggested.
    """
    if strategy not in STRATEGIES:
        raise SemisegError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if strategy != "strided" and uncertainty is None:
        raise SemisegError(f"strategy {strategy!r} needs the model's uncertainty map")
    if uncertainty is not None and len(uncertainty) != n_slices:
        raise SemisegError(f"{len(uncertainty)} slice scores for {n_slices} slices")
    done = sorted({int(s) for s in labeled if 0 <= int(s) < n_slices})
    present = np.flatnonzero(structure) if structure is not None else np.arange(n_slices)
    first, last = (int(present[0]), int(present[-1])) if len(present) else (0, n_slices - 1)
    first, last = min([first] + done), max([last] + done)
    bounded = ends_labeled and len(done) >= 2
    if bounded:
        first, last = done[0], done[-1]
    out: list[Suggestion] = []
    idx = np.arange(n_slices)
    outside = np.ones(n_slices, bool)  # beyond the extent
    outside[first : last + 1] = False
    base = None if uncertainty is None else np.asarray(uncertainty, np.float64)
    # distance to the nearest labeled (or already suggested) slice, kept up to date per pick
    # (recomputing it from every labeled slice at each pick is quadratic in the slices)
    dist = (
        np.min(np.abs(idx[:, None] - np.asarray(done)[None]), axis=1).astype(np.float64)
        if done
        else np.full(n_slices, float(n_slices))
    )
    for _ in range(max(0, min(n, n_slices - len(done)))):
        current = _current_strategy(strategy, len(done))
        if current == "strided":
            pick = _strided(done, first, last)
            if pick is None and not bounded:  # the extent is covered: the largest gap anywhere
                pick = _strided(done, 0, n_slices - 1)
        else:
            score = base.copy()
            why = "mean uncertainty {:.3f}"
            if current == "uncertainty-distance":
                score = score * dist
                why = "mean uncertainty {:.3f} x {:.0f} slices from the nearest labeled one"
            score[done] = -np.inf
            spread = current == "uncertainty-distance" and np.isfinite(score[~outside]).any()
            if bounded or spread:
                score[outside] = -np.inf
            i = int(np.argmax(score))
            if not np.isfinite(score[i]):
                break
            text = (
                why.format(uncertainty[i], score[i] / max(uncertainty[i], 1e-12))
                if current == "uncertainty-distance"
                else why.format(uncertainty[i])
            )
            pick = Suggestion(i, float(score[i]), f"slice {i}: {text}")
        if pick is None:
            break
        pick.by = current
        out.append(pick)
        done = sorted(set(done) | {pick.index})
        dist = np.minimum(dist, np.abs(idx - pick.index))
    return out
