"""The collectives that keep ranks in agreement. Each is one small ``all_reduce`` (on the CPU
through gloo, except the step's metrics, summed where they are: on a GPU through NCCL), and
returns its input unchanged when only one process trains.

Sums of exact values (0/1 flags, one rank's number plus zeros from the others) come out
bit-identical on every rank, so decisions taken from them (stop now, checkpoint now, refit
the schedule to the budget) are the same everywhere without a broadcast."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .processes import Processes


def sum_over_ranks(processes: Processes, values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the ranks, on their device (NCCL on a GPU: nothing is read back)."""
    if not processes.started:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


@dataclass(frozen=True)
class Agreement:
    """What every rank reads after a step: whether to stop, rank 0's clock, unreadable files."""

    stop: bool  # a stop signal arrived on some rank
    main_seconds: float  # rank 0's clock: time limits, budgets and checkpoint intervals use it
    skipped_images: int  # unreadable files replaced in this step's global batch
    new_bad_files: int = 0  # files found unreadable for the first time (by some rank) in this step


def agree_after_step(processes: Processes, stop_here: bool, seconds: float,
                     skipped_images: int = 0, new_bad_files: int = 0) -> Agreement:
    """One all_reduce of this rank's stop flag, clock (rank 0's only) and unreadable-file counts."""
    if not processes.started:
        return Agreement(stop_here, seconds, skipped_images, new_bad_files)
    mine = [float(stop_here), seconds if processes.is_main else 0.0, float(skipped_images),
            float(new_bad_files)]
    stops, main_seconds, skipped, new_bad = sum_over_ranks(
        processes, torch.tensor(mine, dtype=torch.float64)).tolist()
    return Agreement(stops > 0, main_seconds, int(skipped), int(new_bad))


def text_from_main(processes: Processes, text: str) -> str:
    """Rank 0's ``text`` on every rank (e.g. a run folder named after rank 0's clock)."""
    if not processes.started:
        return text
    data = torch.zeros(1024, dtype=torch.uint8)
    raw = text.encode() if processes.is_main else b""
    if len(raw) > len(data):
        raise ValueError(f"text_from_main: {len(raw)} bytes, more than {len(data)}")
    if raw:
        data[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    dist.broadcast(data, src=0)
    return bytes(data.tolist()).rstrip(b"\0").decode()


def merged_on_main(processes: Processes, mine: dict, group=None) -> dict:
    """Every rank's dict ``mine`` (small, picklable) merged, on rank 0 (on the others: ``{}``);
    ``group``: another group of every rank than the default one."""
    if not processes.started:
        return dict(mine)
    parts = [None] * processes.world_size if processes.is_main else None
    dist.gather_object(mine, parts, dst=0, group=group)
    return {k: v for part in parts for k, v in part.items()} if processes.is_main else {}


def any_rank(processes: Processes, flag: bool) -> bool:
    """Whether ``flag`` is true on some rank (every rank gets the same answer)."""
    if not processes.started:
        return flag
    return bool(sum_over_ranks(processes, torch.tensor([float(flag)])).item() > 0)


def barrier(processes: Processes) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others will read)."""
    if processes.started:
        dist.barrier()
