"""Which method the default (``auto``) trains: the one measured best at the run's budget.

Light (no torch): the CLI's parser reads :data:`AUTO_HELP` before anything heavy loads.
"""

from __future__ import annotations

#: the default method: the one measured best at the run's budget (:func:`method_for_budget`)
AUTO = "auto"
#: below this many minutes (and with an iteration budget) the default trains supervised with
#: the propagation prior; from it, SDCL when the labeled slices include the structure's first
#: and last (``ends_labeled``). Measured on a 2-core CPU, 4 labeled slices, 5 + 5 volumes
#: (docs/benchmarks.md, "annotation effort"): the supervised recipe has fitted the labeled
#: slices and the propagation's sure voxels by ~2 minutes and gains nothing after, while
#: SDCL's semi-supervised phase keeps learning between labeled ends (at 5 minutes +1.4
#: points on the left atrium, +2.2 on the hippocampus, better on 9 of 10 volumes); with the
#: slices strictly inside it is level or below (-0.3 / +0.4 points; 2 of 5 left-atrium
#: volumes reach the goal against 4 of 5), so there the default stays supervised.
SEMI_SUPERVISED_FROM_MINUTES = 5.0
SHORT_BUDGET_METHOD = "supervised"
LONG_BUDGET_METHOD = "sdcl"


def method_for_budget(minutes: float | None, ends_labeled: bool = False) -> str:
    """The method ``auto`` trains for a budget of ``minutes`` (None: an iteration budget),
    ``ends_labeled``: the outer labeled slices are the structure's first and last."""
    if ends_labeled and minutes is not None and minutes >= SEMI_SUPERVISED_FROM_MINUTES:
        return LONG_BUDGET_METHOD
    return SHORT_BUDGET_METHOD


def resolve_method(method: str, minutes: float | None, ends_labeled: bool = False) -> str:
    """``method``, or the one ``auto`` picks for ``minutes`` and ``ends_labeled``."""
    return method_for_budget(minutes, ends_labeled) if method == AUTO else method


#: what ``auto`` means, for the CLI's and the dock's help
AUTO_HELP = (
    f"auto (the default): {SHORT_BUDGET_METHOD} with the propagation prior, and from "
    f"{SEMI_SUPERVISED_FROM_MINUTES:g} minutes {LONG_BUDGET_METHOD} when the labeled slices "
    "include the structure's first and last (--ends-labeled), where it measured better "
    "(docs/benchmarks.md)"
)
