"""oneDNN's packed bf16 matmuls on CPU: what :class:`~imagejepa.inference.InferenceBlock` runs
under bf16 autocast where the CPU can.

Eager autocast casts every weight to bf16 on every call, copies the bias into the output
before each GEMM, and runs GELU as a separate pass over the ``(B, N, 4D)`` MLP activations.
Here the weights are cast and packed in oneDNN's blocked layout once (+4-7% per GEMM on
ViT-H shapes, bit-identical), and bias and GELU run inside the matmul
(``mkldnn._linear_pointwise``). CPUs or builds that cannot run these kernels (AVX2-only x86:
:func:`imagejepa.utils.cpu.packed_bf16_kernels`) never get here.
"""

from __future__ import annotations

import torch
from torch import nn

from ..utils import cpu


def active(x: torch.Tensor) -> bool:
    """Whether the packed bf16 path applies to a block input ``x``: CPU, fp32 stream, no
    gradients, bf16 autocast, and a CPU that runs the packed bf16 kernels."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and cpu.packed_bf16_kernels()
    )


# The two oneDNN kernels, behind names of our own (tests substitute reference versions on CPUs
# that cannot run them, to check the rest everywhere).
def pack_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """A bf16 ``(N, K)`` weight in oneDNN's blocked layout for ``rows``-row inputs."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def packed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                  gelu: bool) -> torch.Tensor:
    """``x @ W.T + bias``, then exact GELU if ``gelu``: bf16 ``(..., K) -> (..., N)``."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu" if gelu else "none", [],
                                              "none" if gelu else "")


class PackedLinears:
    """bf16 packed copies of Linears' weights (and bf16 biases), each remade when its weight or
    bias changes (an in-place update, a load, a move): kept under the tensors' storage and
    version counter."""

    def __init__(self):
        self._kept: dict[int, tuple] = {}

    def __call__(self, layer: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        """``layer(x)`` (then exact GELU if ``gelu``) as one bf16 matmul: ``(..., K) -> (..., N)`` bf16."""
        w, b = layer.weight, layer.bias
        key = _version_key(w, b)
        kept = self._kept.get(id(layer))
        if key is None or kept is None or kept[0] != key:
            kept = (key, pack_weight(w.detach().to(torch.bfloat16), x.numel() // x.shape[-1]),
                    None if b is None else b.detach().to(torch.bfloat16))
            if key is not None:
                self._kept[id(layer)] = kept
        return packed_matmul(x.to(torch.bfloat16), kept[1], kept[2], gelu)


def _version_key(w: torch.Tensor, b: torch.Tensor | None) -> tuple | None:
    """Storage and version of a weight and bias; ``None`` for inference-mode tensors, which
    have no version counter (packed anew on every call)."""
    try:
        return w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version)
    except RuntimeError:
        return None
