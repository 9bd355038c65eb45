"""An optional early end of the supervised warm-up: when the supervised loss stops falling.

By default the warm-up lasts a fixed share of the budget (``TrainConfig.warmup``, 40 %),
the setting the sparse-slice benchmark measured. The rule here is the alternative the issue
suggested and is opt-in (``warmup_plateau`` > 0, CLI ``--warmup-plateau``); it was not
benchmarked in the session that added it.

The unlabeled terms of every method here are computed from the method's own predictions, so
starting them before the networks have learnt what the labeled slices can teach only adds
cost (each method step costs 2-12 supervised steps) and noise. The warm-up therefore lasts
until the supervised loss stops falling: :class:`LossPlateau` compares the mean loss of the
last window of iterations with the window before it (each a quarter of the iterations so
far, at least ``min_window``) and calls it a plateau when the newer one is less than
``relative`` lower. A share of the budget caps it (``TrainConfig.warmup``), so a long run
always reaches the method's own algorithm. Why one might want it (docs/benchmarks.md):
with the fixed 40 % warm-up, CrossMatch on a left-atrium volume with 3 labeled slices fell
from Dice 0.780 at 2 minutes to 0.756 at 5 (three CPU minutes buy about 60 CrossMatch
steps), while DFCPS and SDCL gained 6-10 points in their own phase.
"""

from __future__ import annotations

import math


class LossPlateau:
    """Detects the plateau of a noisy, falling loss.

    Args:
        relative: the smallest relative improvement between two consecutive windows that
            still counts as learning (0: never a plateau).
        min_iterations: no plateau before this many losses.
        min_window: the smallest window length.
    """

    def __init__(self, relative: float = 0.05, min_iterations: int = 100, min_window: int = 25):
        self.relative = float(relative)
        self.min_iterations = int(min_iterations)
        self.min_window = int(min_window)
        self.losses: list[float] = []

    def update(self, loss: float) -> bool:
        """Add one iteration's loss; True when the loss has stopped falling."""
        if math.isfinite(loss):
            self.losses.append(float(loss))
        n = len(self.losses)
        if self.relative <= 0 or n < max(self.min_iterations, 2 * self.min_window):
            return False
        w = max(self.min_window, n // 4)
        previous = sum(self.losses[-2 * w : -w]) / w
        last = sum(self.losses[-w:]) / w
        return last > (1.0 - self.relative) * previous
