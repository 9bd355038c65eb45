"""Which method the default (``auto``) trains: the one measured best at the run's budget.

Light (no torch): the CLI's parser reads :data:`AUTO_HELP` before anything heavy loads.
"""

from __future__ import annotations

#: the default method: the one measured best at the run's budget (:func:`method_for_budget`)
AUTO = "auto"
#: below this many minutes (and with an iteration budget) the default trains supervised with
#: the propagation prior; from it, SDCL: on a 2-core CPU the supervised recipe has fitted the
#: labeled slices and the propagation's sure voxels by ~2 minutes and gains nothing after,
#: while SDCL's semi-supervised phase keeps learning (docs/benchmarks.md, "annotation effort")
SEMI_SUPERVISED_FROM_MINUTES = 5.0
SHORT_BUDGET_METHOD = "supervised"
LONG_BUDGET_METHOD = "sdcl"


def method_for_budget(minutes: float | None) -> str:
    """The method ``auto`` trains for a budget of ``minutes`` (None: an iteration budget)."""
    if minutes is not None and minutes >= SEMI_SUPERVISED_FROM_MINUTES:
        return LONG_BUDGET_METHOD
    return SHORT_BUDGET_METHOD


def resolve_method(method: str, minutes: float | None) -> str:
    """``method``, or the one ``auto`` picks for ``minutes``."""
    return method_for_budget(minutes) if method == AUTO else method


#: what ``auto`` means, for the CLI's and the dock's help
AUTO_HELP = (
    f"auto (the default): {SHORT_BUDGET_METHOD} with the propagation prior below "
    f"{SEMI_SUPERVISED_FROM_MINUTES:g} minutes and with an iteration budget, "
    f"{LONG_BUDGET_METHOD} from {SEMI_SUPERVISED_FROM_MINUTES:g} minutes, where it measured "
    "better (docs/benchmarks.md)"
)
