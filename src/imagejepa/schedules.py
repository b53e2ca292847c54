"""Learning rate, weight decay and EMA momentum as pure functions of the global step.

Because nothing is stateful, a resumed run needs only the step number (and the schedule's
length, which a time-budgeted run fixes once and writes into its config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def warmup_cosine(step: int, warmup_steps: int, total_steps: int,
                  start: float, peak: float, final: float) -> float:
    """Linear ``start -> peak`` over ``warmup_steps``, then cosine ``peak -> final`` at ``total_steps``."""
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_increase(step: int, total_steps: int, start: float, final: float) -> float:
    """Cosine ``start -> final`` over ``total_steps`` (the weight-decay schedule)."""
    progress = min(1.0, step / max(1, total_steps))
    return final + (start - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear(step: int, total_steps: int, start: float, final: float) -> float:
    """Linear ``start -> final`` over ``total_steps`` (the EMA momentum schedule)."""
    progress = min(1.0, step / max(1, total_steps))
    return start + (final - start) * progress


def schedule_steps(optim, steps_per_epoch: int) -> int:
    """The schedules' length in optimiser steps: ``optim.total_steps`` when set (by hand, or
    fixed by a time budget), else ``optim.epochs`` x steps per epoch."""
    if optim.total_steps is not None:
        return optim.total_steps
    return int(optim.epochs * steps_per_epoch)


@dataclass(frozen=True)
class Schedules:
    """All three schedules of a run; ``at(step) -> (lr, weight_decay, ema_momentum)``.

    ``hold_steps`` (time-budgeted runs) keeps the starting values for that many steps while
    the trainer measures its speed, and runs the schedules over the steps after them.
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
    hold_steps: int = 0

    @classmethod
    def from_config(cls, optim, steps_per_epoch: int, hold_steps: int = 0) -> Schedules:
        """The schedules of ``optim`` (an :class:`~imagejepa.config.OptimConfig`); with
        ``optim.total_steps`` set, warm-up keeps its fraction ``warmup_epochs / epochs``."""
        if optim.total_steps is None:
            total = int(optim.ipe_scale * optim.epochs * steps_per_epoch)
            warmup = int(optim.warmup_epochs * steps_per_epoch)
        else:
            scheduled = optim.total_steps - hold_steps  # the steps after the hold
            total = int(optim.ipe_scale * scheduled) + hold_steps
            warmup = round(scheduled * optim.warmup_epochs / optim.epochs)
        return cls(
            total_steps=total,
            warmup_steps=warmup,
            hold_steps=hold_steps,
            start_lr=optim.start_lr, lr=optim.lr, final_lr=optim.final_lr,
            weight_decay=optim.weight_decay, final_weight_decay=optim.final_weight_decay,
            ema_start=optim.ema[0], ema_end=optim.ema[1],
        )

    def at(self, step: int) -> tuple[float, float, float]:
        step, total = max(0, step - self.hold_steps), self.total_steps - self.hold_steps
        lr = warmup_cosine(step, self.warmup_steps, total, self.start_lr, self.lr, self.final_lr)
        wd = cosine_increase(step, total, self.weight_decay, self.final_weight_decay)
        ema = linear(step, total, self.ema_start, self.ema_end)
        return lr, wd, ema
