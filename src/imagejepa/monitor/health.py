"""Representation health: is the run collapsing, and is the predictor learning?

I-JEPA has no loss term against collapse: the encoder may map every patch to (nearly) the
same vector, the loss then goes to ~0 and the features become useless. Three symptoms,
computed on the current batch from what the step already has (no extra forward pass):

- the per-dimension std of the target features falls towards 0 (logged every step as
  ``target_std``; a healthy Fashion-MNIST run keeps a few tenths, a collapsing one falls
  below 0.1);
- RankMe (Garrido et al., 2023), the effective rank of the target features, falls: the
  features occupy fewer and fewer directions. It is ``exp`` of the entropy of the
  normalised singular values, so ``r`` equal singular values give exactly ``r``;
- the predictions' cosine to their targets and the loss of each target block say how well
  the predictor does, block by block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..jepa import prediction_loss

EPS = 1e-7


@torch.no_grad()
def rankme(features: torch.Tensor) -> torch.Tensor:
    """Effective rank of ``(N, D)`` features: ``exp(-sum p log p)``, ``p = s / sum(s)`` over
    the singular values ``s`` (computed from the ``(D, D)`` Gram matrix in float64, so the
    cost does not grow with N beyond one matmul)."""
    x = features.reshape(-1, features.shape[-1]).double()
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    singular = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt()
    p = singular / singular.sum().clamp(min=EPS) + EPS
    return torch.exp(-(p * p.log()).sum()).float()


@torch.no_grad()
def health_metrics(predicted: torch.Tensor, target: torch.Tensor, loss: str) -> dict[str, torch.Tensor]:
    """From ``predicted`` and ``target`` ``(B, T, K, D)`` (T target blocks of K tokens):
    ``rankme`` of the target tokens, ``pred_cos`` (mean cosine of each prediction to its
    target) and ``block_loss`` ``(T,)``, the loss of each target block. Device tensors."""
    predicted, target = predicted.float(), target.float()
    per_element = prediction_loss(predicted, target, loss, reduction="none")
    return {
        "rankme": rankme(target),
        "pred_cos": F.cosine_similarity(predicted, target, dim=-1).mean(),
        "block_loss": per_element.mean(dim=(0, 2, 3)),
    }
