"""A time budget for the whole schedule: measure the speed, then fix the schedule's length.

With ``train.budget_minutes`` the first :data:`HOLD_STEPS` steps run at the schedules'
starting values while the trainer times them (the first :data:`WARMUP_STEPS` of this
process are left out: allocation and caches make them slow). At the end of the hold the
length is fixed so that warm-up, cosine decay, the EMA ramp and the weight-decay ramp all
end inside the budget, and written into the run's config, so ``--resume`` continues the
same schedule. The length depends on the machine's measured speed; everything after it is
a pure function of ``(seed, step)`` again.
"""

from __future__ import annotations

import math

HOLD_STEPS = 30  # steps at the starting values while the speed is measured
WARMUP_STEPS = 3  # first steps of a process, not timed
MARGIN = 0.03  # of the budget, left for periodic checkpoints and drift in speed


def budgeted_length(steps_per_s: float, minutes: float, max_steps: int) -> int:
    """Schedule length for ``minutes`` of training at ``steps_per_s``, at most ``max_steps``
    (``optim.epochs``' worth) and at least one step after the hold."""
    fits = math.floor(steps_per_s * 60 * minutes * (1 - MARGIN))
    return max(HOLD_STEPS + 1, min(max_steps, fits))


class BudgetClock:
    """Times the hold steps of one process; ``finished(step, now)`` returns the schedule's
    length once the hold is over (``None`` before, and after it has been fixed)."""

    def __init__(self, minutes: float, max_steps: int, start_step: int):
        self.minutes, self.max_steps = minutes, max_steps
        # A process resumed late in the hold times what it can (at least its last step).
        self.first_timed = min(start_step + WARMUP_STEPS, HOLD_STEPS - 1)
        self.start: float | None = None
        self.steps_per_s: float | None = None

    def finished(self, step: int, now: float) -> int | None:
        """``step`` steps are done at time ``now`` (seconds, monotonic)."""
        if step == self.first_timed:
            self.start = now
        if step != HOLD_STEPS or self.start is None:
            return None
        self.steps_per_s = (step - self.first_timed) / max(now - self.start, 1e-9)
        return budgeted_length(self.steps_per_s, self.minutes, self.max_steps)
