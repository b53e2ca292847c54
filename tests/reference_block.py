"""The transformer block as it was before the model was made plain (commit 0a71397), kept as
the reference the plain block is tested against: its three paths (the predictor's
``queries_from``, the training path, in-place ops without gradients) and its attention switch.
Its bf16 CPU inference branch moved to ``imagejepa.inference`` and is tested there."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imagejepa.models.layers import LAYER_NORM_EPS
from imagejepa.models.softmax_attention import plain_attention


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    ``(B, N, D) -> (B, N, D)``. ``use_sdpa=False`` switches to :func:`plain_attention`.
    On CPU in bf16 the written-out form is used too: PyTorch's CPU flash kernel runs
    forward + backward 1.6x to 5x slower than two bf16 batched matmuls at ViT sequence
    lengths (30-196 tokens) on an AVX512-BF16 machine; in fp32 SDPA is the faster one
    (``benchmarks/attention.py``).
    """

    def __init__(self, dim: int, num_heads: int, use_sdpa: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.use_sdpa = use_sdpa
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, queries_from: int = 0) -> torch.Tensor:
        """``(B, N, D) -> (B, N - queries_from, D)``: with ``queries_from=s`` only tokens ``s:``
        are computed (they still attend to all N), for callers that keep only those."""
        B, N, D = x.shape
        heads = self.num_heads
        if queries_from:  # queries of the kept tokens, keys and values of all
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, queries_from:], w[:D], b[:D]).reshape(B, N - queries_from, 1, heads, D // heads)
            kv = F.linear(x, w[D:], b[D:]).reshape(B, N, 2, heads, D // heads)
            q = q.permute(2, 0, 3, 1, 4)[0]
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        else:
            qkv = self.qkv(x).reshape(B, N, 3, heads, D // heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        if self.use_sdpa and not (q.device.type == "cpu" and q.dtype == torch.bfloat16):
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = plain_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, q.shape[2], D))


class Mlp(nn.Module):
    """``Linear -> GELU -> Linear``: ``(..., D) -> (..., D)`` through a hidden width."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if _plain_inference(h):  # GELU in place: no second (..., hidden) buffer to allocate and fill
            return self.fc2(torch.ops.aten.gelu_(h))
        return self.fc2(self.act(h))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_hidden_dim: int, use_sdpa: bool = True,
        norm_eps: float = LAYER_NORM_EPS,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, use_sdpa=use_sdpa)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden_dim)

    def forward(self, x: torch.Tensor, queries_from: int = 0) -> torch.Tensor:
        """``(B, N, D) -> (B, N - queries_from, D)``: ``queries_from=s`` computes only the
        outputs of tokens ``s:`` (attending to all N), the same values as ``forward(x)[:, s:]``
        at a fraction of the cost when few tokens are kept (the predictor's last block)."""
        if queries_from:
            x = x[:, queries_from:] + self.attn(self.norm1(x), queries_from)
        else:
            x = x + self.attn(self.norm1(x))
        if _plain_inference(x):  # x is our own tensor by now (the input is left alone): add in place
            return x.add_(self.mlp(self.norm2(x)))
        return x + self.mlp(self.norm2(x))


def _plain_inference(x: torch.Tensor) -> bool:
    """No gradients and no autocast: tensors may be updated in place, in their own dtype."""
    if torch.is_grad_enabled():
        return False
    try:
        return not torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know ('meta'): nothing is cast there
        return True
