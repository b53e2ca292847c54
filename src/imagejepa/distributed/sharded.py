"""Whole tensors from sharded ones and back, for checkpoints in the single-folder format.

A checkpoint always holds the whole model and the optimiser state in the layout one process
uses (parameters numbered in the optimiser's order), whatever the strategy that wrote it, so
``eval``, ``embed`` and ``convert`` read it, and a run moves between one process, DDP and
FSDP2 on resume. With FSDP2 every rank takes part in gathering; rank 0 receives the tensors
(on the CPU) and writes them. Loading: each rank reads the file and keeps its own shards."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
SPREAD = StateDictOptions(full_state_dict=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: whole tensor}`` on rank 0 (empty elsewhere); a collective: every rank calls it."""
    return get_model_state_dict(model, options=GATHER)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser state as ``optimizer.state_dict()`` of one process gives it (parameters
    numbered in order), on rank 0; a collective."""
    by_name = get_optimizer_state_dict(model, optimizer, options=GATHER)
    if not by_name:
        return {}
    number, state, groups = {}, {}, []
    for group in by_name["param_groups"]:
        ids = []
        for name in group["params"]:
            number[name] = len(number)
            ids.append(number[name])
        groups.append({**group, "params": ids})
    for name, value in by_name["state"].items():
        state[number[name]] = value
    return {"state": state, "param_groups": groups}


def load_full_model_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    set_model_state_dict(model, tensors, options=SPREAD)


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load a state saved in the numbered layout into a sharded optimiser."""
    names = get_optimizer_state_dict(model, optimizer, options=SPREAD)["param_groups"]
    order = [name for group in names for name in group["params"]]
    groups = [{**group, "params": [order[i] for i in group["params"]]} for group in saved["param_groups"]]
    state = {order[i]: value for i, value in saved["state"].items()}
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=SPREAD)
