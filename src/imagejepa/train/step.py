"""One optimisation step, the same on every rank.

Each rank takes its slice of the global batch (the loader gives it the images, this step the
masks, both drawn for the whole global batch from ``(seed, step)``) and splits that slice
into ``optim.grad_accum`` chunks. The loss of a chunk is a mean over its tokens and every
chunk of every rank has the same number of tokens, so averaging chunks here and ranks in
DDP gives the gradient of the global batch's mean loss: N processes x batch B/N train like
one process x batch B, and like one process with ``grad_accum`` N.
"""

from __future__ import annotations

import torch

from ..distributed import Processes, any_rank, gradient_sync, mean_over_ranks
from ..errors import NonFiniteError
from ..masking import Masks
from ..runtime import autocast
from ..utils.seeds import mix_seed
from .optim import set_lr_and_wd

MASK_STREAM = 0x3A5C
MAX_SKIPPED_STEPS_IN_A_ROW = 10  # with on_nan=skip_step: a run that only produces NaN stops


class TrainStep:
    """``step(images (b, C, H, W), step, (lr, wd, momentum)) -> metrics``, ``b`` this rank's
    part of the global batch. ``forward`` is the model as trained (DDP-wrapped, compiled);
    ``model`` the plain one (its optimiser, target encoder and parameters)."""

    def __init__(self, model, forward, optimizer, mask_sampler, seed: int, grad_accum: int,
                 device: torch.device, precision: str, processes: Processes, on_nan: str, warn):
        self.model, self.forward, self.optimizer, self.mask_sampler = model, forward, optimizer, mask_sampler
        self.seed, self.grad_accum, self.device, self.precision = seed, grad_accum, device, precision
        self.processes, self.on_nan, self.warn = processes, on_nan, warn
        self.skipped_in_a_row = 0
        self.last_checkpoint = None  # named in the message of a non-finite stop

    def masks(self, step: int, batch_size: int) -> Masks:
        """The masks of the whole global batch of ``step``: ``context (B, Kc)``, ``targets (B, T, Kt)``."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, step, MASK_STREAM))
        return self.mask_sampler(batch_size, g)

    def rank_masks(self, step: int, local_batch: int) -> Masks:
        """This rank's rows of the global batch's masks."""
        p = self.processes
        masks = self.masks(step, local_batch * p.world_size)
        rows = slice(p.rank * local_batch, (p.rank + 1) * local_batch)
        return Masks(masks.context[rows], masks.targets[rows])

    def __call__(self, images: torch.Tensor, step: int, schedule: tuple[float, float, float]) -> dict:
        """Forward and backward over the chunks, then the optimiser and EMA updates.

        A non-finite loss or gradient (on any rank: the loss is averaged over ranks, the
        gradients already are) leaves weights, optimiser and target encoder untouched on every
        rank and, with ``train.on_nan: stop``, raises :class:`NonFiniteError`."""
        lr, wd, momentum = schedule
        set_lr_and_wd(self.optimizer, lr, wd)
        masks = self.rank_masks(step, images.shape[0])
        images = images.to(self.device, non_blocking=True)
        masks = Masks(*(m.to(self.device, non_blocking=True) for m in masks))
        accum, n = self.grad_accum, images.shape[0]
        total_loss, sums = 0.0, {}
        for chunk in range(accum):
            part = slice(chunk * n // accum, (chunk + 1) * n // accum)
            # Gradients are averaged over ranks in the backward of the last chunk only.
            with gradient_sync(self.forward, enabled=chunk == accum - 1):
                with autocast(self.device, self.precision):
                    chunk_masks = Masks(masks.context[part], masks.targets[part])
                    loss, metrics = self.forward(images[part], chunk_masks)
                (loss / accum).backward()
            total_loss += loss.detach()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        local = {"loss": float(total_loss) / accum}
        local.update({k: float(v) / accum for k, v in sums.items()})
        out = {**mean_over_ranks(self.processes, local), "lr": lr, "weight_decay": wd, "ema": momentum}
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
        """What is not finite, ``"loss (nan)"`` or ``"gradient of encoder.x (inf)"``; else None.

        The loss is already averaged over ranks; the gradients are too, but sharded (FSDP2)
        each rank sees only its shards, so the ranks agree on whether any is non-finite."""
        if loss != loss or abs(loss) == float("inf"):
            return f"loss ({loss})"
        named = [(n, _local(p.grad)) for n, p in self.model.named_parameters() if p.grad is not None]
        norms = torch.stack(torch._foreach_norm([g for _, g in named]))
        finite = bool(norms.isfinite().all())
        if not any_rank(self.processes, not finite):
            return None
        if finite:
            return "gradient (in another rank's shard)"
        i = int((~norms.isfinite()).nonzero()[0])
        return f"gradient of {named[i][0]} (norm {float(norms[i])})"

    def _on_non_finite(self, problem: str, step: int) -> None:
        last = self.last_checkpoint or "none yet (the run would start from scratch)"
        self.skipped_in_a_row += 1
        if self.on_nan == "stop" or self.skipped_in_a_row > MAX_SKIPPED_STEPS_IN_A_ROW:
            repeat = f" for {self.skipped_in_a_row} steps in a row" if self.skipped_in_a_row > 1 else ""
            raise NonFiniteError(
                f"non-finite {problem} at step {step}{repeat}; the run stopped. Last good "
                f"checkpoint: {last}. Resume from it with --resume (a lower optim.lr or "
                "train.precision=fp32 may help), or set train.on_nan=skip_step to skip such steps"
            )
        if self.processes.is_main:
            self.warn(f"imagejepa: warning: non-finite {problem} at step {step}: step skipped "
                      "(train.on_nan=skip_step)")


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) gradient; the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t
