"""Representation health: per-dimension std of the target features, and a collapse warning.

I-JEPA can collapse: the encoder maps every patch to (nearly) the same vector, the loss
goes to ~0 and the features become useless. The symptom is that each feature dimension
stops varying across the batch. The targets are layer-normed per token, so a healthy run
keeps a per-dimension std of a few tenths (0.24-0.42 in the Fashion-MNIST recipe runs of
``benchmarks/README.md``), and a collapsing one falls towards 0 (0.10 and falling there).
"""

from __future__ import annotations

from collections import deque

import torch


def per_dim_std(features: torch.Tensor) -> torch.Tensor:
    """``(..., D)`` -> ``(D,)``: std of each dimension over all the leading axes."""
    return features.reshape(-1, features.shape[-1]).float().std(dim=0)


class CollapseMonitor:
    """Warns when the mean of the last ``window`` ``target_std`` values falls below ``threshold``.

    ``update(step, target_std)`` returns a warning line the first time the windowed mean
    drops below the threshold, and again only after it has recovered above it in between.
    """

    def __init__(self, threshold: float | None, window: int = 20):
        self.threshold = threshold
        self.recent: deque[float] = deque(maxlen=window)
        self.warned = False

    def update(self, step: int, target_std: float) -> str | None:
        if self.threshold is None or target_std != target_std:  # disabled, or a NaN step
            return None
        self.recent.append(target_std)
        mean = sum(self.recent) / len(self.recent)
        if mean >= self.threshold:
            self.warned = False
            return None
        if self.warned:
            return None
        self.warned = True
        return (
            f"imagejepa: warning: possible representation collapse at step {step}: the target "
            f"features' per-dimension std is {mean:.4f} (mean of the last {len(self.recent)} "
            f"steps), below train.collapse_std={self.threshold}; consider a lower optim.lr, "
            "a slower EMA (optim.ema) or a smaller batch"
        )
