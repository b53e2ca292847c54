"""A stochastic decoder from patch features to pixels: conditional flow matching over a block.

The paper's predictor visualisation maps I-JEPA's predicted representations of a target
block back to pixels with a generative model, so that repeated samples show where the
prediction is certain (the same pixels each time) and where it is not. Here the generative
model is a small conditional flow-matching network (Lipman et al., 2023) over the pixels of
one block's patches:

    x1 = the block's pixels (B, K, P), x0 ~ N(0, I), t ~ U(0, 1), xt = (1 - t) x0 + t x1
    loss = || v(xt, t | features, positions) - (x1 - x0) ||^2

``v`` is a small transformer over the K patches of the block: each token is the sum of its
noisy pixels, its (layer-normed) feature, its position on the patch grid and the time, so
a patch's pixels are decoded from its own feature and its neighbours' in the block.
Sampling integrates ``dx/dt = v`` from noise at t=0 to pixels at t=1 (Euler steps).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import Block
from ..models.pos_embed import sincos_2d


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of flow times ``t (B,)`` in [0, 1]: ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t[:, None].float() * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class PixelDecoder(nn.Module):
    """``velocity(noisy (B, K, P), t (B,), features (B, K, D), positions (B, K)) -> (B, K, P)``;
    ``loss(pixels, features, positions)``; ``sample(features, positions) -> pixels (B, K, P)``.

    ``P = channels * patch_size**2`` pixels per patch (normalised like the encoder's input),
    ``D`` the encoder's width, ``positions`` indices into the row-major ``grid``.
    """

    def __init__(self, feature_dim: int, patch_size: int, channels: int, grid: tuple[int, int],
                 width: int = 128, depth: int = 3, num_heads: int = 4):
        super().__init__()
        self.spec = {"feature_dim": feature_dim, "patch_size": patch_size, "channels": channels,
                     "grid": list(grid), "width": width, "depth": depth, "num_heads": num_heads}
        self.patch_size, self.channels, self.grid = patch_size, channels, tuple(grid)
        pixels = channels * patch_size**2
        self.pixels_in = nn.Linear(pixels, width)
        self.feature_norm = nn.LayerNorm(feature_dim)
        self.features_in = nn.Linear(feature_dim, width)
        self.time_in = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.register_buffer("pos_embed", sincos_2d(width, *self.grid), persistent=False)  # (N, width)
        self.blocks = nn.ModuleList(Block(width, num_heads, 4 * width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, pixels)
        nn.init.zeros_(self.out.weight)  # starts as v = 0: a stable first step
        nn.init.zeros_(self.out.bias)

    @classmethod
    def from_spec(cls, spec: dict) -> PixelDecoder:
        return cls(**{**spec, "grid": tuple(spec["grid"])})

    def velocity(self, noisy: torch.Tensor, t: torch.Tensor, features: torch.Tensor,
                 positions: torch.Tensor) -> torch.Tensor:
        x = (self.pixels_in(noisy) + self.features_in(self.feature_norm(features))
             + self.pos_embed[positions] + self.time_in(time_embedding(t, self.out.in_features))[:, None])
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))

    def loss(self, pixels: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching loss of one batch of blocks: ``pixels (B, K, P)``."""
        noise = torch.randn(pixels.shape, generator=generator, device="cpu").to(pixels)
        t = torch.rand(pixels.shape[0], generator=generator, device="cpu").to(pixels.device)
        noisy = (1 - t)[:, None, None] * noise + t[:, None, None] * pixels
        return F.mse_loss(self.velocity(noisy, t, features, positions), pixels - noise)

    @torch.no_grad()
    def sample(self, features: torch.Tensor, positions: torch.Tensor, steps: int = 16,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One sample of the pixels ``(B, K, P)`` of blocks with ``features (B, K, D)``."""
        shape = (*positions.shape, self.channels * self.patch_size**2)
        x = torch.randn(shape, generator=generator, device="cpu").to(features.device, features.dtype)
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((shape[0],), i * dt, device=features.device)
            x = x + dt * self.velocity(x, t, features, positions)
        return x
