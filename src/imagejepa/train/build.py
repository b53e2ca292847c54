"""Everything a run is made of, built from its config: data, schedules, model, optimiser.

Cheap checks come first (batch split, data path), so a bad config fails before the dataset
is read or the model built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..config import Config, ConfigError, check_batch_split
from ..data import TrainLoader, build_dataset, channel_stats, check_data_path
from ..distributed import Processes
from ..methods import Method, build_method
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
                "budget; raise optim.epochs"
            )
        fits = cfg.optim.schedule_fits or [(0, max_steps)]
    schedules = Schedules.from_config(cfg.optim, steps_per_epoch, fits)
    return max_steps, schedules, schedules.total_steps if fits else max_steps


def build_model(cfg: Config, device: torch.device) -> Method:
    """The method ``method.name`` (same initial weights on every rank: seeded)."""
    torch.manual_seed(cfg.train.seed)
    model = build_method(cfg).to(device)
    if cfg.train.activation_checkpointing:
        for network in model.trained_networks():
            if hasattr(network, "checkpoint_blocks"):
                network.checkpoint_blocks = True
    return model


def build_model_optimizer(cfg: Config, model: Method, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the networks the method trains (after any sharding: over their shards)."""
    return build_optimizer(*model.trained_networks(), lr=cfg.optim.lr, device=device)
