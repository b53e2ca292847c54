"""One optimisation step, the same on every rank.

Each rank takes its slice of the global batch (the loader gives it the images, this step the
masks, both drawn for the whole global batch from ``(seed, step)``) and splits that slice
into ``optim.grad_accum`` chunks. The loss of a chunk is a mean over its tokens and every
chunk of every rank has the same number of tokens, so averaging chunks here and ranks in
DDP gives the gradient of the global batch's mean loss: N processes x batch B/N train like
one process x batch B, and like one process with ``grad_accum`` N.

No value leaves the device during a step (``tests/test_host_sync.py`` runs steps under a
dispatch mode that fails on every read-back; ``tests/test_gpu.py`` under CUDA's sync debug
mode). Whether the step is finite is decided on the device and applied there: the fused
AdamW skips its update when told ``found_inf``, and the EMA moves by 0. The metrics (and
that decision) are read back in batches, with :meth:`TrainStep.read`, every
``train.log_every`` steps on every device, so a GPU is never left waiting for the host and
a CPU runs the same pattern the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils._pytree import tree_flatten, tree_map

from ..distributed import Processes, gradient_sync, local_shard, sum_over_ranks
from ..errors import NonFiniteError
from ..masking import Masks
from ..monitor import health_metrics
from ..runtime import autocast
from ..utils.seeds import mix_seed
from .optim import set_lr_and_wd

MASK_STREAM = 0x3A5C
MAX_SKIPPED_STEPS_IN_A_ROW = 10  # with on_nan=skip_step: a run that only produces NaN stops


@dataclass
class StepResult:
    """One step, as the device left it: ``values`` = ``[loss, target_std, pred_std, (the
    anti-collapse term,) skipped, first non-finite gradient (index, or -1), its norm]``
    (averaged over ranks where that means something), not yet read; ``host`` the numbers
    known without reading it. ``loss`` is the prediction loss (the same whether or not a term
    against collapse is added), and the step is skipped when it or a gradient is not finite."""

    step: int
    values: torch.Tensor
    host: dict = field(default_factory=dict)
    grad_names: list[str] = field(default_factory=list)  # what the gradient index refers to
    # On the steps that watch the representation (rank 0): ``[rankme, pred_cos, block
    # losses (T)]`` on this rank's batch, see :func:`imagejepa.monitor.health_metrics`.
    health: torch.Tensor | None = None

    def note(self, **known) -> StepResult:
        """Add numbers known on the host (the step, its epoch, ...) to the row; returns self."""
        self.host.update(known)
        return self


def batch_size_of(views) -> int:
    """The number of images in a batch of views (a tensor ``(b, ...)`` or a tuple of them)."""
    return tree_flatten(views)[0][0].shape[0]


class TrainStep:
    """``step(views, step, (lr, wd, momentum)) -> StepResult``, ``views`` this rank's part of
    the global batch as the method's loader makes it (images ``(b, C, H, W)``, or a tuple of
    view stacks); ``read([results]) -> [metrics]``. ``forward`` is the model as trained
    (DDP-wrapped, compiled); ``model`` the plain :class:`~imagejepa.methods.Method` (its
    optimiser, EMA update and parameters)."""

    def __init__(self, model, forward, optimizer, seed: int, grad_accum: int,
                 device: torch.device, precision: str, processes: Processes, on_nan: str, warn):
        self.model, self.forward, self.optimizer = model, forward, optimizer
        self.mask_sampler = model.mask_sampler()
        self.seed, self.grad_accum, self.device, self.precision = seed, grad_accum, device, precision
        self.processes, self.on_nan, self.warn = processes, on_nan, warn
        self.skipped_in_a_row = 0
        # The per-step averages read back: the loss, the features' spread, and the term
        # against collapse where there is one.
        self.averaged = ("loss", "target_std", "pred_std") + (
            ("anti_collapse",) if model.anti_collapse != "none" else ())

    def masks(self, step: int, batch_size: int) -> Masks | None:
        """The masks of the whole global batch of ``step``: ``context (B, Kc)``, ``targets (B, T, Kt)``
        (``None`` for a method without masks)."""
        if self.mask_sampler is None:
            return None
        g = torch.Generator().manual_seed(mix_seed(self.seed, step, MASK_STREAM))
        return self.mask_sampler(batch_size, g)

    def rank_masks(self, step: int, local_batch: int) -> Masks | None:
        """This rank's rows of the global batch's masks."""
        p = self.processes
        masks = self.masks(step, local_batch * p.world_size)
        return None if masks is None else masks.rows(slice(p.rank * local_batch, (p.rank + 1) * local_batch))

    def __call__(self, images, step: int, schedule: tuple[float, float, float],
                 watch: bool = False) -> StepResult:
        """Forward and backward over the chunks, then the optimiser and EMA updates; with
        ``watch``, also the health metrics of the last chunk's predictions and targets.

        A non-finite loss or gradient (on any rank: the loss is averaged over ranks, and the
        ranks add up their flags) leaves weights, optimiser and target encoder untouched on
        every rank; :meth:`read` reports it (and with ``train.on_nan: stop`` raises)."""
        lr, wd, momentum = schedule
        set_lr_and_wd(self.optimizer, lr, wd)
        n = batch_size_of(images)
        masks = self.rank_masks(step, n)
        if masks is not None:
            if self.device.type == "cuda":  # pinned: the copies overlap with the device's work
                masks = Masks(*(m.pin_memory() for m in masks))
            masks = masks.to(self.device, non_blocking=True)
        images = tree_map(lambda t: t.to(self.device, non_blocking=True), images)
        accum = self.grad_accum
        sums, patches = None, {}
        for chunk in range(accum):
            part = slice(chunk * n // accum, (chunk + 1) * n // accum)
            # Gradients are averaged over ranks in the backward of the last chunk only.
            with gradient_sync(self.forward, enabled=chunk == accum - 1):
                with autocast(self.device, self.precision):
                    chunk_masks = None if masks is None else masks.rows(part)
                    loss, metrics = self.forward(tree_map(lambda t, rows=part: t[rows], images), chunk_masks)
                # The monitor watches the last chunk's features (before the update: what the loss saw).
                features = self.model.tap.take()
                (loss / accum).backward()
            # The loss column is the prediction loss; a step whose loss (with any term against
            # collapse) is not finite shows that value instead, and is skipped or stops the run.
            logged = torch.where(loss.isfinite(), metrics["pred_loss"], loss.detach())
            rest = (metrics[name].float() for name in self.averaged[1:])
            chunk_values = torch.stack([logged.float(), *rest])
            sums = chunk_values if sums is None else sums + chunk_values
            patches = {k: metrics[k] for k in ("context_patches", "target_patches") if k in metrics}
        health = None
        if watch:
            h = health_metrics(*features, self.model.loss_name)
            health = torch.cat([h["rankme"][None], h["pred_cos"][None], h["block_loss"]])
        del features, metrics
        stats = sums / accum
        with_grad = [(name, p) for name, p in self.model.named_parameters() if p.grad is not None]
        first_bad, bad_norm = _first_non_finite([local_shard(p.grad) for _, p in with_grad])
        bad_here = (~stats[0].isfinite()) | (first_bad >= 0)
        # One collective: the metrics' sum and the count of ranks with a non-finite value.
        summed = sum_over_ranks(self.processes, torch.cat([stats, bad_here.float()[None]]))
        stats, bad = summed[:-1] / self.processes.world_size, summed[-1] > 0
        self._apply(bad, momentum)
        values = torch.cat([stats, bad.float()[None], first_bad.float()[None], bad_norm.float()[None]])
        host = {**patches, "lr": lr, "weight_decay": wd, "ema": momentum}
        return StepResult(step, values, host, [name for name, _ in with_grad], health)

    def _apply(self, bad: torch.Tensor, momentum: float) -> None:
        """The optimiser step and the EMA update, both nothing where ``bad``; decided on the
        device when the optimiser is fused (it takes ``found_inf``), by reading ``bad`` otherwise."""
        if self.optimizer.defaults.get("fused"):
            self.optimizer.found_inf = bad.float()
            self.optimizer.step()
        elif not bool(bad):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_target(momentum, moving=~bad)

    def read(self, results: list[StepResult]) -> list[dict]:
        """The metrics of ``results`` (one read from the device for all of them), in step
        order; warns of, or with ``train.on_nan: stop`` raises :class:`NonFiniteError` for,
        the non-finite steps among them (they changed nothing)."""
        if not results:
            return []
        table = torch.stack([r.values for r in results]).tolist()
        watched = [r for r in results if r.health is not None]
        health = dict(zip((r.step for r in watched), torch.stack([r.health for r in watched]).tolist())) \
            if watched else {}
        rows, k = [], len(self.averaged)
        for result, values in zip(results, table):
            (loss, *_), (skipped, first_bad, bad_norm) = values[:k], values[k:]
            row = {**dict(zip(self.averaged, values[:k])), **result.host, "skipped_step": int(skipped)}
            if result.step in health:
                rank_me, pred_cos, *block_loss = health[result.step]
                row.update(rankme=rank_me, pred_cos=pred_cos,
                           **{f"loss_block{i + 1}": v for i, v in enumerate(block_loss)})
            rows.append(row)
            if not skipped:
                self.skipped_in_a_row = 0
                continue
            if loss != loss or abs(loss) == float("inf"):
                problem = f"loss ({loss})"
            elif first_bad >= 0:
                problem = f"gradient of {result.grad_names[int(first_bad)]} (norm {bad_norm})"
            else:
                problem = "gradient (in another rank's shard)"
            self._on_non_finite(problem, result.step)
        return rows

    def _on_non_finite(self, problem: str, step: int) -> None:
        self.skipped_in_a_row += 1
        if self.on_nan == "stop" or self.skipped_in_a_row > MAX_SKIPPED_STEPS_IN_A_ROW:
            repeat = f" for {self.skipped_in_a_row} steps in a row" if self.skipped_in_a_row > 1 else ""
            raise NonFiniteError(f"non-finite {problem} at step {step}{repeat}; the run stopped.")
        if self.processes.is_main:
            self.warn(f"imagejepa: warning: non-finite {problem} at step {step}: step skipped "
                      "(train.on_nan=skip_step)")


def _first_non_finite(grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index of the first gradient that is not finite, or -1; its norm)`` as device
    tensors: one foreach norm, nothing read back."""
    norms = torch.stack(torch._foreach_norm(grads)).float()
    bad = ~norms.isfinite()
    # A Python scalar in where() (not a new tensor: a host-to-device copy), and gather (not
    # indexing by a 0-dim tensor, which reads the index back).
    index = torch.where(bad.any(), bad.int().argmax(), -1)
    return index, norms.gather(0, index.clamp(min=0)[None])[0]
