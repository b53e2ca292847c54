"""A rank that fails stops every rank within seconds.

A rank that raises alone (a data error, a failed save, an exception in its step) leaves the
others blocked in their next collective: gloo notices a peer's closed connection, NCCL
only at the process group's timeout, and under ``srun`` nothing stops the others. So the
failing rank posts its cause in the process group's key-value store before it leaves
(:func:`post_failure`), and every rank watches the store from a daemon thread
(:class:`FailureWatch`): seeing another rank's failure, it prints one line naming that rank
and its cause and exits 1 at once, wherever it waits. The failing rank stays until each
of the others has read its cause (a few seconds at most): the store may live in its process
(rank 0 under srun), and a rank that found it gone could only say it lost contact. Nothing
is left half-written by these exits: checkpoints are written under a temporary name and
renamed whole.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from .processes import Processes

KEY = "imagejepa/failed"
SEEN = "imagejepa/failure-seen-by-rank-"  # + rank: that rank has read the posted failure
FAILURE_EXIT = 1
POLL_SECONDS = 0.5
LINGER_SECONDS = 5.0  # the most a failed rank waits for the others to read its cause


def post_failure(processes: Processes, cause: str) -> None:
    """Tell the other ranks this rank failed (the first failure posted stands)."""
    if processes.store is None:
        return
    text = f"rank {processes.rank}: {cause}".splitlines()[0][:500]
    try:
        processes.store.compare_set(KEY, "", text)
        others = [f"{SEEN}{rank}" for rank in range(processes.world_size) if rank != processes.rank]
        deadline = time.monotonic() + LINGER_SECONDS
        while others and not processes.store.check(others) and time.monotonic() < deadline:
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - the store went with another rank: the error is raised anyway
        pass


def posted_failure(processes: Processes) -> str | None:
    """The failure another rank posted (``"rank R: cause"``), or ``None``."""
    if processes.store is None:
        return None
    try:
        if not processes.store.check([KEY]):
            return None
        text = processes.store.get(KEY).decode()
        if not text or text.startswith(f"rank {processes.rank}:"):
            return None
        processes.store.set(f"{SEEN}{processes.rank}", "1")  # the failed rank may leave now
    except Exception:  # noqa: BLE001 - the store is gone with its host: nothing to read
        return None
    return text


class FailureWatch:
    """``with FailureWatch(processes, command): ...``: while inside, another rank's posted
    failure ends this process with exit 1 and the line ``imagejepa COMMAND: error: rank R
    failed (CAUSE); rank N stopped with it``."""

    def __init__(self, processes: Processes, command: str = "pretrain", poll_seconds: float = POLL_SECONDS):
        self.processes, self.command, self.poll_seconds = processes, command, poll_seconds
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FailureWatch:
        if self.processes.store is not None:
            self._thread = threading.Thread(target=self._watch, name="imagejepa-failure-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(self.poll_seconds):
            failure = posted_failure(self.processes)
            if failure is not None and not self._done.is_set():
                rank, _, cause = failure.partition(": ")
                sys.stdout.flush()
                print(f"\nimagejepa {self.command}: error: {rank} failed ({cause}); rank "
                      f"{self.processes.rank} stopped with it", file=sys.stderr, flush=True)
                os._exit(FAILURE_EXIT)  # the others cannot finish a collective without it
