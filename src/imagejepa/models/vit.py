"""The I-JEPA encoder: a Vision Transformer with no class token and fixed sin-cos positions.

``Encoder(images, keep)`` embeds every patch, adds its position, keeps only the patches
listed in ``keep`` (the context block during pretraining), and runs pre-norm blocks and a
final LayerNorm over what is left.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import LAYER_NORM_EPS, Block, PatchEmbed, init_weights, place_buffer, run_block
from .pos_embed import resample_grid, sincos_2d


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


POS_EMBED_KINDS = ("sincos", "learned")


class Encoder(nn.Module):
    """ViT encoder. ``forward(images (B, C, H, W), keep (B, K) | None) -> (B, K or N, D)``.

    ``depth``, ``embed_dim`` etc. override the table entry of ``arch`` (small test models).
    ``pos_embed="sincos"`` (I-JEPA) recomputes the fixed embedding for any image size;
    ``pos_embed="learned"`` holds a trainable ``(1, N, D)`` table for the grid ``pos_grid``
    (imports of models whose positions are not sin-cos) and resamples it bicubically when
    the image size changes. ``norm_eps`` is the LayerNorm epsilon (1e-6 in I-JEPA).
    ``device`` and ``dtype`` place the parameters as they are made (``"meta"``: shapes only).
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
        norm_eps: float = LAYER_NORM_EPS,
        pos_embed: str = "sincos",
        pos_grid: tuple[int, int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        spec = get_arch(arch)
        if pos_embed not in POS_EMBED_KINDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBED_KINDS}, got {pos_embed!r}")
        self.arch = arch
        self.embed_dim = embed_dim or spec.embed_dim
        self.depth = depth or spec.depth
        self.num_heads = num_heads or spec.num_heads
        self.mlp_hidden_dim = mlp_hidden_dim or (spec.mlp_hidden_dim * self.embed_dim // spec.embed_dim)
        self.norm_eps = norm_eps
        self.pos_kind = pos_embed
        self.patch_size = patch_size
        self.in_chans = in_chans
        factory = {"device": device, "dtype": dtype}
        self.patch_embed = PatchEmbed(patch_size, in_chans, self.embed_dim, **factory)
        self.checkpoint_blocks = False  # activation checkpointing (train.activation_checkpointing)
        self.blocks = nn.ModuleList(
            Block(self.embed_dim, self.num_heads, self.mlp_hidden_dim, norm_eps=norm_eps, **factory)
            for _ in range(self.depth)
        )
        self.norm = nn.LayerNorm(self.embed_dim, eps=norm_eps, **factory)
        self.set_img_size(img_size)
        if pos_embed == "learned":
            self.pos_grid = tuple(pos_grid or self.grid)
            self.pos_embed = nn.Parameter(torch.zeros(1, self.pos_grid[0] * self.pos_grid[1], self.embed_dim,
                                                      **factory))
        self.apply(init_weights)
        if pos_embed == "learned":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def set_img_size(self, img_size: int | tuple[int, int]) -> None:
        """Run at another input size (any resolution, square or not).

        Sin-cos positions are recomputed for the new grid; a learned table is kept at its
        own grid and resampled in :meth:`position_embedding`.
        """
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
        self.img_size = (h, w)
        self.grid = (h // p, w // p)
        if self.pos_kind == "sincos":
            # Not persistent: a pure function of the grid, recomputed rather than loaded.
            pos = place_buffer(sincos_2d(self.embed_dim, *self.grid)[None], self.patch_embed.proj.weight)
            self.register_buffer("pos_embed", pos, persistent=False)

    def position_embedding(self) -> torch.Tensor:
        """Positions of the current grid: ``(1, N, D)``."""
        if self.pos_kind == "sincos":
            return self.pos_embed
        return resample_grid(self.pos_embed, self.pos_grid, self.grid)

    def spec(self) -> dict:
        """Everything needed to rebuild this encoder (plain JSON types); see :meth:`from_spec`."""
        spec = {
            "arch": self.arch, "patch_size": self.patch_size, "img_size": list(self.img_size),
            "in_chans": self.in_chans, "embed_dim": self.embed_dim, "depth": self.depth,
            "num_heads": self.num_heads, "mlp_hidden_dim": self.mlp_hidden_dim,
            "norm_eps": self.norm_eps, "pos_embed": self.pos_kind,
        }
        if self.pos_kind == "learned":
            spec["pos_grid"] = list(self.pos_grid)
        return spec

    @classmethod
    def from_spec(cls, spec: dict) -> Encoder:
        """The encoder a :meth:`spec` dict describes (random weights; load a state dict next)."""
        spec = dict(spec)
        img_size = tuple(spec.pop("img_size"))
        pos_grid = spec.pop("pos_grid", None)
        return cls(
            spec.pop("arch"), spec.pop("patch_size"), img_size, spec.pop("in_chans"),
            pos_grid=tuple(pos_grid) if pos_grid else None, **spec,
        )

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def embed_patches(self, images: torch.Tensor, any_size: bool = False) -> torch.Tensor:
        """``(B, C, H, W) -> (B, N, D)``: patch tokens plus positions, before any block.

        ``any_size``: images of another size than the encoder's (DINO's local crops) get the
        sin-cos positions of their own grid, or the learned table resampled to it."""
        size = tuple(images.shape[-2:])
        if any_size and size != self.img_size:
            p = self.patch_size
            grid = (size[0] // p, size[1] // p)
            if self.pos_kind == "sincos":
                pos = sincos_2d(self.embed_dim, *grid)[None].to(images.device)
            else:
                pos = resample_grid(self.pos_embed, self.pos_grid, grid)
            return self.patch_embed(images) + pos.to(images.dtype)
        if size != self.img_size:
            raise ValueError(
                f"expected images of size {self.img_size}, got {tuple(images.shape[-2:])}; "
                "call set_img_size() to run at another resolution"
            )
        return self.patch_embed(images) + self.position_embedding().to(images.dtype)

    def forward(
        self, images: torch.Tensor, keep: torch.Tensor | None = None, *, out_layers: int = 1,
        any_size: bool = False,
    ) -> torch.Tensor:
        """Tokens after the final norm: ``(B, K, D)`` (``keep`` given) or ``(B, N, D)``.

        ``out_layers=k > 1`` returns the last k blocks' outputs, each through the final
        norm, stacked: ``(k, B, N, D)`` (the paper's "last 4 layers" features).
        """
        if not 1 <= out_layers <= self.depth:
            raise ValueError(f"out_layers must be within [1, depth={self.depth}], got {out_layers}")
        x = self.embed_patches(images, any_size)
        if keep is not None:
            x = gather_tokens(x, keep)
        outs = []
        for i, block in enumerate(self.blocks):
            x = run_block(block, x, self.checkpoint_blocks)
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
