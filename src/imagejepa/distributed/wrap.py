"""The model as each rank trains it, by ``dist.strategy``:

- ``ddp``: DistributedDataParallel. Every rank holds the whole model; gradients are averaged
  over ranks during ``backward``.
- ``fsdp``: FSDP2 (``fully_shard``), per transformer block, then per network, then the root.
  Parameters, gradients and optimiser state are sharded over ranks; a block's parameters
  are gathered just before it runs.
- ``hsdp``: the same on a 2-D mesh ``(replicas, shard_size)``: sharded within each group of
  ``shard_size`` ranks (a node), replicated across the groups; gradients are reduce-scattered
  in a group, then averaged across groups.

Sharded either way, the EMA target encoder is sharded as the network it follows, so its
update is a local operation on each rank's shard (see ``methods.base.Method.update_target``).

The networks are those the method names (``model.networks``). Only those it trains have
gradients; an EMA teacher (``requires_grad=False``) follows by the EMA, which every rank
computes from the same averaged gradients.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .processes import Processes

STRATEGIES = ("ddp", "fsdp", "hsdp")
SHARDED = ("fsdp", "hsdp")


def wrap_data_parallel(model: nn.Module, processes: Processes, device: torch.device,
                       strategy: str = "ddp", precision: str = "fp32",
                       shard_size: int | None = None) -> nn.Module:
    """``model`` itself for one process without a group; else DDP around it, or ``model``
    sharded in place by FSDP2 (then build the optimiser afterwards, from its new parameters).
    ``shard_size``: HSDP's ranks per shard group (see :func:`hsdp_shape`)."""
    if not processes.started:
        return model
    if strategy in SHARDED:
        from torch.distributed.device_mesh import init_device_mesh

        if strategy == "fsdp":
            mesh = init_device_mesh(device.type, (processes.world_size,), mesh_dim_names=("shard",))
        else:
            mesh = init_device_mesh(device.type, hsdp_shape(processes, shard_size),
                                    mesh_dim_names=("replicate", "shard"))
        return _fully_shard(model, device, precision, mesh)
    ids = [device.index] if device.type == "cuda" else None
    # Buffers are not re-broadcast before each forward: the model has no running statistics,
    # and its buffers are identical on every rank by construction. Newer PyTorch names the
    # option forward_sync_buffers (broadcast_buffers is deprecated).
    option = "forward_sync_buffers" if "forward_sync_buffers" in _DDP_OPTIONS else "broadcast_buffers"
    return DistributedDataParallel(model, device_ids=ids, **{option: False})


_DDP_OPTIONS = inspect.signature(DistributedDataParallel.__init__).parameters


def hsdp_shape(processes: Processes, shard_size: int | None) -> tuple[int, int]:
    """``(replicas, shard_size)``; ``shard_size`` null: the ranks of one node (torchrun's
    ``LOCAL_WORLD_SIZE``, else all of them)."""
    size = shard_size or int(os.environ.get("LOCAL_WORLD_SIZE", processes.world_size))
    if size < 1 or processes.world_size % size:
        raise ValueError(f"dist.shard_size={size} does not divide the {processes.world_size} processes")
    return processes.world_size // size, size


def _fully_shard(model: nn.Module, device: torch.device, precision: str, mesh) -> nn.Module:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # The predictor returns a reshaped view of its output projection; FSDP2 warns that an
    # in-place op on such a view would skip a gather. Nothing here writes into it in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPPredictor\) returned a view")
    policy = MixedPrecisionPolicy()
    if device.type == "cuda" and precision == "bf16":
        # bf16 compute and gathers, fp32 gradient reduction and fp32 master weights.
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for network in (getattr(model, name) for name in model.networks):
        for block in _blocks(network):
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(network, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _blocks(network: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a network (none for a head)."""
    return getattr(network, "blocks", None) or getattr(network, "predictor_blocks", None) or []


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a tensor FSDP2 sharded (a DTensor); the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def fill_from_whole(param: torch.Tensor, whole: torch.Tensor) -> None:
    """Write ``whole`` (the whole tensor, on any device) into ``param``: all of it, or this
    rank's shard of it when FSDP2 sharded ``param`` (the shard as the DTensor lays it out;
    no communication, every rank holds ``whole``)."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        whole = whole.to(param.to_local().device, param.dtype)
        shard = distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None)
        param.to_local().copy_(shard.to_local())
    else:
        param.copy_(whole)


def is_sharded(module: nn.Module) -> bool:
    """Whether FSDP2 has sharded ``module``'s parameters."""
    return any(hasattr(p, "to_local") for p in module.parameters())


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool):
    """Average (DDP) or reduce-scatter (FSDP2) gradients over ranks in the backward passes
    inside, or not (the accumulation chunks before the last one)."""
    if enabled:
        yield
    elif hasattr(module, "no_sync"):  # DDP
        with module.no_sync():
            yield
    elif hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield
