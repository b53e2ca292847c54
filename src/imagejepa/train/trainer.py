"""The trainer: build a run from its config (build.py), then the loop of steps (step.py).
The loop asks each piece of periodic work whether it is due (periodic.py: metric reads and
logging, checkpoints, the time limit, unreadable files; budget.py: refits of a time budget;
watch.py: the monitor and online kNN) and saves checkpoints (state.py).

Everything random is a pure function of ``(train.seed, step)``: the batch order and crops
(:mod:`imagejepa.data.loader`), the masks, and the schedules. A checkpoint therefore only
needs weights, optimiser state and the step to continue exactly where a run stopped, on
any number of processes.

With several processes (torchrun) each rank trains its part of the global batch; they agree
after every step on stopping (signals on any rank; time limits and the budget from rank 0's
clock) and, through the averaged loss and gradients, on skipping a non-finite step. Rank 0
alone writes the run folder and the log.

Faults are handled, never asserted on: a stop signal finishes the step, checkpoints and
raises :class:`~imagejepa.train.preempt.Preempted`; a non-finite loss or gradient raises
:class:`NonFiniteError` (or skips the step with ``train.on_nan: skip_step``); unreadable
image files are skipped, counted and named up to ``data.max_bad_fraction`` of the dataset;
a checkpoint that cannot be written raises :class:`~imagejepa.checkpoint.CheckpointError`
with the previous one intact.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .. import checkpoint as ckpt
from ..config import Config
from ..data import DataError, build_dataset, check_data_path
from ..distributed import (
    SINGLE,
    Agreement,
    Processes,
    agree_after_step,
    any_rank,
    barrier,
    hsdp_shape,
    is_sharded,
    lost_contact,
    posted_failure,
    set_collective_timeout,
    text_from_main,
)
from ..errors import ImageJepaError, LostProcessError, NonFiniteError
from ..masking import Masks
from ..runtime import compile_pays, keep_compiled_graphs, resolve_device, resolve_precision
from ..utils.files import atomic_write_text
from . import budget
from .budget import budget_fits
from .build import (
    build_data,
    build_loader,
    build_model,
    build_model_optimizer,
    build_views,
    check_startable,
    place_model,
    plan_length,
)
from .flops import config_step_flops
from .metrics_log import MetricsLog, metric_columns
from .periodic import BadFiles, CheckpointTimer, MetricReads, Throughput, TimeLimit
from .preempt import Preempted, StopSignals
from .recipe import resolve_recipe
from .schedules import Schedules
from .state import (
    BackgroundWriter,
    find_resume_point,
    gather_training_state,
    load_training_state,
    save_sharded_training_state,
    save_training_state,
    snapshot,
)
from .step import StepResult, TrainStep, batch_size_of
from .watch import RunWatch

__all__ = ["NonFiniteError", "Trainer"]

SIGNAL_ELSEWHERE = "stop signal on another process"
NON_FINITE_ADVICE = ("Resume from it with --resume (a lower optim.lr or train.precision=fp32 may help), "
                     "or set train.on_nan=skip_step to skip such steps")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    pass


class Trainer:
    """``Trainer(cfg, run_dir, resume).fit()``; ``train_step(images, step) -> StepResult``.

    ``fallback=True`` (with ``resume``) continues from the newest checkpoint that passes
    verification when the one ``latest`` names is damaged; otherwise that is an error.
    ``processes``: this process's rank among those of the run (one process by default).
    """

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, log=print,
                 warn=_stderr, fallback: bool = False, processes: Processes = SINGLE):
        self.cfg, self.run_dir, self.processes = cfg, Path(run_dir), processes
        self.log = log if processes.is_main else _quiet
        self._emit_warning, self._bar = warn, None
        check_data_path(cfg.data.dataset)
        dataset = build_dataset(cfg.data.dataset, train=True) if cfg.recipe == "auto" else None
        self.recipe = resolve_recipe(cfg, dataset)  # before anything is sized from the config
        check_startable(cfg, processes)
        self.device = resolve_device(cfg.train.device, processes.local_rank)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        data = build_data(cfg, dataset)
        self.dataset, self.mean, self.std = data.dataset, data.mean, data.std
        self.steps_per_epoch = data.steps_per_epoch
        self.train_seconds = 0.0  # training time of the run so far, earlier processes included

        self.model = build_model(cfg)  # parameters on the meta device until place_model
        self.views = build_views(cfg, data, self.model)
        # FLOPs of one step, counted on the model before any sharding (the same on N processes),
        # for a budget in FLOPs (a second or so: not counted otherwise).
        self.step_flops = None if cfg.train.budget_flops is None else config_step_flops(
            cfg, self.model, self.dataset, self.views)
        self.max_steps, self.schedules, self.total_steps = plan_length(cfg, self.steps_per_epoch,
                                                                       self.step_flops)
        trained = place_model(self.model, cfg, processes, self.device, self.precision)
        self.optimizer = build_model_optimizer(cfg, self.model, self.device)  # after any sharding
        forward, self.compiled = trained, compile_pays(cfg.train.compile, self.device)
        if self.compiled:
            keep_compiled_graphs()
            self.log("imagejepa: compiling the model (torch.compile, dynamic shapes): the first steps "
                     "take longer, and count against a time budget")
            forward = torch.compile(trained, dynamic=True)
        self.stepper = TrainStep(self.model, forward, self.optimizer, cfg.train.seed,
                                 cfg.optim.grad_accum, self.device, self.precision, processes,
                                 cfg.train.on_nan, warn)
        self.watch = RunWatch(cfg, self.dataset, self.mean, self.std, self.device, self.precision, processes)
        self.step = 0
        self.last_checkpoint: Path | None = None  # the newest complete checkpoint of this run
        self.bad_files = BadFiles(len(self.dataset), cfg.data.max_bad_fraction, self.warn)
        self.writer = BackgroundWriter()  # train.async_checkpoint: the checkpoint being written
        self.budget_clock: budget.BudgetClock | None = None  # with a time budget, while fit() runs
        self._started = time.perf_counter()  # this process's training clock, restarted by fit()
        if resume:
            self._resume(fallback)
        self.loader = build_loader(cfg, data, self.step, processes, self.device, self.views)

    def warn(self, message: str) -> None:
        """A warning line, above the progress bar while one is shown."""
        if self._bar is not None:
            self._bar.clear()
        self._emit_warning(message)
        if self._bar is not None:
            self._bar.refresh()

    # -- one optimisation step (step.py) ---------------------------------------------------
    def sample_masks(self, step: int, batch_size: int) -> Masks:
        """The masks of a global batch of ``batch_size`` at ``step``."""
        return self.stepper.masks(step, batch_size)

    def train_step(self, images, step: int) -> StepResult:
        """One optimiser step on this rank's part ``(b, C, H, W)`` of the global batch (or of
        the method's views); its metrics stay on the device until :meth:`TrainStep.read`. On
        the steps that watch the representation (``monitor.every``) with the health metrics too."""
        self.model.begin_step(self.schedules.warmup_progress(step))
        return self.stepper(images, step, self.schedules.at(step), self.watch.health_due(step))

    # -- the loop ------------------------------------------------------------------------
    def fit(self, signals: StopSignals | None = None) -> dict[str, float]:
        """Train to the end (or ``max_steps`` / ``max_minutes``) and save; returns the last
        step's metrics. Raises :class:`Preempted` after saving when a stop signal arrived.

        ``signals``: stop signals already being caught (the command line catches them from
        its start, so that one arriving while the run is built still ends in exit 75)."""
        try:
            return self._fit(signals)
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stops the run is the one to report
                self.writer.wait()  # a checkpoint being written is finished first
            raise

    def _fit(self, signals: StopSignals | None) -> dict[str, float]:
        catching = contextlib.nullcontext(signals) if signals is not None else StopSignals()
        with catching as signals:
            try:
                if self._agree(signals).stop:
                    raise Preempted(self._signal_name(signals), self.step, None)
                return self._loop(signals)
            except NonFiniteError as e:  # the step says what went wrong; the run, where to go on from
                raise NonFiniteError(f"{e} Last good checkpoint: {self._last_checkpoint_text()}. "
                                     f"{NON_FINITE_ADVICE}") from None
            except RuntimeError as e:
                if isinstance(e, ImageJepaError) or not (self.processes.started and lost_contact(e)):
                    raise  # our own errors already say what happened
                raise self._lost_contact(e) from e

    def _last_checkpoint_text(self) -> str:
        return str(self.last_checkpoint or "none yet (the run would start from scratch)")

    def _lost_contact(self, error: RuntimeError) -> LostProcessError:
        """One line instead of a collective's traceback when another rank died."""
        first_line = (str(error).strip() or type(error).__name__).splitlines()[0]
        failure = posted_failure(self.processes)  # "rank R: cause", when the failed rank said why
        if failure is not None:
            rank, _, cause = failure.partition(": ")
            return LostProcessError(
                f"{rank} failed ({cause}); rank {self.processes.rank} stopped with it at step {self.step}. "
                f"Last checkpoint: {self.last_checkpoint or 'none yet'}")
        return LostProcessError(
            f"rank {self.processes.rank}: lost contact with the other processes at step "
            f"{self.step} ({first_line[:200]}); another rank has probably failed, see its "
            f"messages. Last checkpoint: {self.last_checkpoint or 'none yet'}; continue with "
            "--resume (torchrun --max-restarts with --resume auto does it by itself)"
        )

    def _loop(self, signals: StopSignals) -> dict[str, float]:
        cfg = self.cfg.train
        self._begin()
        first_step, seconds_before = self.step, self.train_seconds
        checkpoints = CheckpointTimer(cfg.checkpoint_every_steps, cfg.checkpoint_every_minutes)
        time_limit = TimeLimit(cfg.max_minutes)
        self.throughput = Throughput()
        with self._progress() as (metrics, bar, batches):
            reads = MetricReads(self.stepper, metrics, self.watch, self.throughput, self._warn_main,
                                cfg.log_every)
            while self.step < self.stop:
                images, _, skipped = _next_batch(batches)
                new_bad_files = self.bad_files.note(skipped)
                result = self.train_step(images, self.step)
                self.throughput.add(self.cfg.data.batch_size)
                if self.watch.knn_due(self.step, self.stop):
                    result.host["knn_top1"] = self._online_knn()
                agreed = self._agree(signals, len(skipped), new_bad_files)
                self.bad_files.check(agreed.new_bad_files)
                if self.step == first_step:  # the first step (and any compilation) is done
                    set_collective_timeout(self.processes, self.cfg.dist.timeout_minutes)
                    self._picture_masks(images)
                reads.add(result.note(step=self.step, epoch=self.step // self.steps_per_epoch,
                                      skipped_images=agreed.skipped_images, elapsed_s=agreed.main_seconds))
                self.step += 1
                self.train_seconds = seconds_before + agreed.main_seconds
                bar.update(1)
                self._refit_if_due(bar)
                out_of_time = time_limit.reached(agreed.main_seconds)
                saving = checkpoints.due(self.step, agreed.main_seconds) and self.step < self.stop
                logging = reads.due(self.step, ending=self.step == self.stop or agreed.stop or out_of_time)
                if logging or saving:
                    reads.read()  # may raise NonFiniteError
                if logging:
                    reads.flush()
                    bar.set_postfix(**self._postfix(reads.latest))
                if agreed.stop:
                    break
                if saving and not out_of_time:
                    reads.flush()  # the metrics of every step a checkpoint holds are on disk too
                    with self.throughput.pause():
                        self.save()
                    checkpoints.saved(agreed.main_seconds)
                    if self._agree(signals).stop:  # a signal during the save: stop at that save
                        break
                if out_of_time:
                    self.log(f"imagejepa: time limit of {cfg.max_minutes} min reached at step {self.step}")
                    break
            bar.close()
            self._bar = None
            metrics.flush()
            # Still inside StopSignals: a SIGTERM now must not interrupt the final save.
            path = self.save()
            self.writer.wait()  # written (in the background or not) before the run says so
        return self._end(signals, path, reads.latest)

    def _begin(self) -> None:
        """The run folder (rank 0), the start-up lines, the trackers."""
        if self.processes.is_main:
            self._prepare_run_dir()
        cfg = self.cfg.train
        length = f"steps {self.step} -> {self.stop} of {self.total_steps}"
        if cfg.budget_minutes is not None:
            length = (f"steps {self.step} -> the schedule's end, fitted to {cfg.budget_minutes:g} min of "
                      f"training (at most {self.max_steps})")
        if cfg.budget_flops is not None:
            length += (f", fitted to {cfg.budget_flops:.3g} FLOPs of training "
                       f"({self.step_flops / 1e9:.3g} GFLOPs per step)")
        method = "" if self.model.name == "ijepa" else f"{self.model.name} "
        self.log(
            f"imagejepa: {method}{self.cfg.model.arch}/{self.cfg.model.patch_size} on "
            f"{self.cfg.data.dataset} ({len(self.dataset)} images), {self._where()} {self.precision}, "
            f"{self._batch()}, {length}, run dir {self.run_dir}"
        )
        if self.recipe is not None:
            self.log(f"imagejepa: {self.recipe.line}")
        self.log(f"imagejepa: monitor: {self.watch.describe()}")
        self.watch.start(self.run_dir, self.step)
        self._started = time.perf_counter()
        self.budget_clock = None if cfg.budget_minutes is None else budget.BudgetClock(
            cfg.budget_minutes, self.max_steps, self.step, self.schedules.fits, self.train_seconds)

    @contextlib.contextmanager
    def _progress(self):
        """``(metrics log, progress bar, batches)``, all closed when the loop ends, the bar
        before any error propagates (so that an error message is the last line)."""
        main = self.processes.is_main
        bar = tqdm(total=self.stop, initial=self.step, desc="pretrain", unit="step",
                   dynamic_ncols=True, mininterval=1.0, disable=not main)
        self._bar = bar if main else None
        columns = metric_columns(self.model.blocks, self.model.anti_collapse != "none")
        with (MetricsLog(self.run_dir / "metrics.csv", self.step, columns, writes=main) as metrics, bar,
              contextlib.closing(self.watch), contextlib.closing(iter(self.loader)) as batches):
            yield metrics, bar, batches

    def _end(self, signals: StopSignals, path: Path, latest: dict) -> dict[str, float]:
        if self.budget_clock is not None and len(self.schedules.fits) > 2:
            self.log(f"imagejepa: the schedule was refitted {len(self.schedules.fits) - 2} time(s) to the "
                     f"speed; it ends at step {self.total_steps}, {self.train_seconds / 60:.1f} min trained")
        if self.bad_files.count:
            self.log(f"imagejepa: skipped {self.bad_files.count} unreadable image file(s), named above")
        if self.compiled:  # bounded whatever the context and target lengths met (dynamic shapes)
            from torch._dynamo.utils import counters

            graphs = counters["stats"]["unique_graphs"]
            self.log(f"imagejepa: torch.compile made {graphs} graph(s) in this process")
        if self._agree(signals).stop:
            raise Preempted(self._signal_name(signals), self.step, path)
        self.log(f"imagejepa: saved {path}")
        return latest

    def _agree(self, signals: StopSignals, skipped_images: int = 0, new_bad_files: int = 0) -> Agreement:
        """What every rank agrees on after a step: stop (a signal on any rank), rank 0's
        seconds of training in this process, the skipped images and newly unreadable files."""
        return agree_after_step(self.processes, signals.received is not None,
                                time.perf_counter() - self._started, skipped_images, new_bad_files)

    def _warn_main(self, message: str) -> None:
        if self.processes.is_main:
            self.warn(message)

    def _postfix(self, latest: dict) -> dict[str, str]:
        return {"loss": f"{latest['loss']:.4f}", "lr": f"{latest['lr']:.2e}",
                "img_s": f"{latest['img_per_s']:.0f}", **self.watch.latest}

    def _picture_masks(self, images) -> None:
        """The first step's masks drawn on its images (for a method that masks)."""
        with self.throughput.pause():
            masks = self.stepper.rank_masks(self.step, batch_size_of(images))
            if masks is not None:
                self.watch.picture_masks(images, masks, self.model.encoder.grid, self.cfg.model.patch_size,
                                         self.step)

    def _online_knn(self) -> float:
        with self.throughput.pause():
            return self.watch.knn(self.model.evaluated_encoder, self.step, is_sharded(self.model))

    def _refit_if_due(self, bar) -> None:
        """With a time budget: follow a new fit of the schedule's length when the clock makes one."""
        fits = self.budget_clock.observe(self.step, self.train_seconds) if self.budget_clock else None
        if fits is None:
            return
        bar.clear()  # a message goes above the bar
        self._refit(fits, self.budget_clock.steps_per_s)
        bar.total = self.stop
        bar.refresh()

    def _signal_name(self, signals: StopSignals) -> str:
        return signals.received or SIGNAL_ELSEWHERE

    def _where(self) -> str:
        p = self.processes
        if not p.started:
            return str(self.device)
        d = self.cfg.dist
        strategy = {"fsdp": "FSDP2", "ddp": "DDP"}.get(d.strategy)
        if d.strategy == "hsdp":
            replicas, shards = hsdp_shape(p, d.shard_size)
            strategy = f"HSDP: {replicas} replicas x {shards} shards"
        return f"{_processes(p.world_size)} on {self.device.type} ({strategy})"

    def _batch(self) -> str:
        b, p = self.cfg.data.batch_size, self.processes
        text = f"batch {b}"
        if p.world_size > 1:
            text = f"global batch {b} = {b // p.world_size} per process x {p.world_size}"
        note = self.cfg.source_note
        return f"{text} ({note})" if note else text

    @property
    def stop(self) -> int:
        """The step this run stops at: the schedule's end, or ``train.max_steps`` before it."""
        max_steps = self.cfg.train.max_steps
        return self.total_steps if max_steps is None else min(self.total_steps, max_steps)

    def _refit(self, fits: list[tuple[int, int]], steps_per_s: float) -> None:
        """Follow the budgeted schedule along ``fits`` from now on. They are training state,
        kept in every checkpoint from now on, so that ``--resume`` continues the same schedule."""
        self._follow(fits)
        if len(fits) == 2:
            self.log(
                f"imagejepa: {steps_per_s:.2f} steps/s: the schedule ends at step {self.total_steps} "
                f"({self.total_steps / self.steps_per_epoch:.2f} epochs) to fit "
                f"{self.cfg.train.budget_minutes:g} min; refitted to the speed up to 9/10 of the way"
            )

    def _follow(self, fits: list[tuple[int, int]]) -> None:
        self.schedules = Schedules.from_config(self.cfg.optim, self.steps_per_epoch, fits)
        self.total_steps = self.schedules.total_steps

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._recover()
        # What was asked for, as the run (re)starts; never rewritten while it trains. Replaced
        # atomically: a kill here must not spoil the next --resume (nor does the rewrite of
        # metrics.csv in MetricsLog).
        atomic_write_text(self.run_dir / "config.yaml", self.cfg.to_yaml())

    def _recover(self) -> None:
        tidied = ckpt.recover(self.run_dir / "checkpoints")
        if tidied:
            self.log(f"imagejepa: tidied what an interrupted save left: {', '.join(tidied)}")

    # -- checkpoints (state.py) ------------------------------------------------------------
    def save(self) -> Path:
        """Write the checkpoint of the current step (once per step); returns its folder. Rank 0
        writes a single-folder checkpoint (the others return its folder); sharded (FSDP2,
        HSDP), every rank writes its own shards of a sharded one."""
        if self.last_checkpoint is not None and self.last_checkpoint.name == ckpt.checkpoint_name(self.step):
            return self.last_checkpoint  # already saved: same step, same state
        checkpoints = self.run_dir / "checkpoints"
        if is_sharded(self.model):  # each rank writes its own shards
            tmp = text_from_main(self.processes, str(ckpt.new_temporary_folder(checkpoints, self.step)))
            t = self.cfg.train
            path = save_sharded_training_state(
                Path(tmp), self.step, self.model, self.optimizer, self.processes, self.train_seconds,
                self._meta(), t.keep_last, t.keep_every, self.last_checkpoint,
                self.writer if t.async_checkpoint else None)
            self.last_checkpoint = path
            return path
        if self.processes.is_main:
            tensors, optimizer_state = gather_training_state(self.model, self.optimizer)
            t = self.cfg.train
            args = (checkpoints, self.step, tensors, optimizer_state, self.train_seconds, self._meta(),
                    t.keep_last, t.keep_every, self.last_checkpoint)
            if t.async_checkpoint:  # written while training goes on; `latest` moves when it is done
                copied = (*args[:2], *snapshot(*args[2:4]), *args[4:])
                self.writer.submit(lambda: save_training_state(*copied))
                path = checkpoints / ckpt.checkpoint_name(self.step)
            else:
                path = save_training_state(*args)
        else:
            path = checkpoints / ckpt.checkpoint_name(self.step)
        self.last_checkpoint = path
        return path

    def _meta(self) -> dict:
        return {
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
            "method": self.model.name,
            "evaluated": self.model.evaluated,
            **({"train_flops": self.step * self.step_flops} if self.step_flops else {}),
            **({"schedule_fits": [list(fit) for fit in self.schedules.fits]}
               if self.cfg.train.budget_minutes is not None else {}),
        }

    def _verify_together(self, folder: Path) -> None:
        """Each rank verifies its share of ``folder``'s files; all raise if any share failed."""
        p, error = self.processes, None
        try:
            ckpt.verify_checkpoint(folder, share=(p.rank, p.world_size))
        except ckpt.CheckpointError as e:
            error = e
        if any_rank(p, error is not None):
            raise error or ckpt.CheckpointError(f"{folder}: a file failed verification on another rank "
                                                "(its message names it)")

    def _resume(self, fallback: bool) -> None:
        if self.processes.is_main:
            self._recover()
        barrier(self.processes)  # the others read what rank 0 has tidied
        folder = find_resume_point(self.run_dir, fallback, self.warn if self.processes.is_main else _quiet,
                                   verify=self._verify_together)
        self.step, self.train_seconds = load_training_state(folder, self.model, self.optimizer)
        if self.cfg.train.budget_minutes is not None:  # the fits of the schedule so far
            self._follow(budget_fits(ckpt.load_meta(folder), self.max_steps))
        self.last_checkpoint = folder
        self.log(f"imagejepa: resumed from {folder} at step {self.step}")


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


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
