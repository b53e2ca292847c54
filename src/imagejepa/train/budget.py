"""A time budget for the whole schedule: fit its length to the measured speed, and keep fitting.

With ``train.budget_minutes`` the schedules (warm-up, cosine decay, EMA and weight-decay
ramps) are functions of the run's *progress* ``u`` in [0, 1] instead of its step. Progress
runs along a list of fits ``[(from_step, total_steps), ...]``: from ``from_step`` on it grows
linearly so as to reach 1 at ``total_steps``, continuing from wherever the previous fit had
brought it. The run starts on ``(0, optim.epochs' worth)``; after :data:`FIRST_FIT_STEP`
steps (the first :data:`WARMUP_STEPS` of a process are not timed: allocation and caches make
them slow) the length is fitted to the speed measured so far, and refitted at each tenth of
the budget up to nine tenths to the speed of the last stretch, so that a machine that slows
down (a laptop leaving turbo, a shared host) still ends its schedule inside the budget.

The fits made so far are training state: every checkpoint keeps them (``schedule_fits`` in
its meta.json), so a resumed run continues the same schedule exactly; only the fits still
ahead depend on the machine's speed.
"""

from __future__ import annotations

import math

FIRST_FIT_STEP = 30  # the first fit, once the steps after the untimed ones have been timed
WARMUP_STEPS = 3  # first steps of a process, not timed
MIN_TIMED_STEPS = 5  # a fit is made from at least this many timed steps
REFITS = 9  # refit at 1/10, 2/10, ..., 9/10 of the budget
MARGIN = 0.03  # of the remaining time, left for periodic checkpoints and drift in speed
MIN_CHANGE = 0.005  # a refit that moves the end by less than this fraction is not made


def fitted_progress(step: float, fits) -> float:
    """Progress ``u`` in [0, 1] of ``step`` along ``fits`` ``[(from_step, total_steps), ...]``
    (``from_step`` increasing, each ``total_steps > from_step``): linear within each fit,
    continuous where one fit hands over to the next, 1 from the last ``total_steps`` on."""
    u = 0.0
    for i, (start, total) in enumerate(fits):
        end = fits[i + 1][0] if i + 1 < len(fits) else math.inf
        rate = (1.0 - u) / (total - start)
        if step < end:
            return min(1.0, u + (step - start) * rate)
        u = min(1.0, u + (end - start) * rate)
    return u


def fitted_length(step: int, steps_per_s: float, seconds_left: float, max_steps: int) -> int:
    """Where to end a schedule that is at ``step``: as many steps as fit in ``seconds_left``
    at ``steps_per_s`` (less :data:`MARGIN`), at most ``max_steps``, at least one more step."""
    fits = math.floor(steps_per_s * max(seconds_left, 0.0) * (1 - MARGIN))
    return max(step + 1, min(max_steps, step + fits))


class BudgetClock:
    """Decides the fits of one process. ``observe(step, seconds)``, called when ``step`` steps
    are done and the run has trained ``seconds`` in all (earlier processes included), returns
    the new list of fits when it changed, else ``None``."""

    def __init__(self, minutes: float, max_steps: int, start_step: int, fits, seconds_before: float = 0.0):
        self.budget_s, self.max_steps = 60.0 * minutes, max_steps
        self.fits = [tuple(f) for f in fits] or [(0, max_steps)]
        self.first_timed = start_step + WARMUP_STEPS
        self.mark: tuple[int, float] | None = None  # (step, seconds) the speed is measured from
        tenth = self.budget_s / (REFITS + 1)
        self.refit_at = [k * tenth for k in range(1, REFITS + 1) if k * tenth > seconds_before]
        self.steps_per_s: float | None = None

    def observe(self, step: int, seconds: float) -> list[tuple[int, int]] | None:
        if step == self.first_timed:
            self.mark = (step, seconds)
        if self.mark is None or step < self.mark[0] + MIN_TIMED_STEPS or step <= self.fits[-1][0]:
            return None  # too little timed yet, or a fit recorded ahead of a resumed process
        first = len(self.fits) == 1 and step >= FIRST_FIT_STEP
        due = bool(self.refit_at) and seconds >= self.refit_at[0]
        if not (first or due):
            return None
        while self.refit_at and seconds >= self.refit_at[0]:
            self.refit_at.pop(0)
        self.steps_per_s = (step - self.mark[0]) / max(seconds - self.mark[1], 1e-9)
        self.mark = (step, seconds)
        total = fitted_length(step, self.steps_per_s, self.budget_s - seconds, self.max_steps)
        current = self.fits[-1][1]
        if not first and abs(total - current) <= MIN_CHANGE * current:
            return None
        self.fits.append((step, total))
        return list(self.fits)


def budget_fits(meta: dict, max_steps: int) -> list[tuple[int, int]]:
    """The fits a checkpoint's ``meta`` holds: ``schedule_fits`` (runs written before the fits
    were training state kept them in the config, ``optim.schedule_fits``); a checkpoint saved
    before the first fit holds the starting one, ``[(0, max_steps)]``."""
    fits = meta.get("schedule_fits") or meta.get("config", {}).get("optim", {}).get("schedule_fits")
    return [(int(start), int(total)) for start, total in fits] if fits else [(0, max_steps)]
