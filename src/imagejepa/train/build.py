"""Everything a run is made of, built from its config: data, schedules, model, optimiser.

Cheap checks come first (batch split, data path), so a bad config fails before the dataset
is read or the model built."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config, ConfigError, check_batch_split
from ..data import TrainLoader, build_dataset, channel_stats, check_data_path
from ..distributed import SHARDED, Processes, wrap_data_parallel
from ..methods import Method, build_method
from ..models.layers import use_attention_kernel
from ..runtime import attention_kernel
from . import budget
from .optim import build_optimizer
from .schedules import Schedules, schedule_steps


def check_startable(cfg: Config, processes: Processes) -> None:
    check_batch_split(cfg, processes.world_size)
    check_data_path(cfg.data.dataset)


@dataclass
class Data:
    dataset: object
    mean: tuple[float, ...]
    std: tuple[float, ...]
    steps_per_epoch: int


def build_data(cfg: Config, dataset=None) -> Data:
    """The training set (``dataset`` when already read) and what the loader needs of it."""
    dataset = build_dataset(cfg.data.dataset, train=True) if dataset is None else dataset
    batch = cfg.data.batch_size
    steps_per_epoch = len(dataset) // batch
    if steps_per_epoch == 0:
        raise ConfigError(f"data.batch_size={batch} is larger than the dataset ({len(dataset)} images)")
    return Data(dataset, channel_stats(dataset.mean, cfg.model.in_chans),
                channel_stats(dataset.std, cfg.model.in_chans), steps_per_epoch)


def build_views(cfg: Config, data: Data, method: Method):
    """The loader's transform: an image and a generator -> the views ``method`` takes."""
    return method.views(cfg.model.img_size, cfg.model.in_chans, data.mean, data.std, cfg.data.crop_scale)


def build_loader(cfg: Config, data: Data, start_step: int, processes: Processes,
                 device: torch.device, transform) -> TrainLoader:
    """This rank's part of each global batch, from ``start_step`` on, made by ``transform``."""
    return TrainLoader(data.dataset, transform, batch_size=cfg.data.batch_size, seed=cfg.train.seed,
                       num_workers=cfg.data.num_workers, start_step=start_step,
                       pin_memory=device.type == "cuda", on_error=cfg.data.on_error,
                       rank=processes.rank, world_size=processes.world_size)


def plan_length(cfg: Config, steps_per_epoch: int, step_flops: float | None = None
                ) -> tuple[int, Schedules, int]:
    """``(max_steps, schedules, total_steps)``. With a time budget the length is fitted to the
    measured speed as the run goes (budget.py), from optim.epochs' worth: the most it may give.
    With a FLOP budget it is ``train.budget_flops`` over ``step_flops``, the FLOPs of one step
    (counted: the same on any machine)."""
    if cfg.train.budget_flops is not None:
        total = int(cfg.train.budget_flops // step_flops)
        if total < 1:
            raise ConfigError(f"train.budget_flops={cfg.train.budget_flops:.3g} is less than one step's "
                              f"{step_flops:.3g} FLOPs")
        schedules = Schedules.from_config(dataclasses.replace(cfg.optim, total_steps=total), steps_per_epoch)
        return total, schedules, total
    max_steps = schedule_steps(cfg.optim, steps_per_epoch)
    fits = ()
    if cfg.train.budget_minutes is not None:
        if max_steps <= budget.FIRST_FIT_STEP:
            raise ConfigError(
                f"train.budget_minutes: optim.epochs gives only {max_steps} steps, not more than "
                f"the {budget.FIRST_FIT_STEP} the trainer times before fitting the schedule to the "
                "budget; raise optim.epochs, or train without a time budget: --set train.budget_minutes=null"
            )
        fits = [(0, max_steps)]  # refitted while training; a resumed run's are in its checkpoint
    schedules = Schedules.from_config(cfg.optim, steps_per_epoch, fits)
    return max_steps, schedules, schedules.total_steps if fits else max_steps


def build_model(cfg: Config) -> Method:
    """The method ``method.name`` with its parameters on the meta device (no memory, no
    values yet: :func:`place_model` gives them) and its buffers (sin-cos positions, a
    centre) built as usual."""
    with parameters_on_meta():
        model = build_method(cfg)
    if cfg.train.activation_checkpointing:
        for network in model.trained_networks():
            if hasattr(network, "checkpoint_blocks"):
                network.checkpoint_blocks = True
    return model


def place_model(model: Method, cfg: Config, processes: Processes, device: torch.device,
                precision: str) -> nn.Module:
    """Shard (FSDP2) ``model`` while its parameters are on the meta device, then make them
    real on ``device`` and draw them (:meth:`Method.initialise`: the same values whatever the
    number of processes), then wrap (DDP); returns the model as trained. A model larger than
    one device is never whole on it."""
    d = cfg.dist
    sharded = processes.started and d.strategy in SHARDED
    trained = (wrap_data_parallel(model, processes, device, d.strategy, precision, d.shard_size)
               if sharded else None)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    model.initialise(cfg.train.seed)
    use_attention_kernel(model, attention_kernel(device, precision))
    return trained if sharded else wrap_data_parallel(model, processes, device, d.strategy, precision)


@contextlib.contextmanager
def parameters_on_meta():
    """Parameters registered inside are moved to the meta device as they are registered (no
    initialisation, and no memory beyond one parameter's empty allocation at a time)."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build_model_optimizer(cfg: Config, model: Method, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the networks the method trains (after any sharding: over their shards)."""
    return build_optimizer(*model.trained_networks(), lr=cfg.optim.lr, device=device)
