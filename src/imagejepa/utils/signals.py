"""The signals that mean "stop": SIGTERM (cluster pre-emption, ``scancel``, Kubernetes), SIGINT
(Ctrl-C) and SIGUSR1 (SLURM's early warning with ``--signal=USR1@120``)."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def ignore_stop_signals_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a job-wide SIGTERM or Ctrl-C must not kill the workers
    mid-step. They exit when the main process shuts the loader down, which
    :class:`~imagejepa.data.TrainLoader` always does, or within seconds of its death."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
