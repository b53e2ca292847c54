"""Learning rate, weight decay and EMA momentum as pure functions of the global step.

Because nothing is stateful, a resumed run needs only the step number, and for a
time-budgeted run the fits of its length that its config records (see :mod:`.budget`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .budget import fitted_progress


def _span(length: float) -> float:
    return length if length > 0 else 1


def warmup_cosine(step: float, warmup_steps: float, total_steps: float,
                  start: float, peak: float, final: float) -> float:
    """Linear ``start -> peak`` over ``warmup_steps``, then cosine ``peak -> final`` at ``total_steps``.

    Steps may be fractions: ``warmup_cosine(u, w, 1.0, ...)`` is the schedule in progress units.
    """
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / _span(total_steps - warmup_steps))
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_increase(step: float, total_steps: float, start: float, final: float) -> float:
    """Cosine ``start -> final`` over ``total_steps`` (the weight-decay schedule)."""
    progress = min(1.0, step / _span(total_steps))
    return final + (start - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear(step: float, total_steps: float, start: float, final: float) -> float:
    """Linear ``start -> final`` over ``total_steps`` (the EMA momentum schedule)."""
    progress = min(1.0, step / _span(total_steps))
    return start + (final - start) * progress


def schedule_steps(optim, steps_per_epoch: int) -> int:
    """The schedules' length in optimiser steps: ``optim.total_steps`` when set, else
    ``optim.epochs`` x steps per epoch (for a time-budgeted run: the most it may get)."""
    if optim.total_steps is not None:
        return optim.total_steps
    return int(optim.epochs * steps_per_epoch)


@dataclass(frozen=True)
class Schedules:
    """All three schedules of a run; ``at(step) -> (lr, weight_decay, ema_momentum)``.

    ``fits`` (time-budgeted runs): the schedules are functions of the progress along these
    fits of the run's length (:func:`~imagejepa.train.budget.fitted_progress`), with warm-up over
    ``warmup_fraction`` of it; ``total_steps`` is then the last fit's end.
    """

    total_steps: int
    warmup_steps: int
    start_lr: float
    lr: float
    final_lr: float
    weight_decay: float
    final_weight_decay: float
    ema_start: float
    ema_end: float
    fits: tuple[tuple[int, int], ...] = ()
    warmup_fraction: float = 0.0
    stretch: float = 1.0  # optim.ipe_scale: the schedules span this multiple of the run

    @classmethod
    def from_config(cls, optim, steps_per_epoch: int, fits=()) -> Schedules:
        """The schedules of ``optim`` (an :class:`~imagejepa.config.OptimConfig`); with
        ``optim.total_steps`` or ``fits``, warm-up keeps its fraction ``warmup_epochs / epochs``."""
        fits = tuple((int(start), int(total)) for start, total in fits)
        if fits:
            total, warmup = fits[-1][1], 0
        elif optim.total_steps is None:
            total = int(optim.ipe_scale * optim.epochs * steps_per_epoch)
            warmup = int(optim.warmup_epochs * steps_per_epoch)
        else:
            total = int(optim.ipe_scale * optim.total_steps)
            warmup = round(optim.total_steps * optim.warmup_epochs / optim.epochs)
        return cls(
            total_steps=total,
            warmup_steps=warmup,
            start_lr=optim.start_lr, lr=optim.lr, final_lr=optim.final_lr,
            weight_decay=optim.weight_decay, final_weight_decay=optim.final_weight_decay,
            ema_start=optim.ema[0], ema_end=optim.ema[1],
            fits=fits, warmup_fraction=optim.warmup_epochs / optim.epochs, stretch=optim.ipe_scale,
        )

    def warmup_progress(self, step: int) -> float:
        """How far the learning-rate warm-up is at ``step``: 0 at the start, 1 once it is over."""
        if self.fits:
            t, warmup = fitted_progress(step, self.fits) / self.stretch, self.warmup_fraction / self.stretch
        else:
            t, warmup = step, self.warmup_steps
        return 1.0 if warmup <= 0 else min(1.0, t / warmup)

    def at(self, step: int) -> tuple[float, float, float]:
        if self.fits:  # in progress units: warm-up over warmup_fraction, the end at 1
            t, total = fitted_progress(step, self.fits) / self.stretch, 1.0
            warmup = self.warmup_fraction / self.stretch
        else:
            t, warmup, total = step, self.warmup_steps, self.total_steps
        lr = warmup_cosine(t, warmup, total, self.start_lr, self.lr, self.final_lr)
        wd = cosine_increase(t, total, self.weight_decay, self.final_weight_decay)
        ema = linear(t, total, self.ema_start, self.ema_end)
        return lr, wd, ema
