"""The trainer: one process, CPU or one GPU.

Everything random is a pure function of ``(train.seed, step)``: the batch order and crops
(:mod:`imagejepa.data.loader`), the masks, and the schedules. A checkpoint therefore only
needs weights, optimiser state and the step to continue exactly where a run stopped.

Faults are handled, never asserted on: a stop signal finishes the step, checkpoints and
raises :class:`~imagejepa.train.preempt.Preempted`; a non-finite loss or gradient raises
:class:`NonFiniteError` (or skips the step with ``train.on_nan: skip_step``); unreadable
image files are skipped, counted and named up to ``data.max_bad_fraction`` of the dataset;
a checkpoint that cannot be written raises :class:`~imagejepa.checkpoint.CheckpointError`
with the previous one intact.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .. import checkpoint as ckpt
from ..config import Config, ConfigError, check_batch_split, mask_settings, world_size_from_env
from ..data import DataError, TrainLoader, TrainTransform, build_dataset, channel_stats, check_data_path
from ..data.loader import mix_seed
from ..errors import NonFiniteError
from ..jepa import build_ijepa
from ..masking import Masks, MultiBlockMaskSampler
from ..monitor import CollapseMonitor
from ..runtime import autocast, resolve_device, resolve_precision
from ..utils.files import atomic_write_text
from . import budget
from .optim import build_optimizer, set_lr_and_wd
from .preempt import Preempted, StopSignals
from .schedules import Schedules, schedule_steps

METRIC_COLUMNS = (
    "step", "epoch", "loss", "lr", "weight_decay", "ema", "target_std", "pred_std",
    "context_patches", "target_patches", "skipped_images", "skipped_step", "img_per_s", "elapsed_s",
)
MASK_STREAM = 0x3A5C
MAX_SKIPPED_STEPS_IN_A_ROW = 10  # with on_nan=skip_step: a run that only produces NaN stops


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Trainer:
    """``Trainer(cfg, run_dir, resume).fit()``; ``train_step(images, step) -> metrics``.

    ``fallback=True`` (with ``resume``) continues from the newest checkpoint that passes
    verification when the one ``latest`` names is damaged; otherwise that is an error.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, log=print,
                 warn=_stderr, fallback: bool = False):
        self.cfg, self.run_dir, self.log, self.warn = cfg, Path(run_dir), log, warn
        # Cheap checks first: nothing heavy happens before the config is known to be usable.
        check_batch_split(cfg, world_size_from_env())
        check_data_path(cfg.data.dataset)
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
        # With a time budget the length is fitted to the measured speed as the run goes
        # (budget.py), starting from optim.epochs' worth: the most the budget may give.
        self.max_steps = schedule_steps(cfg.optim, self.steps_per_epoch)
        fits = ()
        if cfg.train.budget_minutes is not None:
            if self.max_steps <= budget.FIRST_FIT_STEP:
                raise ConfigError(
                    f"train.budget_minutes: optim.epochs gives only {self.max_steps} steps, not more than "
                    f"the {budget.FIRST_FIT_STEP} the trainer times before fitting the schedule to the "
                    "budget; raise optim.epochs"
                )
            fits = cfg.optim.schedule_fits or [(0, self.max_steps)]
        self.schedules = Schedules.from_config(cfg.optim, self.steps_per_epoch, fits)
        self.total_steps = self.schedules.total_steps if fits else self.max_steps
        self.train_seconds = 0.0  # training time of the run so far, earlier processes included

        torch.manual_seed(cfg.train.seed)
        self.model = build_ijepa(cfg).to(self.device)
        self.optimizer = build_optimizer(
            self.model.encoder, self.model.predictor, lr=cfg.optim.lr, device=self.device
        )
        self.masks = MultiBlockMaskSampler(self.model.encoder.grid, mask_settings(cfg))
        self.forward = torch.compile(self.model, dynamic=True) if cfg.train.compile else self.model
        self.monitor = CollapseMonitor(cfg.train.collapse_std)
        self.step = 0
        self.last_checkpoint: Path | None = None  # the newest complete checkpoint of this run
        self.bad_files: dict[str, str] = {}  # path -> reason, each reported once
        self.skipped_in_a_row = 0
        if resume:
            self._resume(fallback)
        self.loader = TrainLoader(
            self.dataset,
            TrainTransform(cfg.model.img_size, cfg.model.in_chans, self.mean, self.std,
                           cfg.data.crop_scale),
            batch_size=batch,
            seed=cfg.train.seed,
            num_workers=cfg.data.num_workers,
            start_step=self.step,
            pin_memory=self.device.type == "cuda",
            on_error=cfg.data.on_error,
        )

    # -- one optimisation step -----------------------------------------------------------
    def sample_masks(self, step: int, batch_size: int) -> Masks:
        g = torch.Generator().manual_seed(mix_seed(self.cfg.train.seed, step, MASK_STREAM))
        return self.masks(batch_size, g)

    def train_step(self, images: torch.Tensor, step: int) -> dict[str, float]:
        """One optimiser step on a global batch ``(B, C, H, W)``; returns scalar metrics.

        A non-finite loss or gradient leaves weights, optimiser and target encoder untouched
        and, with ``train.on_nan: stop``, raises :class:`NonFiniteError`.
        """
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
        out = {"loss": float(total_loss) / accum, "lr": lr, "weight_decay": wd, "ema": momentum}
        out.update({k: float(v) / accum for k, v in sums.items()})
        problem = self._non_finite(out["loss"])
        if problem:
            self.optimizer.zero_grad(set_to_none=True)
            self._on_non_finite(problem, step)
            return {**out, "skipped_step": 1}
        self.skipped_in_a_row = 0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_target(momentum)
        return {**out, "skipped_step": 0}

    def _non_finite(self, loss: float) -> str | None:
        """What is not finite, ``"loss (nan)"`` or ``"gradient of encoder.x (inf)"``; else None."""
        if loss != loss or abs(loss) == float("inf"):
            return f"loss ({loss})"
        named = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        norms = torch.stack(torch._foreach_norm([g for _, g in named]))
        if bool(norms.isfinite().all()):
            return None
        i = int((~norms.isfinite()).nonzero()[0])
        return f"gradient of {named[i][0]} (norm {float(norms[i])})"

    def _on_non_finite(self, problem: str, step: int) -> None:
        last = self.last_checkpoint or "none yet (the run would start from scratch)"
        self.skipped_in_a_row += 1
        if self.cfg.train.on_nan == "stop" or self.skipped_in_a_row > MAX_SKIPPED_STEPS_IN_A_ROW:
            repeat = f" for {self.skipped_in_a_row} steps in a row" if self.skipped_in_a_row > 1 else ""
            raise NonFiniteError(
                f"non-finite {problem} at step {step}{repeat}; the run stopped. Last good "
                f"checkpoint: {last}. Resume from it with --resume (a lower optim.lr or "
                "train.precision=fp32 may help), or set train.on_nan=skip_step to skip such steps"
            )
        self.warn(f"imagejepa: warning: non-finite {problem} at step {step}: step skipped "
                  "(train.on_nan=skip_step)")

    def _note_skipped_files(self, skipped: list[tuple[str, str]]) -> None:
        """Warn once per unreadable file; stop when more than data.max_bad_fraction are bad."""
        for path, reason in skipped:
            if path not in self.bad_files:
                self.bad_files[path] = reason
                self.warn(f"imagejepa: warning: skipped unreadable image {path} ({reason})")
        limit = self.cfg.data.max_bad_fraction * len(self.dataset)
        if len(self.bad_files) > limit:
            raise DataError(
                f"{len(self.bad_files)} of the {len(self.dataset)} image files are unreadable, more "
                f"than data.max_bad_fraction={self.cfg.data.max_bad_fraction}; the last: {path} ({reason}). "
                "Fix or remove them, or raise data.max_bad_fraction"
            )

    # -- the loop ------------------------------------------------------------------------
    def fit(self, signals: StopSignals | None = None) -> dict[str, float]:
        """Train to the end (or ``max_steps`` / ``max_minutes``) and save; returns the last
        step's metrics. Raises :class:`Preempted` after saving when a stop signal arrived.

        ``signals``: stop signals already being caught (the command line catches them from
        its start, so that one arriving while the run is built still ends in exit 75)."""
        if signals is not None and signals.received:
            raise Preempted(signals.received, self.step, None)
        cfg = self.cfg.train
        stop = self.total_steps if cfg.max_steps is None else min(self.total_steps, cfg.max_steps)
        self._prepare_run_dir()
        clock, length = None, f"steps {self.step} -> {stop} of {self.total_steps}"
        if cfg.budget_minutes is not None:
            clock = budget.BudgetClock(cfg.budget_minutes, self.max_steps, self.step,
                                       self.schedules.fits, self.train_seconds)
            length = (f"steps {self.step} -> the schedule's end, fitted to {cfg.budget_minutes:g} min of "
                      f"training (at most {self.max_steps})")
        self.log(
            f"imagejepa: {self.cfg.model.arch}/{self.cfg.model.patch_size} on "
            f"{self.cfg.data.dataset} ({len(self.dataset)} images), {self.device} {self.precision}, "
            f"{length}, run dir {self.run_dir}"
        )
        start_time = last_ckpt_time = time.perf_counter()
        seconds_before = self.train_seconds
        last = {}
        bar = tqdm(total=stop, initial=self.step, desc="pretrain", unit="step",
                   dynamic_ncols=True, mininterval=1.0)
        catching = contextlib.nullcontext(signals) if signals is not None else StopSignals()
        # The bar is closed before any error propagates, so an error message is the last line.
        with (open(self.run_dir / "metrics.csv", "a", newline="") as f, catching as signals, bar,
              contextlib.closing(iter(self.loader)) as batches):
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            while self.step < stop:
                if signals.received:  # before this process's first step (later ones stop below)
                    raise Preempted(signals.received, self.step, None)
                t0 = time.perf_counter()
                images, _, skipped = _next_batch(batches)
                if skipped:
                    self._note_skipped_files(skipped)
                last = self.train_step(images, self.step)
                now = time.perf_counter()
                last.update(step=self.step, epoch=self.step // self.steps_per_epoch,
                            skipped_images=len(skipped),
                            img_per_s=images.shape[0] / (now - t0), elapsed_s=now - start_time)
                writer.writerow({k: _fmt(v) for k, v in last.items()})
                warning = self.monitor.update(self.step, last["target_std"])
                if warning:
                    self.warn(warning)
                self.step += 1
                self.train_seconds = seconds_before + time.perf_counter() - start_time
                bar.update(1)
                fits = clock.observe(self.step, self.train_seconds) if clock else None
                if fits is not None:
                    bar.clear()  # a message goes above the bar
                    stop = self._refit(fits, clock.steps_per_s)
                    bar.total = stop
                    bar.refresh()
                if self.step % cfg.log_every == 0 or self.step == stop or signals.received:
                    f.flush()
                    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}",
                                    img_s=f"{last['img_per_s']:.0f}")
                if signals.received:
                    break
                out_of_time = cfg.max_minutes is not None and now - start_time > 60 * cfg.max_minutes
                due = (cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0) or (
                    cfg.checkpoint_every_minutes and now - last_ckpt_time > 60 * cfg.checkpoint_every_minutes
                )
                if due and self.step < stop and not out_of_time:
                    f.flush()  # the metrics of every step a checkpoint holds are on disk too
                    self.save()
                    last_ckpt_time = time.perf_counter()
                if out_of_time:
                    self.log(f"imagejepa: time limit of {cfg.max_minutes} min reached at step {self.step}")
                    break
                if signals.received:  # arrived during the periodic save: that save is the one
                    break
            bar.close()
            f.flush()
            # Still inside StopSignals: a SIGTERM now must not interrupt the final save.
            path = self.save()
        if clock is not None and len(self.schedules.fits) > 2:
            self.log(f"imagejepa: the schedule was refitted {len(self.schedules.fits) - 2} time(s) to the "
                     f"speed; it ends at step {self.total_steps}, {self.train_seconds / 60:.1f} min trained")
        if self.bad_files:
            self.log(f"imagejepa: skipped {len(self.bad_files)} unreadable image file(s), named above")
        if signals.received:
            raise Preempted(signals.received, self.step, path)
        self.log(f"imagejepa: saved {path}")
        return last

    def _refit(self, fits: list[tuple[int, int]], steps_per_s: float) -> int:
        """Follow the budgeted schedule along ``fits`` from now on, and record them in
        config.yaml (and in every checkpoint's meta from now on) so that ``--resume``
        continues the same schedule. Returns the step to stop at."""
        self.cfg.optim.schedule_fits = fits
        self.schedules = Schedules.from_config(self.cfg.optim, self.steps_per_epoch, fits)
        self.total_steps = self.schedules.total_steps
        atomic_write_text(self.run_dir / "config.yaml", self.cfg.to_yaml())
        if len(fits) == 2:
            self.log(
                f"imagejepa: {steps_per_s:.2f} steps/s: the schedule ends at step {self.total_steps} "
                f"({self.total_steps / self.steps_per_epoch:.2f} epochs) to fit "
                f"{self.cfg.train.budget_minutes:g} min; refitted to the speed up to 9/10 of the way"
            )
        max_steps = self.cfg.train.max_steps
        return self.total_steps if max_steps is None else min(self.total_steps, max_steps)

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._recover()
        # Both files are replaced atomically: a kill here must not spoil the next --resume.
        atomic_write_text(self.run_dir / "config.yaml", self.cfg.to_yaml())
        metrics = self.run_dir / "metrics.csv"
        rows = []
        if metrics.exists():  # keep only rows of steps before the one we continue from
            with open(metrics, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < self.step]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(metrics, text.getvalue())

    def _recover(self) -> None:
        tidied = ckpt.recover(self.run_dir / "checkpoints")
        if tidied:
            self.log(f"imagejepa: tidied what an interrupted save left: {', '.join(tidied)}")

    # -- checkpoints ---------------------------------------------------------------------
    def save(self) -> Path:
        """Write the checkpoint of the current step (once per step); returns its folder."""
        if self.last_checkpoint is not None and self.last_checkpoint.name == ckpt.checkpoint_name(self.step):
            return self.last_checkpoint  # already saved: same step, same state
        tensors = {
            f"{name}.{k}": v
            for name in ("encoder", "target_encoder", "predictor")
            for k, v in getattr(self.model, name).state_dict().items()
        }
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "train_seconds": self.train_seconds,
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
        try:
            path = ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, tensors, state, meta,
                                        keep_last=self.cfg.train.keep_last,
                                        keep_every=self.cfg.train.keep_every)
        except OSError as e:  # disk full, quota, permissions: stop, losing nothing saved so far
            previous = self.last_checkpoint or "none"
            raise ckpt.CheckpointError(
                f"could not write the checkpoint of step {self.step}: {e}; the previous "
                f"checkpoint ({previous}) is intact"
            ) from e
        self.last_checkpoint = path
        return path

    def _resume(self, fallback: bool) -> None:
        self._recover()
        try:
            folder = ckpt.find_checkpoint(self.run_dir, fallback=fallback, warn=self.warn)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"--resume: {e}") from None
        except ckpt.CheckpointError as e:
            raise ckpt.CheckpointError(
                f"--resume: {e}. Add --fallback to continue from the newest checkpoint that passes"
            ) from None
        tensors = ckpt.load_tensors(folder)
        for name in ("encoder", "target_encoder", "predictor"):
            getattr(self.model, name).load_state_dict(ckpt.strip_prefix(tensors, name))
        state = ckpt.load_train_state(folder)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.step = int(state["step"])
        self.last_checkpoint = folder
        self.log(f"imagejepa: resumed from {folder} at step {self.step}")


def _next_batch(batches):
    """``next(batches)``; a data error raised in a DataLoader worker arrives with the worker's
    traceback in its message: keep its last line, the one naming the file."""
    try:
        return next(batches)
    except DataError as e:
        lines = str(e).strip().splitlines()
        if len(lines) > 1:
            raise DataError(lines[-1].split(": ", 1)[-1]) from e
        raise


def _fmt(value):
    return f"{value:.9g}" if isinstance(value, float) else value
