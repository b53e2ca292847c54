"""The loop's periodic work, each piece saying when it is due (the loop in trainer.py asks).

- :class:`MetricReads`: the steps whose metrics are still on the device, read every
  ``train.log_every`` steps (and before a checkpoint) with one wait for the device;
- :class:`CheckpointTimer`: a checkpoint every N steps and/or every M minutes of training;
- :class:`TimeLimit`: ``train.max_minutes``;
- :class:`BadFiles`: unreadable images, each named once, counted over ranks against
  ``data.max_bad_fraction``;
- :class:`Throughput`: images per second between two reads, pauses left out.

The budget's refits say when they are due themselves (:class:`~imagejepa.train.budget.BudgetClock`),
the monitor too (:class:`~imagejepa.train.watch.RunWatch`).
"""

from __future__ import annotations

import contextlib
import time

from ..data import DataError
from .metrics_log import MetricsLog
from .step import StepResult, TrainStep


class Throughput:
    """Images per second over the stretch between two reads of the device's metrics.

    Timing one step on the host clock is right only where the host waits for each step; on
    a GPU the host runs ahead, and only a read (which waits for the device) ends a stretch
    honestly. Pauses that are not training (online kNN, pictures, checkpoints) are left out."""

    def __init__(self):
        self.start, self.images, self.paused = time.perf_counter(), 0, 0.0

    def add(self, images: int) -> None:
        self.images += images

    @contextlib.contextmanager
    def pause(self):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - began

    def lap(self) -> float:
        """The stretch's images per second; a new stretch starts."""
        now = time.perf_counter()
        rate = self.images / max(now - self.start - self.paused, 1e-9)
        self.start, self.images, self.paused = now, 0, 0.0
        return rate


class MetricReads:
    """``add(result)`` each step; ``due(step, ending)``; ``read()`` the pending steps (one
    wait for the device), log and watch them; ``latest`` is the last row read.

    A read makes the host wait for the device, which would stall a GPU's queue if done each
    step: so every ``every`` steps, at the end, and before a checkpoint (whose metrics must
    be on disk with it)."""

    def __init__(self, stepper: TrainStep, metrics: MetricsLog, watch, throughput: Throughput,
                 warn, every: int):
        self.stepper, self.metrics, self.watch, self.warn = stepper, metrics, watch, warn
        self.throughput, self.every = throughput, every
        self.pending: list[StepResult] = []
        self.latest: dict = {}

    def add(self, result: StepResult) -> None:
        self.pending.append(result)

    def due(self, step: int, ending: bool) -> bool:
        """Whether ``step`` (the steps done) is one to log at."""
        return step % self.every == 0 or ending

    def read(self) -> dict:
        """Read, write and watch the pending rows (collapse warnings; a non-finite step warns
        or raises :class:`~imagejepa.errors.NonFiniteError`); returns the latest row."""
        rows = self.stepper.read(self.pending)
        self.pending.clear()
        rate = self.throughput.lap()  # the read waited for the device: the stretch is done
        for row in rows:
            row["img_per_s"] = rate
            self.metrics.write(row)
            for warning in self.watch.observe(row):
                self.warn(warning)
        if rows:
            self.latest = rows[-1]
        return self.latest

    def flush(self) -> None:
        """The rows read so far onto disk, and to the trackers."""
        self.metrics.flush()
        self.watch.trackers.flush()


class CheckpointTimer:
    """``due(step, seconds)``: a checkpoint every ``every_steps`` steps and/or every
    ``every_minutes`` of training (``None``: never by that measure); ``saved(seconds)``."""

    def __init__(self, every_steps: int | None, every_minutes: float | None):
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self.last_seconds = 0.0

    def due(self, step: int, seconds: float) -> bool:
        by_steps = bool(self.every_steps) and step % self.every_steps == 0
        by_minutes = bool(self.every_minutes) and seconds - self.last_seconds > 60 * self.every_minutes
        return by_steps or by_minutes

    def saved(self, seconds: float) -> None:
        self.last_seconds = seconds


class TimeLimit:
    """``reached(seconds)``: more than ``max_minutes`` of training (never with ``None``)."""

    def __init__(self, max_minutes: float | None):
        self.max_minutes = max_minutes

    def reached(self, seconds: float) -> bool:
        return self.max_minutes is not None and seconds > 60 * self.max_minutes


class BadFiles:
    """``note(skipped) -> new``: warn once per unreadable file this rank met; ``check(new)``
    with the count agreed over ranks: every rank raises at the same step when more than
    ``max_fraction`` of the ``total`` files were unreadable."""

    def __init__(self, total: int, max_fraction: float, warn):
        self.total, self.max_fraction, self.warn = total, max_fraction, warn
        self.named: dict[str, str] = {}  # path -> reason, this rank's
        self.count = 0  # over every rank

    def note(self, skipped: list[tuple[str, str]]) -> int:
        new = 0
        for path, reason in skipped:
            if path not in self.named:
                self.named[path] = reason
                new += 1
                self.warn(f"imagejepa: warning: skipped unreadable image {path} ({reason})")
        return new

    def check(self, new_over_ranks: int) -> None:
        self.count += new_over_ranks
        if self.count <= self.max_fraction * self.total:
            return
        last = list(self.named.items())[-1] if self.named else None
        mine = f"; the last here: {last[0]} ({last[1]})" if last else ""
        error = DataError(
            f"{self.count} of the {self.total} image files are unreadable, more than "
            f"data.max_bad_fraction={self.max_fraction}{mine}. Fix or remove them, or raise "
            "data.max_bad_fraction"
        )
        error.on_every_rank = True
        raise error
