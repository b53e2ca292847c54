"""Building blocks of the Vision Transformer: patch embedding, attention, MLP, pre-norm block.

Parameter names follow the official I-JEPA / timm layout (``patch_embed.proj``,
``attn.qkv``, ``mlp.fc1`` ...) so that checkpoints map onto them by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LAYER_NORM_EPS = 1e-6


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, N, C*p*p)``: each patch's pixels, patches in row-major grid order
    (the order of the encoder's tokens)."""
    p = patch_size
    tokens = images.unfold(2, p, p).unfold(3, p, p)  # (B, C, H/p, W/p, p, p)
    return tokens.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int], patch_size: int, channels: int) -> torch.Tensor:
    """``(B, N, C*p*p) -> (B, C, H, W)``, the inverse of :func:`patchify`."""
    (h, w), p = grid, patch_size
    x = tokens.reshape(-1, h, w, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, channels, h * p, w * p)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with one strided convolution.

    ``(B, C, H, W) -> (B, (H/p) * (W/p), D)``, tokens in raster order.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, device=None, dtype=None):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size,
                              device=device, dtype=dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(
                f"image size {tuple(images.shape[-2:])} is not divisible by patch size {p}"
            )
        # Contiguous tokens: a transposed view would make every later residual add keep the
        # transposed layout, and each LayerNorm and matmul would copy it back (measured: ~7%
        # of a ViT-H/14 forward on CPU).
        return self.proj(images).flatten(2).transpose(1, 2).contiguous()


class Attention(nn.Module):
    """Multi-head self-attention: ``(B, N, D) -> (B, N, D)``.

    The softmax attention itself is ``self.kernel(q, k, v)``, ``F.scaled_dot_product_attention``
    unless the runtime picks another with the same values (:func:`use_attention_kernel`: the
    written-out form trains faster on CPU in bf16, see ``benchmarks/attention.py``).
    """

    def __init__(self, dim: int, num_heads: int, device=None, dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.kernel = F.scaled_dot_product_attention

    def forward(self, x: torch.Tensor, queries_from: int = 0) -> torch.Tensor:
        """``(B, N, D) -> (B, N - queries_from, D)``: with ``queries_from=s`` only tokens ``s:``
        are computed (they still attend to all N), for callers that keep only those."""
        B, N, D = x.shape
        q, k, v = self.heads(x, queries_from)
        x = self.kernel(q, k, v)  # (B, heads, N - queries_from, head_dim)
        return self.proj(x.transpose(1, 2).reshape(B, N - queries_from, D))

    def heads(self, x: torch.Tensor, queries_from: int = 0) -> tuple[torch.Tensor, ...]:
        """Queries of tokens ``queries_from:``, keys and values of all: each ``(B, heads, *, D / heads)``."""
        B, N, D = x.shape
        shape = (B, -1, self.num_heads, D // self.num_heads)
        if queries_from:  # two matmuls: the queries of the kept tokens, keys and values of all
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, queries_from:], w[:D], b[:D]).reshape(shape).transpose(1, 2)
            k, v = F.linear(x, w[D:], b[D:]).reshape(B, N, 2, *shape[2:]).permute(2, 0, 3, 1, 4)
            return q, k, v
        return self.qkv(x).reshape(B, N, 3, *shape[2:]).permute(2, 0, 3, 1, 4).unbind(0)


class Mlp(nn.Module):
    """``Linear -> GELU -> Linear``: ``(..., D) -> (..., D)`` through a hidden width."""

    def __init__(self, dim: int, hidden_dim: int, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden_dim: int,
                 norm_eps: float = LAYER_NORM_EPS, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **factory)
        self.attn = Attention(dim, num_heads, **factory)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **factory)
        self.mlp = Mlp(dim, mlp_hidden_dim, **factory)

    def forward(self, x: torch.Tensor, queries_from: int = 0) -> torch.Tensor:
        """``(B, N, D) -> (B, N - queries_from, D)``: ``queries_from=s`` computes only the
        outputs of tokens ``s:`` (attending to all N), the same values as ``forward(x)[:, s:]``
        at a fraction of the cost when few tokens are kept (the predictor's last block)."""
        x = x[:, queries_from:] + self.attn(self.norm1(x), queries_from)
        return x + self.mlp(self.norm2(x))


def use_attention_kernel(model: nn.Module, kernel) -> None:
    """Run every :class:`Attention` of ``model`` with ``kernel(q, k, v) -> softmax(q k^T / sqrt(d)) v``
    (each ``(B, heads, N, head_dim)``): a choice of speed, never of values."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.kernel = kernel


def place_buffer(value: torch.Tensor, beside: torch.Tensor) -> torch.Tensor:
    """A buffer computed from the model's shape, moved beside the parameter ``beside``; left
    where it is while the parameters are on the meta device (they get their values later,
    the buffer keeps its own)."""
    return value if beside.device.type == "meta" else value.to(beside.device)


INIT_STD = 0.02


def init_weights(module: nn.Module, std: float = INIT_STD) -> None:
    """I-JEPA initialisation: Linear/Conv trunc-normal(std), biases 0, LayerNorm (1, 0)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def initial_value(owner: nn.Module, name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """The initial value of ``owner``'s own parameter ``name`` by :func:`init_weights`' rules
    (a network's own tokens and tables, a mask token or a position table: trunc-normal too),
    drawn on the CPU in fp32 from ``generator``."""
    if isinstance(owner, nn.LayerNorm):
        return torch.ones(shape) if name == "weight" else torch.zeros(shape)
    if isinstance(owner, (nn.Linear, nn.Conv2d)) and name == "bias":
        return torch.zeros(shape)
    return nn.init.trunc_normal_(torch.empty(shape), std=INIT_STD, generator=generator)


def run_block(block: nn.Module, x: torch.Tensor, recompute: bool, **kwargs) -> torch.Tensor:
    """``block(x)``; with ``recompute`` (activation checkpointing, while training) its
    activations are not kept but recomputed in the backward pass: less memory, more compute."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False, **kwargs)
    return block(x, **kwargs)
