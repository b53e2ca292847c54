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
    """Training stopped on a signal, after writing a checkpoint when there was anything new
    to save (``checkpoint``; ``None`` when the signal came before this process's first step).
    Either way the exit code is 75 and ``--resume`` continues exactly."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path | None):
        if checkpoint is not None:
            what = f"stopped after step {step} and saved {checkpoint}; continue with --resume"
        elif step:
            what = f"stopped before training on from step {step}, nothing new to save; continue with --resume"
        else:
            what = "stopped before the first step, nothing to save; start the run again"
        super().__init__(f"{signal_name} received: {what}")
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
        self.release()

    def release(self) -> None:
        """Give the signals back their previous handlers (no longer caught from here on)."""
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()
