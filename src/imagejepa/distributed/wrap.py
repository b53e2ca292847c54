"""The model as each rank trains it: DistributedDataParallel over the process group.

Only the encoder and predictor have gradients; the target encoder (``requires_grad=False``)
is left out of DDP's gradient buckets and follows by the EMA, which every rank computes from
the same averaged gradients, so it stays identical without any communication.
Sharded training (FSDP2) will plug in here as another strategy."""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .processes import Processes


def wrap_data_parallel(model: nn.Module, processes: Processes, device: torch.device) -> nn.Module:
    """``model`` itself for one process without a group, else ``DDP(model)``; DDP averages
    the gradients over ranks during ``backward``. Buffers are not re-broadcast before each
    forward: the model has no running statistics, and its buffers are identical on every
    rank by construction."""
    if not processes.started:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # Newer PyTorch names the option forward_sync_buffers (broadcast_buffers is deprecated).
    option = "forward_sync_buffers" if "forward_sync_buffers" in _DDP_OPTIONS else "broadcast_buffers"
    return DistributedDataParallel(model, device_ids=ids, **{option: False})


_DDP_OPTIONS = inspect.signature(DistributedDataParallel.__init__).parameters
