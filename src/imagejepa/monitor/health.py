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

from collections import deque

import torch
import torch.nn.functional as F

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
    if loss == "smooth_l1":
        per_element = F.smooth_l1_loss(predicted, target, beta=1.0, reduction="none")
    else:
        per_element = F.mse_loss(predicted, target, reduction="none")
    return {
        "rankme": rankme(target),
        "pred_cos": F.cosine_similarity(predicted, target, dim=-1).mean(),
        "block_loss": per_element.mean(dim=(0, 2, 3)),
    }


WHAT_TO_TRY = ("try a lower optim.lr, a slower EMA (optim.ema starting nearer 1, e.g. [0.996, 1.0]), "
               "a longer warm-up (optim.warmup_epochs) or a smaller batch")


class _OncePerEpisode:
    """``first(bad) -> bool``: true when ``bad`` starts an episode (the first bad value
    after good ones), so a warning is given once per episode, not at every step of it."""

    def __init__(self):
        self.warned = False

    def first(self, bad: bool) -> bool:
        if not bad:
            self.warned = False
            return False
        started, self.warned = not self.warned, True
        return started


class CollapseMonitor:
    """Warns when the mean of the last ``window`` ``target_std`` values falls below ``threshold``.

    ``update(step, target_std)`` returns a warning line the first time the windowed mean
    drops below the threshold, and again only after it has recovered above it in between.
    """

    def __init__(self, threshold: float | None, window: int = 20):
        self.threshold = threshold
        self.recent: deque[float] = deque(maxlen=window)
        self.episode = _OncePerEpisode()

    @property
    def collapsing(self) -> bool:
        """Whether the last value was still below the threshold (an episode not yet over)."""
        return self.episode.warned

    def update(self, step: int, target_std: float) -> str | None:
        if self.threshold is None or target_std != target_std:  # disabled, or a NaN step
            return None
        self.recent.append(target_std)
        mean = sum(self.recent) / len(self.recent)
        if not self.episode.first(mean < self.threshold):
            return None
        return (
            f"imagejepa: warning: possible representation collapse at step {step}: the target "
            f"features' per-dimension std is {mean:.4f} (mean of the last {len(self.recent)} "
            f"steps), below train.collapse_std={self.threshold}; {WHAT_TO_TRY}"
        )


class RankMonitor:
    """Warns when RankMe falls below ``drop`` x the highest RankMe seen so far in the run
    (features spreading over fewer and fewer directions), once per episode like
    :class:`CollapseMonitor`. ``update(step, rankme) -> warning line or None``."""

    def __init__(self, drop: float | None):
        self.drop = drop
        self.best = 0.0
        self.episode = _OncePerEpisode()

    @property
    def collapsing(self) -> bool:
        """Whether the last value was still below the drop (an episode not yet over)."""
        return self.episode.warned

    def update(self, step: int, value: float) -> str | None:
        if self.drop is None or value != value:
            return None
        self.best = max(self.best, value)
        if not self.episode.first(value < self.drop * self.best):
            return None
        return (
            f"imagejepa: warning: possible representation collapse at step {step}: RankMe of the "
            f"target features fell to {value:.1f}, below monitor.rankme_drop={self.drop} x its "
            f"highest value in this run ({self.best:.1f}); the features span fewer and fewer "
            f"directions; {WHAT_TO_TRY}"
        )
