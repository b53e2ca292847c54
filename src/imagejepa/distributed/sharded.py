"""Checkpoints of a sharded model (FSDP2, HSDP): each rank writes and reads its own shards
with torch.distributed.checkpoint (:func:`save_shards`, :func:`load_shards`, resharding to
any number of processes); and a single-folder checkpoint (the whole model, the optimiser
state numbered as one process numbers it) spread into shards on resume."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

SPREAD = StateDictOptions(full_state_dict=True)


def load_full_model_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    set_model_state_dict(model, tensors, options=SPREAD)


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load a state saved in the numbered layout into a sharded optimiser."""
    names = get_optimizer_state_dict(model, optimizer, options=SPREAD)["param_groups"]
    order = [name for group in names for name in group["params"]]
    groups = [{**group, "params": [order[i] for i in group["params"]]} for group in saved["param_groups"]]
    state = {order[i]: value for i, value in saved["state"].items()}
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=SPREAD)


# -- sharded checkpoints: each rank writes and reads its own shards -----------------------------
def save_shards(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path, background: bool = False):
    """Write ``model``'s weights and ``optimizer``'s state to the new folder ``folder`` with
    torch.distributed.checkpoint, each rank its own shards; a collective. ``background``: the
    state is copied to the CPU, and the files are written by a thread while training goes
    on (its collectives in a group of their own); returns the future of that write."""
    import torch.distributed.checkpoint as dcp

    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    writer = dcp.FileSystemWriter(str(folder), sync_files=True, thread_count=1)
    if background:
        return dcp.async_save(state, storage_writer=writer, process_group=checkpoint_group())
    dcp.save(state, storage_writer=writer)
    return None


def written_shards(folder: Path) -> list[Path]:
    """The files of ``folder`` (written by :func:`save_shards`) this rank wrote: its shards,
    and on rank 0 the ``.metadata``."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    return sorted(folder.glob(f"__{rank}_*.distcp")) + ([folder / ".metadata"] if rank == 0 else [])


_CHECKPOINT_GROUP = None


def checkpoint_group():
    """A gloo group of every rank for the collectives of checkpoints written in the
    background, apart from the training's (created at the first background save, which every
    rank reaches at the same step)."""
    import torch.distributed as dist

    global _CHECKPOINT_GROUP
    if _CHECKPOINT_GROUP is None:
        _CHECKPOINT_GROUP = dist.new_group(backend="gloo")
    return _CHECKPOINT_GROUP


def load_shards(model: nn.Module, optimizer: torch.optim.Optimizer | None, folder: Path) -> None:
    """Read from a folder :func:`save_shards` wrote the shards this process holds now, however
    many processes wrote it and however they sharded it (resharding: with FSDP2 or HSDP on any
    number of ranks, DDP, or one process without a group)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    alone = not dist.is_initialized()
    with warnings.catch_warnings():  # alone: "assuming the intent is to load in a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(folder), no_dist=alone)
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])
