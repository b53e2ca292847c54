"""Pre-emption: stop signals become "finish this step, checkpoint, exit with code 75".

Clusters stop jobs with SIGTERM (SLURM pre-emption, ``scancel``, Kubernetes), people with
Ctrl-C (SIGINT), and SLURM warns ahead of time with the signal named in
``--signal=USR1@120`` (SIGUSR1 here). While :class:`StopSignals` is active the first of
these only sets a flag; the trainer checks it after each step. A second SIGINT interrupts
at once (Ctrl-C twice); further SIGTERM/SIGUSR1 are ignored while the checkpoint is written.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from ..errors import ImageJepaError
from ..utils.signals import STOP_SIGNALS

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: "try again later", i.e. resume with --resume


class Preempted(ImageJepaError):
    """Training stopped on a signal after writing a checkpoint; resuming continues exactly."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path):
        super().__init__(
            f"{signal_name} received: stopped after step {step} and saved {checkpoint}; "
            "continue with --resume"
        )
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


class StopSignals:
    """``with StopSignals() as stop: ... if stop.received: ...`` (name of the first signal)."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = signals
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        # Handlers can only be installed from the main thread; elsewhere signals keep
        # their default effect.
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()
