"""Softmax attention written out as two matmuls: the reference SDPA is tested against, and the
kernel that trains on CPU in bf16 (:func:`imagejepa.runtime.attention_kernel`) and the bf16
inference blocks (:mod:`imagejepa.inference.block`) run."""

from __future__ import annotations

import torch


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention written out; the reference that SDPA is tested against.

    q, k, v: ``(B, heads, N, head_dim)`` -> ``(B, heads, N, head_dim)``.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # scale the smaller operand
    return scores.softmax(dim=-1) @ v
