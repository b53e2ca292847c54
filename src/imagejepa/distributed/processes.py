"""Which process this is, from the environment torchrun (or ``srun`` with the same variables)
sets: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, and ``MASTER_ADDR``/``MASTER_PORT`` for the
rendezvous of ``init_process_group``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of one run."""

    rank: int = 0
    local_rank: int = 0  # its index on this machine: which GPU it takes
    world_size: int = 1
    started: bool = False  # a torch.distributed process group is running
    # The group's key-value store (ranks post a failure there: failures.py); None for one process.
    store: dist.Store | None = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run folder (metrics, config, checkpoints) and the log."""
        return self.rank == 0


SINGLE = Processes()
# How long a rank waits for the others (to meet, in a collective) until the first steps are
# done: nodes of a job may start minutes apart, and the first step may compile. After them
# the trainer lowers it to dist.timeout_minutes (set_collective_timeout).
TIMEOUT = timedelta(minutes=30)


def _env_int(name: str, default: int | None = None, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ConfigError(f"environment: RANK is set but {name} is not; launch with torchrun, "
                              "or set RANK, LOCAL_RANK and WORLD_SIZE together")
        return default
    if not raw.isdigit() or int(raw) < minimum:
        raise ConfigError(f"environment {name}={raw!r} is not an integer >= {minimum}")
    return int(raw)


def processes_from_env() -> Processes:
    """Read the launcher's variables; one process (rank 0 of 1) when ``RANK`` is not set."""
    if "RANK" not in os.environ:
        return SINGLE
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE", minimum=1)
    local = _env_int("LOCAL_RANK", default=rank)
    if rank >= world:
        raise ConfigError(f"environment RANK={rank} is not below WORLD_SIZE={world}")
    return Processes(rank, local, world)


def start_processes(processes: Processes, device: torch.device) -> Processes:
    """Join the process group the launcher described (``processes``, from
    :func:`processes_from_env`); a no-op for one process not under torchrun.

    CPU tensors go through gloo and CUDA tensors through NCCL, so the trainer's small control
    tensors stay on the CPU whatever the device. Under torchrun a single process starts a group
    too, so that DDP is exercised with one GPU exactly as with many."""
    if processes is SINGLE:
        return SINGLE
    if dist.is_initialized():  # started earlier in this process
        return replace(processes, started=True, store=dist.distributed_c10d._get_default_store())
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ConfigError(f"environment: RANK is set but {name} is not; launch with torchrun, or set "
                              "MASTER_ADDR and MASTER_PORT to rank 0's host and a free port")
    backend = "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    store = _store(processes)
    dist.init_process_group(backend=backend, store=store, rank=processes.rank,
                            world_size=processes.world_size, timeout=TIMEOUT)
    global _joined
    _joined = True
    return replace(processes, started=True, store=store)


def set_collective_timeout(processes: Processes, minutes: float) -> None:
    """From now on a collective that waits ``minutes`` for another rank fails (the first
    steps ran under :data:`TIMEOUT`)."""
    if processes.started:
        set_timeout = getattr(dist, "set_timeout", None) or dist.distributed_c10d._set_pg_timeout
        set_timeout(timedelta(minutes=minutes))


def _store(processes: Processes) -> dist.Store:
    """The key-value store the ranks meet through, with the keys of this attempt only.

    After torchrun restarts a group (``--max-restarts``) the new workers meet in the same
    store as the dead ones: torchrun's agent serves it, and PyTorch does not separate the
    attempts, so a rank could read the address of a dead rank and fail to connect. The
    prefix ``TORCHELASTIC_RESTART_COUNT`` keeps each attempt's keys apart."""
    host, port = os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", minimum=1)
    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, processes.world_size, is_master=processes.is_main and not agent_serves,
                          timeout=TIMEOUT, multi_tenant=True)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"imagejepa/attempt_{attempt}", store)


def lost_contact(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another rank died or vanished
    (gloo: the connection was reset or closed; NCCL: a remote error or a timeout)."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        mark in text for mark in ("/gloo/", "Connection reset by peer", "Connection closed by peer", "NCCL")
    )


def stop_processes(processes: Processes) -> None:
    """Leave the process group (at the end of a run, on errors too)."""
    if processes.started and dist.is_initialized():
        dist.destroy_process_group()


def joined_a_group() -> bool:
    """Whether this process has been in a process group (see :func:`imagejepa.cli.run`)."""
    return _joined


_joined = False
