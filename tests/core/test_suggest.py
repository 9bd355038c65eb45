"""Which slice to annotate next."""

from __future__ import annotations

import numpy as np
import pytest

from src_models.errors import SemisegError
from src_models.suggest import STRATEGIES, suggest

HYBRID = "strided-then-uncertainty-distance"


def test_strided_takes_uncovered_ends_first_then_the_middles_of_the_largest_gaps():
    structure = np.zeros(40, bool)
    structure[5:31] = True  # the prediction spans slices 5..30
    picks = suggest([10, 20], 40, structure=structure, n=4, strategy="strided")
    assert [p.index for p in picks] == [5, 30, 15, 25]  # ties: the first gap
    assert "first end" in picks[0].why and "gap of" in picks[2].why
    # with the ends labeled, the middles of the gaps, largest first
    picks = suggest([5, 11, 30], 40, structure=structure, n=2, strategy="strided")
    assert [p.index for p in picks] == [20, 25]


def test_uncertainty_and_its_distance_weighted_form():
    score = np.zeros(20)
    score[[3, 4, 15]] = [0.9, 0.8, 0.5]
    plain = suggest([2, 10], 20, uncertainty=score, n=2, strategy="uncertainty")
    assert [p.index for p in plain] == [3, 4] and "0.900" in plain[0].why
    # weighted by the distance to the nearest labeled slice: 15 (5 away) beats 3 (1 away),
    # and a pick counts as labeled, so the next one is not its neighbour
    spread = suggest([2, 10], 20, uncertainty=score, n=2, strategy="uncertainty-distance")
    assert [p.index for p in spread] == [15, 4]
    assert all(p.index not in (2, 10) for p in spread)
    # within the predicted structure's extent (2..12 with the labeled slices) while it has
    # an unlabeled slice: 15 lies beyond it; once the extent is labeled, anywhere
    structure = np.zeros(20, bool)
    structure[4:13] = True
    near = suggest([2, 10], 20, score, structure, n=1, strategy="uncertainty-distance")
    assert [p.index for p in near] == [4]  # 0.8 x 2; unbounded, 15 won (0.5 x 5)
    covered = suggest(list(range(2, 13)), 20, score, structure, strategy="uncertainty-distance")
    assert covered[0].index == 15


def test_never_labeled_slices_and_clear_errors():
    for strategy in STRATEGIES:
        picks = suggest([0, 1, 2], 4, uncertainty=np.ones(4), n=5, strategy=strategy)
        assert [p.index for p in picks] == [3]
    with pytest.raises(SemisegError, match="unknown strategy"):
        suggest([1], 5, strategy="magic")
    with pytest.raises(SemisegError, match="needs the model's uncertainty"):
        suggest([1], 5, strategy="uncertainty")


def test_nothing_beyond_the_labeled_ends_when_they_are_the_structures():
    structure = np.zeros(40, bool)
    structure[3:36] = True  # the prediction spills beyond the labeled ends 8 and 30
    wide = suggest([8, 30], 40, structure=structure, n=2, strategy="strided")
    assert [p.index for p in wide] == [3, 35]
    bounded = suggest([8, 30], 40, structure=structure, n=3, strategy="strided", ends_labeled=True)
    assert [p.index for p in bounded] == [19, 13, 24]
    # the whole range labeled: nothing left to suggest (not the slices beyond the ends)
    assert suggest(list(range(8, 31)), 40, n=2, strategy="strided", ends_labeled=True) == []
    score = np.zeros(40)
    score[[2, 20, 37]] = [0.9, 0.3, 0.8]
    for strategy in ("uncertainty", "uncertainty-distance"):
        picks = suggest([8, 30], 40, score, n=1, strategy=strategy, ends_labeled=True)
        assert [p.index for p in picks] == [20], strategy
        assert suggest([8, 30], 40, score, n=1, strategy=strategy)[0].index in (2, 37)


def test_a_long_ranking_equals_one_pick_at_a_time():
    """The whole ranking of a 300-slice volume (the dock asks for it) equals picking one
    slice at a time and counting it as labeled, for every strategy; the distance is kept
    up to date rather than recomputed from every labeled slice at each pick."""
    rng = np.random.default_rng(0)
    n = 300
    uncertainty = rng.random(n)
    structure = np.zeros(n, bool)
    structure[40:260] = True
    for strategy in STRATEGIES:
        ranking = suggest([50, 120, 200], n, uncertainty, structure, n=n, strategy=strategy)
        done, one_by_one = [50, 120, 200], []
        while True:
            pick = suggest(done, n, uncertainty, structure, n=1, strategy=strategy)
            if not pick:
                break
            one_by_one.append(pick[0].index)
            done = done + [pick[0].index]
        # the same while the predicted extent (40-259) has unlabeled slices; beyond it a
        # pick made one at a time widens the extent the next call spreads over
        inside = 220 - 3
        assert [p.index for p in ranking][:inside] == one_by_one[:inside], strategy
        assert all(40 <= s < 260 for s in one_by_one[:inside]) or strategy == "uncertainty"
        assert len(ranking) == len({p.index for p in ranking}) == n - 3, strategy
        assert len(one_by_one) == len(set(one_by_one)) == n - 3, strategy
    # uncertainty x distance by hand for the first pick: within the extent, the largest
    dist = np.min(np.abs(np.arange(n)[:, None] - np.array([50, 120, 200])[None]), axis=1)
    score = np.where(structure, uncertainty * dist, -np.inf)
    first = suggest([50, 120, 200], n, uncertainty, structure, n=1, strategy="uncertainty-distance")
    assert first[0].index == int(np.argmax(score))


def test_strided_then_uncertainty_distance_switches_at_the_labeled_count():
    """Evenly spaced picks while fewer than STRIDED_UNTIL slices are labeled (the picks so
    far count), then uncertainty x distance, each pick saying which one chose it."""
    from src_models.suggest import STRIDED_UNTIL

    rng = np.random.default_rng(1)
    n = 60
    uncertainty = rng.random(n)
    structure = np.zeros(n, bool)
    structure[10:50] = True
    labeled = [12, 30]
    hybrid = suggest(labeled, n, uncertainty, structure, n=6, strategy=HYBRID)
    n_strided = STRIDED_UNTIL - len(labeled)
    strided = suggest(labeled, n, uncertainty, structure, n=n_strided, strategy="strided")
    assert [p.index for p in hybrid[:n_strided]] == [p.index for p in strided]
    assert [p.by for p in hybrid] == ["strided"] * n_strided + ["uncertainty-distance"] * (
        6 - n_strided
    )
    after = labeled + [p.index for p in strided]
    rest = suggest(
        after, n, uncertainty, structure, n=6 - n_strided, strategy="uncertainty-distance"
    )
    assert [p.index for p in hybrid[n_strided:]] == [p.index for p in rest]
    assert hybrid[n_strided].why == rest[0].why and "slices from the nearest" in rest[0].why
    # with enough labeled slices it is uncertainty-distance from the first pick
    many = [12, 20, 30, 40, 49]
    assert [(p.index, p.by) for p in suggest(many, n, uncertainty, structure, 3, HYBRID)] == [
        (p.index, "uncertainty-distance")
        for p in suggest(many, n, uncertainty, structure, 3, "uncertainty-distance")
    ]
    with pytest.raises(SemisegError, match="needs the model's uncertainty"):
        suggest(labeled, n, structure=structure, strategy=HYBRID)
