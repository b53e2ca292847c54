"""Attentive probe (the V-JEPA protocol): one learned query cross-attends over the frozen
patch tokens, one pre-norm block (cross-attention + MLP), then a linear classifier.

Unlike average pooling, the probe learns which tokens to weigh, so it reads spatial
information out of the patch features. Trained with the same held-out lr/wd sweep as the
linear probe.
"""

from __future__ import annotations

import torch
from torch import nn

from .heads import standardize, sweep_and_fit

LR_GRID = (1e-3, 3e-3)
WD_GRID = (1e-2,)


def _heads_for(dim: int, preferred: int = 4) -> int:
    """The largest head count <= ``preferred`` that divides ``dim``."""
    return next(h for h in range(preferred, 0, -1) if dim % h == 0)


class AttentiveProbe(nn.Module):
    """``(B, T, D)`` patch tokens -> ``(B, num_classes)`` logits."""

    def __init__(self, dim: int, num_classes: int, num_heads: int | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_tokens = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads or _heads_for(dim), batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm_out = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm_tokens(tokens)
        q = self.query.expand(len(tokens), -1, -1)  # (B, 1, D)
        q = q + self.attn(q, kv, kv, need_weights=False)[0]
        q = q + self.mlp(self.norm_mlp(q))
        return self.classifier(self.norm_out(q[:, 0]))


def attentive_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    lrs=LR_GRID, weight_decays=WD_GRID, epochs: int = 10, batch_size: int = 256, seed: int = 0,
    bf16: bool = False,
) -> dict:
    """Fit on train patch tokens ``(N, T, D)``, report top-1/top-5 on test tokens ``(M, T, D)``."""
    train_x, test_x = standardize(train_x, test_x)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    dim, device = train_x.shape[-1], train_x.device

    def make_head():
        return AttentiveProbe(dim, num_classes).to(device)

    return sweep_and_fit(make_head, train_x, train_y, test_x, test_y, lrs, weight_decays,
                         epochs, batch_size, seed, bf16)


def summary(result: dict) -> dict:
    return {"top-1": result["top1"], "top-5": result["top5"]}
