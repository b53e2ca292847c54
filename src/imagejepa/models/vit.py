"""The I-JEPA encoder: a Vision Transformer with no class token and fixed sin-cos positions.

``Encoder(images, keep)`` embeds every patch, adds its position, keeps only the patches
listed in ``keep`` (the context block during pretraining), and runs pre-norm blocks and a
final LayerNorm over what is left.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import LAYER_NORM_EPS, Block, PatchEmbed, init_weights
from .pos_embed import sincos_2d


@dataclass(frozen=True)
class Arch:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden_dim: int


# Widths, depths and heads of the paper's encoders (MLP ratio 4, except giant: 6144).
ARCHS: dict[str, Arch] = {
    "vit_tiny": Arch(192, 12, 3, 768),
    "vit_small": Arch(384, 12, 6, 1536),
    "vit_base": Arch(768, 12, 12, 3072),
    "vit_large": Arch(1024, 24, 16, 4096),
    "vit_huge": Arch(1280, 32, 16, 5120),
    "vit_giant": Arch(1408, 40, 16, 6144),
}


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; allowed: {', '.join(ARCHS)}")
    return ARCHS[name]


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Select tokens per sample: x ``(B, N, D)``, index ``(B, *S)`` -> ``(B, *S, D)``."""
    B, D = x.shape[0], x.shape[-1]
    flat = index.reshape(B, -1, 1).expand(-1, -1, D)
    return torch.gather(x, 1, flat).reshape(*index.shape, D)


class Encoder(nn.Module):
    """ViT encoder. ``forward(images (B, C, H, W), keep (B, K) | None) -> (B, K or N, D)``.

    ``depth``, ``embed_dim`` etc. override the table entry of ``arch`` (small test models).
    """

    def __init__(
        self,
        arch: str = "vit_tiny",
        patch_size: int = 16,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        *,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_hidden_dim: int | None = None,
        use_sdpa: bool = True,
    ):
        super().__init__()
        spec = get_arch(arch)
        self.arch = arch
        self.embed_dim = embed_dim or spec.embed_dim
        self.depth = depth or spec.depth
        self.num_heads = num_heads or spec.num_heads
        hidden = mlp_hidden_dim or (spec.mlp_hidden_dim * self.embed_dim // spec.embed_dim)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.patch_embed = PatchEmbed(patch_size, in_chans, self.embed_dim)
        self.blocks = nn.ModuleList(
            Block(self.embed_dim, self.num_heads, hidden, use_sdpa=use_sdpa)
            for _ in range(self.depth)
        )
        self.norm = nn.LayerNorm(self.embed_dim, eps=LAYER_NORM_EPS)
        self.set_img_size(img_size)
        self.apply(init_weights)

    def set_img_size(self, img_size: int | tuple[int, int]) -> None:
        """Recompute the fixed position embedding for a new input size (any resolution)."""
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
        self.img_size = (h, w)
        self.grid = (h // p, w // p)
        # Not persistent: a pure function of the grid, recomputed rather than loaded.
        pos = sincos_2d(self.embed_dim, *self.grid)[None].to(self.patch_embed.proj.weight.device)
        self.register_buffer("pos_embed", pos, persistent=False)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, N, D)``: patch tokens plus positions, before any block."""
        if tuple(images.shape[-2:]) != self.img_size:
            raise ValueError(
                f"expected images of size {self.img_size}, got {tuple(images.shape[-2:])}; "
                "call set_img_size() to run at another resolution"
            )
        return self.patch_embed(images) + self.pos_embed.to(images.dtype)

    def forward(
        self, images: torch.Tensor, keep: torch.Tensor | None = None, *, out_layers: int = 1
    ) -> torch.Tensor:
        """Tokens after the final norm: ``(B, K, D)`` (``keep`` given) or ``(B, N, D)``.

        ``out_layers=k > 1`` returns the last k blocks' outputs, each through the final
        norm, stacked: ``(k, B, N, D)`` (the paper's "last 4 layers" features).
        """
        if not 1 <= out_layers <= self.depth:
            raise ValueError(f"out_layers must be within [1, depth={self.depth}], got {out_layers}")
        x = self.embed_patches(images)
        if keep is not None:
            x = gather_tokens(x, keep)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= self.depth - out_layers:
                outs.append(x)
        if out_layers == 1:
            return self.norm(x)
        return torch.stack([self.norm(o) for o in outs])

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens of every patch: ``(B, C, H, W) -> (B, N, D)``."""
        return self(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Average-pooled patch tokens (no class token): ``(B, C, H, W) -> (B, D)``."""
        return self(images).mean(dim=1)
