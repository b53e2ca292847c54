"""Inference fast path for transformer blocks under bf16 autocast on CPU.

In eval mode under ``torch.autocast("cpu", torch.bfloat16)`` with gradients off, a block
computes what autocast would (bf16 matmuls accumulating in fp32, LayerNorm and the residual
stream in fp32) while skipping work eager autocast repeats on every call:

- weights are cast to bf16 and packed for oneDNN once, then cached (autocast casts every
  weight on every forward; the cache is dropped when a weight changes: in-place update,
  load, move);
- bias and GELU run inside the oneDNN matmul (``mkldnn._linear_pointwise``) instead of a
  bias copy before the GEMM and a separate pass over the ``(B, N, 4D)`` MLP activations;
- attention is the written-out bf16 form (faster than the CPU flash kernel in bf16 here,
  see ``benchmarks/attention.py``).

Measured on ViT-H/14 (``imagejepa bench embed``): these remove most of the non-matmul time.
Training (train mode, including the target encoder inside a training step), fp32, other
devices, and CPUs or builds that cannot run oneDNN's packed bf16 kernels (AVX2-only x86:
:func:`imagejepa.utils.cpu.packed_bf16_kernels`) take the ordinary autocast path: slower
there, and the same numbers up to bf16 rounding.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import cpu
from .softmax_attention import plain_attention


def active(x: torch.Tensor) -> bool:
    """Whether the fast path applies to a block input ``x``: CPU, fp32 stream, no grad, bf16
    autocast, and a CPU that runs the packed bf16 kernels."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and cpu.packed_bf16_kernels()
    )


# The two oneDNN kernels, behind names of our own (tests substitute reference versions on CPUs
# that cannot run them, to check the dispatch everywhere).
def pack_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """A bf16 ``(N, K)`` weight in oneDNN's blocked layout for ``rows``-row inputs."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def packed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                  gelu: bool) -> torch.Tensor:
    """``x @ W.T + bias``, then exact GELU if ``gelu``: bf16 ``(..., K) -> (..., N)``."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu" if gelu else "none", [],
                                              "none" if gelu else "")


# Linear -> (key, packed bf16 weight, bf16 bias). Weakly keyed: the cache lives and dies with
# its module, and is not part of it (not in state_dict, not deep-copied).
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _bf16_params(linear: nn.Linear, rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The Linear's weight in bf16, pre-packed in oneDNN's blocked layout, and its bias in
    bf16; cached until either tensor changes (in-place update, load, move).

    Packing once instead of on every matmul measured 4-7% faster GEMMs on ViT-H shapes;
    results are bit-identical. ``rows`` (the matmul's M) only hints the layout.
    """
    w, b = linear.weight, linear.bias
    try:
        key = (w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
    except RuntimeError:  # inference-mode tensors have no version counter: do not cache
        return w.to(torch.bfloat16), None if b is None else b.to(torch.bfloat16)
    cached = _CACHE.get(linear)
    if cached is None or cached[0] != key:
        packed = pack_weight(w.detach().to(torch.bfloat16), rows)
        cached = (key, packed, None if b is None else b.detach().to(torch.bfloat16))
        _CACHE[linear] = cached
    return cached[1], cached[2]


def linear(layer: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``layer(x)`` (then exact GELU if ``gelu``) as one bf16 oneDNN matmul: ``(..., K) -> (..., N)`` bf16."""
    w, b = _bf16_params(layer, x.numel() // x.shape[-1])
    return packed_matmul(x.to(torch.bfloat16), w, b, gelu)


def block_forward(block, x: torch.Tensor) -> torch.Tensor:
    """A pre-norm :class:`~imagejepa.models.layers.Block` on the fast path: ``(B, N, D) -> (B, N, D)``."""
    attn = block.attn
    B, N, D = x.shape
    with torch.autocast("cpu", enabled=False):  # dtypes are explicit below
        h = F.layer_norm(x, (D,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
        qkv = linear(attn.qkv, h).reshape(B, N, 3, attn.num_heads, D // attn.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        a = plain_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
        x = x + linear(attn.proj, a)
        h = F.layer_norm(x, (D,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
        # x is our own tensor by now (the caller's input was not modified): add in place.
        return x.add_(linear(block.mlp.fc2, linear(block.mlp.fc1, h, gelu=True)))
