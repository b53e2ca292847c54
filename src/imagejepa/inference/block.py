"""A transformer block for frozen inference: the values of
:class:`~imagejepa.models.layers.Block`, with less memory traffic where no gradient is kept.

- Under bf16 autocast on a CPU that runs oneDNN's packed bf16 kernels: weights cast and packed
  once, bias and GELU inside the matmuls (:mod:`.cpu_bf16`), attention written out (faster than
  the CPU flash kernel in bf16, ``benchmarks/attention.py``), the residual stream and LayerNorms
  in fp32 as autocast keeps them.
- Without autocast (fp32, or bf16 weights): GELU and the second residual add in place, on the
  block's own tensors (its input is never modified).
- With gradients on, or under autocast elsewhere: the plain block.

Measured on ViT-H/14 (``imagejepa bench embed``): these remove most of the non-matmul time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.layers import Block
from ..models.softmax_attention import plain_attention
from . import cpu_bf16


class InferenceBlock(Block):
    """``(B, N, D) -> (B, N, D)``, the given :class:`Block`'s parameters and values (its
    submodules are shared: the state dict keeps the same names)."""

    def __init__(self, block: Block):
        torch.nn.Module.__init__(self)
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.packed = cpu_bf16.PackedLinears()

    def forward(self, x: torch.Tensor, queries_from: int = 0) -> torch.Tensor:
        if queries_from or torch.is_grad_enabled():
            return super().forward(x, queries_from)
        if cpu_bf16.active(x):
            return self.packed_bf16(x)
        if torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        return self.in_place(x)

    def in_place(self, x: torch.Tensor) -> torch.Tensor:
        """No gradients, no autocast: GELU and the MLP's residual add update tensors of our own."""
        x = x + self.attn(self.norm1(x))  # a new tensor: the caller's input is left alone
        hidden = self.mlp.fc1(self.norm2(x))
        return x.add_(self.mlp.fc2(torch.ops.aten.gelu_(hidden)))

    def packed_bf16(self, x: torch.Tensor) -> torch.Tensor:
        """Under bf16 autocast on a CPU with the packed kernels: ``(B, N, D)`` fp32 in and out."""
        attn, linear = self.attn, self.packed
        B, N, D = x.shape
        with torch.autocast("cpu", enabled=False):  # dtypes are explicit below
            h = F.layer_norm(x, (D,), self.norm1.weight, self.norm1.bias, self.norm1.eps)
            qkv = linear(attn.qkv, h).reshape(B, N, 3, attn.num_heads, D // attn.num_heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
            a = plain_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
            x = x + linear(attn.proj, a)
            h = F.layer_norm(x, (D,), self.norm2.weight, self.norm2.bias, self.norm2.eps)
            return x.add_(linear(self.mlp.fc2, linear(self.mlp.fc1, h, gelu=True)))
