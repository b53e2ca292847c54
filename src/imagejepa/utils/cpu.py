"""What this CPU can do, asked once: vector extensions, bf16 matrix units, packed bf16 kernels.

Every precision and kernel choice that depends on the CPU is made from these answers, so
that AVX2 laptops, AVX512 and AMX servers and aarch64 machines each take a path that is
correct on them. PyTorch's own ISA cap is honoured: with ``ATEN_CPU_CAPABILITY=avx2`` (or
lower) the AVX512 units count as absent, which also lets a large CPU run the AVX2 path
(with ``ONEDNN_MAX_CPU_ISA=AVX2`` for oneDNN).
"""

from __future__ import annotations

import functools

import torch

# ATen capabilities under which AVX512 kernels are not used (x86); other values are not capped.
_BELOW_AVX512 = ("DEFAULT", "NO AVX", "AVX2")


def _torch_cpu_flag(name: str) -> bool:
    check = getattr(torch.cpu, f"_is_{name}_supported", None)
    return bool(check()) if check is not None else False


@functools.cache
def features() -> dict[str, bool | str]:
    """The CPU features imagejepa decides by, plus PyTorch's kernel level:
    ``{"isa": "AVX512", "avx2": True, "avx512": True, "avx512_bf16": True, "amx": True,
    "packed_bf16_kernels": True}``."""
    isa = torch.backends.cpu.get_cpu_capability()
    capped = isa.upper() in _BELOW_AVX512
    return {
        "isa": isa,
        "avx2": _torch_cpu_flag("avx2"),
        "avx512": _torch_cpu_flag("avx512") and not capped,
        "avx512_bf16": _torch_cpu_flag("avx512_bf16") and not capped,
        "amx": _torch_cpu_flag("amx_tile") and not capped,
        "packed_bf16_kernels": packed_bf16_kernels(),
    }


def has_bf16_matmul_units() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run about twice as fast as fp32, so autocast pays.

    Without them bf16 is emulated (converted to fp32 around each multiply) and slower.
    """
    f = features()
    return bool(f["avx512_bf16"] or f["amx"])


@functools.cache
def packed_bf16_kernels() -> bool:
    """Whether oneDNN's packed bf16 linear kernels (``mkldnn._reorder_linear_weight``,
    ``mkldnn._linear_pointwise``) run on this build and CPU.

    PyTorch's own check (x86: AVX512BW+VL+DQ or AVX-NE-CONVERT; aarch64: its bf16 support)
    decides; a tiny trial then confirms it, because a refusal inside those kernels is an
    exception at the first matmul, not a slower answer.
    """
    ops = getattr(torch.ops, "mkldnn", None)
    needed = ("_reorder_linear_weight", "_linear_pointwise", "_is_mkldnn_bf16_supported")
    if not torch.backends.mkldnn.is_available() or not all(hasattr(ops, n) for n in needed):
        return False
    if not ops._is_mkldnn_bf16_supported():
        return False
    try:
        weight = ops._reorder_linear_weight(torch.ones(8, 16, dtype=torch.bfloat16), 2)
        out = ops._linear_pointwise(torch.ones(2, 16, dtype=torch.bfloat16), weight, None, "none", [], "")
    except RuntimeError:
        return False
    return bool((out == 16).all())
