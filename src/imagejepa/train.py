"""The trainer: one process, CPU or one GPU.

Everything random is a pure function of ``(train.seed, step)``: the batch order and crops
(:mod:`imagejepa.data.loader`), the masks, and the schedules. A checkpoint therefore only
needs weights, optimiser state and the step to continue exactly where a run stopped.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from .config import Config, ConfigError, mask_settings
from .data import TrainLoader, TrainTransform, build_dataset, channel_stats
from .data.loader import mix_seed
from .jepa import build_ijepa
from .masking import Masks, MultiBlockMaskSampler
from .optim import build_optimizer, set_lr_and_wd
from .runtime import autocast, resolve_device, resolve_precision
from .schedules import Schedules

METRIC_COLUMNS = (
    "step", "epoch", "loss", "lr", "weight_decay", "ema", "target_std", "pred_std",
    "context_patches", "target_patches", "img_per_s", "elapsed_s",
)
MASK_STREAM = 0x3A5C


class Trainer:
    """``Trainer(cfg, run_dir, resume).fit()``; ``train_step(images, step) -> metrics``."""

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, log=print):
        self.cfg, self.run_dir, self.log = cfg, Path(run_dir), log
        self.device = resolve_device(cfg.train.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.dataset = build_dataset(cfg.data.dataset, train=True)
        self.mean = channel_stats(self.dataset.mean, cfg.model.in_chans)
        self.std = channel_stats(self.dataset.std, cfg.model.in_chans)
        batch = cfg.data.batch_size
        self.steps_per_epoch = len(self.dataset) // batch
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size={batch} is larger than the dataset ({len(self.dataset)} images)"
            )
        self.total_steps = int(cfg.optim.epochs * self.steps_per_epoch)
        self.schedules = Schedules.from_config(cfg.optim, self.steps_per_epoch)

        torch.manual_seed(cfg.train.seed)
        self.model = build_ijepa(cfg).to(self.device)
        self.optimizer = build_optimizer(
            self.model.encoder, self.model.predictor, lr=cfg.optim.lr, device=self.device
        )
        self.masks = MultiBlockMaskSampler(self.model.encoder.grid, mask_settings(cfg))
        self.forward = torch.compile(self.model, dynamic=True) if cfg.train.compile else self.model
        self.step = 0
        if resume:
            self._resume()
        self.loader = TrainLoader(
            self.dataset,
            TrainTransform(cfg.model.img_size, cfg.model.in_chans, self.mean, self.std,
                           cfg.data.crop_scale),
            batch_size=batch,
            seed=cfg.train.seed,
            num_workers=cfg.data.num_workers,
            start_step=self.step,
            pin_memory=self.device.type == "cuda",
        )

    # -- one optimisation step -----------------------------------------------------------
    def sample_masks(self, step: int, batch_size: int) -> Masks:
        g = torch.Generator().manual_seed(mix_seed(self.cfg.train.seed, step, MASK_STREAM))
        return self.masks(batch_size, g)

    def train_step(self, images: torch.Tensor, step: int) -> dict[str, float]:
        """One optimiser step on a global batch ``(B, C, H, W)``; returns scalar metrics."""
        lr, wd, momentum = self.schedules.at(step)
        set_lr_and_wd(self.optimizer, lr, wd)
        masks = self.sample_masks(step, images.shape[0])
        accum = self.cfg.optim.grad_accum
        images = images.to(self.device, non_blocking=True)
        masks = Masks(*(m.to(self.device, non_blocking=True) for m in masks))
        total_loss, sums = 0.0, {}
        for chunk in range(accum):
            part = slice(chunk * images.shape[0] // accum, (chunk + 1) * images.shape[0] // accum)
            with autocast(self.device, self.precision):
                loss, metrics = self.forward(images[part], Masks(masks.context[part], masks.targets[part]))
            (loss / accum).backward()
            total_loss += loss.detach()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_target(momentum)
        out = {"loss": float(total_loss) / accum, "lr": lr, "weight_decay": wd, "ema": momentum}
        out.update({k: float(v) / accum for k, v in sums.items()})
        return out

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        cfg = self.cfg.train
        stop = self.total_steps if cfg.max_steps is None else min(self.total_steps, cfg.max_steps)
        self._prepare_run_dir()
        self.log(
            f"imagejepa: {self.cfg.model.arch}/{self.cfg.model.patch_size} on "
            f"{self.cfg.data.dataset} ({len(self.dataset)} images), {self.device} {self.precision}, "
            f"steps {self.step} -> {stop} of {self.total_steps}, run dir {self.run_dir}"
        )
        start_time = last_ckpt_time = time.perf_counter()
        last = {}
        with open(self.run_dir / "metrics.csv", "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            bar = tqdm(total=stop, initial=self.step, desc="pretrain", unit="step",
                       dynamic_ncols=True, mininterval=1.0)
            batches = iter(self.loader)
            while self.step < stop:
                t0 = time.perf_counter()
                images, _ = next(batches)
                last = self.train_step(images, self.step)
                now = time.perf_counter()
                last.update(step=self.step, epoch=self.step // self.steps_per_epoch,
                            img_per_s=images.shape[0] / (now - t0), elapsed_s=now - start_time)
                writer.writerow({k: _fmt(v) for k, v in last.items()})
                self.step += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == stop:
                    f.flush()
                    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}",
                                    img_s=f"{last['img_per_s']:.0f}")
                out_of_time = cfg.max_minutes is not None and now - start_time > 60 * cfg.max_minutes
                due = (cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0) or (
                    cfg.checkpoint_every_minutes and now - last_ckpt_time > 60 * cfg.checkpoint_every_minutes
                )
                if due and self.step < stop and not out_of_time:
                    self.save()
                    last_ckpt_time = time.perf_counter()
                if out_of_time:
                    self.log(f"imagejepa: time limit of {cfg.max_minutes} min reached at step {self.step}")
                    break
            bar.close()
        path = self.save()
        self.log(f"imagejepa: saved {path}")
        return last

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(self.cfg.to_yaml())
        metrics = self.run_dir / "metrics.csv"
        rows = []
        if metrics.exists():  # keep only rows of steps before the one we continue from
            with open(metrics, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < self.step]
        with open(metrics, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    # -- checkpoints ---------------------------------------------------------------------
    def save(self) -> Path:
        tensors = {
            f"{name}.{k}": v
            for name in ("encoder", "target_encoder", "predictor")
            for k, v in getattr(self.model, name).state_dict().items()
        }
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        meta = {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "config": self.cfg.to_dict(),
            "arch": self.cfg.model.arch,
            "img_size": self.cfg.model.img_size,
            "patch_size": self.cfg.model.patch_size,
            "in_chans": self.cfg.model.in_chans,
            "mean": list(self.mean),
            "std": list(self.std),
            "precision": self.precision,
        }
        return ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, tensors, state, meta,
                                    keep_last=self.cfg.train.keep_last)

    def _resume(self) -> None:
        folder = ckpt.latest_checkpoint(self.run_dir)
        if folder is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {self.run_dir}/checkpoints")
        tensors = ckpt.load_tensors(folder)
        for name in ("encoder", "target_encoder", "predictor"):
            getattr(self.model, name).load_state_dict(ckpt.strip_prefix(tensors, name))
        state = ckpt.load_train_state(folder)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.log(f"imagejepa: resumed from {folder} at step {self.step}")


def _fmt(value):
    return f"{value:.9g}" if isinstance(value, float) else value
