"""Linear probe: a linear head (optionally BatchNorm + linear) on frozen, pooled features.

The paper's protocol made practical: features are whitened with training statistics (a
fixed linear map, see :func:`heads.whiten`), learning rate and weight decay are swept on
a held-out 10% of the training split, and the
best setting is retrained on the whole training split and scored on the test split.
"""

from __future__ import annotations

import torch

from .heads import sweep_and_fit, whiten

LR_GRID = (3e-3, 1e-2, 3e-2)
WD_GRID = (1e-4, 1e-2)


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    batchnorm: bool = False, lrs=LR_GRID, weight_decays=WD_GRID, epochs: int = 20,
    batch_size: int = 1024, seed: int = 0,
) -> dict:
    """Fit on train features ``(N, D)``, report top-1/top-5 on test features ``(M, D)``."""
    train_x, test_x = whiten(train_x.float(), test_x.float())
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    dim, device = train_x.shape[1], train_x.device  # dim: after dropping no-variance directions

    def make_head():
        linear = torch.nn.Linear(dim, num_classes, device=device)
        if not batchnorm:
            return linear
        return torch.nn.Sequential(torch.nn.BatchNorm1d(dim, device=device), linear)

    return sweep_and_fit(make_head, train_x, train_y, test_x, test_y, lrs, weight_decays,
                         epochs, batch_size, seed)


def summary(result: dict) -> dict:
    return {"top-1": result["top1"], "top-5": result["top5"]}
