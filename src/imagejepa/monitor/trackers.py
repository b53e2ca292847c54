"""Experiment trackers: TensorBoard and Weights & Biases, both optional.

``monitor.tensorboard: true`` writes event files under ``RUN_DIR/tensorboard`` (the
``tensorboard`` package; ``tensorboard --logdir RUN_DIR``), ``monitor.wandb: true`` a W&B
run, offline under ``RUN_DIR/wandb`` unless ``monitor.wandb_mode: online``. Both get the
scalars of ``metrics.csv`` and the mask and feature pictures. Neither package is imported
unless asked for, and only rank 0 writes.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch

from ..errors import ConfigError


def _missing(key: str, package: str, error: ImportError) -> ConfigError:
    return ConfigError(f"{key}: true needs the {package} package, which cannot be imported ({error}); "
                       f"pip install 'imagejepa[{package}]', or set {key}: false")


def check_trackers(monitor_cfg) -> None:
    """Fail before any heavy work when a tracker asked for cannot be imported."""
    for key, package, module in (("tensorboard", "tensorboard", "torch.utils.tensorboard"),
                                 ("wandb", "wandb", "wandb")):
        if getattr(monitor_cfg, key):
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise _missing(f"monitor.{key}", package, e) from None


class Trackers:
    """``scalars(row)``, ``image(tag, step, uint8 (3, H, W))``, ``close()``; every call a
    no-op when no tracker is on. ``start_step``: the step the run continues from (TensorBoard
    drops what an earlier process logged after it, so curves are not doubled)."""

    def __init__(self, monitor_cfg, run_dir: Path, config: dict, start_step: int, writes: bool = True):
        self.tensorboard = self.wandb = None
        if not writes:
            return
        check_trackers(monitor_cfg)
        if monitor_cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step or None)
        if monitor_cfg.wandb:
            import wandb

            self.wandb = wandb.init(
                project=monitor_cfg.wandb_project, dir=str(run_dir), mode=monitor_cfg.wandb_mode,
                name=run_dir.name, id=_run_id(run_dir), resume="allow", config=config,
                settings=wandb.Settings(silent=True),
            )
            # Plotted against our step (a resumed run logs steps again from its checkpoint).
            self.wandb.define_metric("step")
            self.wandb.define_metric("*", step_metric="step")

    @classmethod
    def off(cls) -> Trackers:
        """Trackers that track nothing (before the run folder exists, and on ranks other than 0)."""
        return cls(None, Path(), {}, 0, writes=False)

    @property
    def active(self) -> bool:
        return self.tensorboard is not None or self.wandb is not None

    def scalars(self, row: dict) -> None:
        if not self.active:
            return
        values = {k: float(v) for k, v in row.items()
                  if isinstance(v, (int, float)) and k != "step" and math.isfinite(v)}
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(f"train/{key}", value, row["step"])
        if self.wandb is not None:
            self.wandb.log({"step": row["step"], **{f"train/{k}": v for k, v in values.items()}})

    def image(self, tag: str, step: int, picture: torch.Tensor) -> None:
        """``picture``: uint8 ``(3, H, W)``."""
        if self.tensorboard is not None:
            self.tensorboard.add_image(tag, picture, step)
        if self.wandb is not None:
            import wandb

            self.wandb.log({"step": step, tag: wandb.Image(picture.permute(1, 2, 0).numpy())})

    def flush(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _run_id(run_dir: Path) -> str:
    """The same W&B run id for every process of one run folder (so --resume continues it)."""
    import hashlib

    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
