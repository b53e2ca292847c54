"""The narrow predictor: from context tokens to the representations of each target block.

Each target block is predicted in a sequence of its own, ``[context tokens, mask tokens of
that block]``, so target blocks never attend to each other. Names follow the official code
(``predictor_embed``, ``mask_token``, ``predictor_blocks`` ...).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import LAYER_NORM_EPS, Block, init_weights, place_buffer, run_block
from .pos_embed import sincos_2d
from .vit import gather_tokens


class Predictor(nn.Module):
    """``forward(context (B, Kc, D), context_idx (B, Kc), target_idx (B, T, Kt)) -> (B, T, Kt, O)``,
    ``O = out_dim`` (default ``D``: representations; the pixels of a patch for MAE's decoder
    and the pixel-target ablation). ``device`` and ``dtype`` place the parameters as they are made."""

    def __init__(
        self,
        embed_dim: int,
        grid: tuple[int, int],
        pred_dim: int = 384,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_dim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.out_dim = out_dim or embed_dim
        self.pred_dim = pred_dim
        self.predictor_embed = nn.Linear(embed_dim, pred_dim, **factory)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_dim, **factory))
        self.checkpoint_blocks = False  # activation checkpointing (train.activation_checkpointing)
        self.predictor_blocks = nn.ModuleList(
            Block(pred_dim, num_heads, int(pred_dim * mlp_ratio), **factory)
            for _ in range(depth)
        )
        self.predictor_norm = nn.LayerNorm(pred_dim, eps=LAYER_NORM_EPS, **factory)
        self.predictor_proj = nn.Linear(pred_dim, self.out_dim, **factory)
        self.set_grid(grid)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def set_grid(self, grid: tuple[int, int]) -> None:
        self.grid = tuple(grid)
        pos = place_buffer(sincos_2d(self.pred_dim, *self.grid)[None], self.mask_token)
        self.register_buffer("pos_embed", pos, persistent=False)

    def forward(
        self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor
    ) -> torch.Tensor:
        B, Kc, _ = context.shape
        _, T, Kt = target_idx.shape
        pos = self.pos_embed.expand(B, -1, -1)
        x = self.predictor_embed(context) + gather_tokens(pos, context_idx).to(context.dtype)
        # One sequence per (sample, target): (B * T, Kc + Kt, P).
        x = x[:, None].expand(-1, T, -1, -1).reshape(B * T, Kc, self.pred_dim)
        queries = gather_tokens(pos, target_idx).reshape(B * T, Kt, self.pred_dim)
        queries = queries.to(x.dtype) + self.mask_token.to(x.dtype)
        x = torch.cat([x, queries], dim=1)
        for block in self.predictor_blocks[:-1]:
            x = run_block(block, x, self.checkpoint_blocks)
        # Only the mask tokens' outputs are read: the last block computes just those (the
        # context tokens' keys and values are still used). Same values, a fraction of the work.
        x = run_block(self.predictor_blocks[-1], x, self.checkpoint_blocks, queries_from=Kc)
        x = self.predictor_norm(x)
        return self.predictor_proj(x).reshape(B, T, Kt, self.out_dim)
