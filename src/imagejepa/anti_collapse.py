"""A term against collapse, added to I-JEPA's loss (``optim.anti_collapse``).

I-JEPA has none: nothing in its loss stops the encoder from mapping every patch to a few
directions, which makes the targets easy to predict. On small datasets it does exactly that
(the loss goes to ~0.003 and RankMe falls from 10 to 4 on 1,400 images). The variance-
covariance term of VICReg (Bardes et al., 2022), as JEPA variants such as C-JEPA use it,
keeps the **context encoder's** patch features spread out; the target encoder, its moving
average, follows.

    z    = layer_norm(context encoder's patch tokens)          (N tokens, D), as the targets are
    var  = mean_d relu(1 - sqrt(Var[z_d] + eps))               every dimension keeps spread
    cov  = sum_{i != j} Cov[z]_ij^2 / D                         dimensions carry different things

The statistics are over every context token of the global batch: each rank sums its
tokens' first and second moments, and the sums are added over ranks with an autograd-aware
all-reduce, so N processes with B/N images each compute the very term one process with B
images does, gradients included. (With ``optim.grad_accum`` K they are over each of the K
parts of the batch, which is what a K-times smaller batch would see.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .runtime import without_autocast

KINDS = ("none", "vc")
EPS = 1e-4


class _SumOverRanks(torch.autograd.Function):
    """An all-reduce (sum) with a gradient: every rank's input feeds every rank's output, so
    the gradient of a rank's input is the sum over ranks of the output's gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks; its gradient flows back to every rank's own ``x``."""
    if x.device.type == "meta" or not (dist.is_available() and dist.is_initialized()) \
            or dist.get_world_size() == 1:  # meta: FLOPs counted on shapes alone
        return x
    return _SumOverRanks.apply(x)


def variance_covariance(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(variance term, covariance term)`` of ``tokens (..., D)`` (layer-normed here, without
    affine, in float32), over every token of the global batch."""
    # float32 under any autocast: a bf16 z.T @ z loses the covariance to cancellation.
    with without_autocast(tokens.device.type):
        return _terms(F.layer_norm(tokens.float(), tokens.shape[-1:]).reshape(-1, tokens.shape[-1]))


def _terms(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dim = z.shape[1]
    count = z.new_full((1,), z.shape[0])  # filled on the device: no copy from the host
    # One all-reduce: the token count, the sum and the (D, D) sum of outer products.
    moments = sum_over_ranks(torch.cat([count, z.sum(0), (z.T @ z).flatten()]))
    n, total, outer = moments[0], moments[1 : dim + 1], moments[dim + 1 :].view(dim, dim)
    mean = total / n
    cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
    variance = F.relu(1.0 - (cov.diagonal() + EPS).sqrt()).mean()
    off_diagonal = cov - torch.diag_embed(cov.diagonal())
    covariance = off_diagonal.pow(2).sum() / dim
    return variance, covariance
