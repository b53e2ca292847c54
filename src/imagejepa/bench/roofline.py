"""The sustained matmul peak a roofline fraction divides by, and the machine it was timed on."""

from __future__ import annotations

import functools
import time

import torch

from ..inference import cpu_bf16
from ..utils import cpu


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(shapes, dtype: torch.dtype, device: torch.device, repeats: int = 20,
                       prepacked: bool = False) -> float:
    """Sustained TFLOP/s of ``(M, K) @ (K, N)``: ``repeats`` back-to-back products timed
    together after a warm-up, best over the given shapes.

    ``prepacked=True`` (bf16 on CPU) also times oneDNN matmuls on weights packed once in its
    blocked layout, and keeps the higher figure: a stricter peak for code that packs.
    """
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, dtype=dtype, device=device)
        b = torch.randn(k, n, dtype=dtype, device=device)
        products = [functools.partial(torch.matmul, a, b)]
        if prepacked and dtype == torch.bfloat16 and device.type == "cpu" and cpu.packed_bf16_kernels():
            packed = cpu_bf16.pack_weight(b.t().contiguous(), m)
            products.append(functools.partial(cpu_bf16.packed_matmul, a, packed, None, False))
        for product in products:
            for _ in range(3):
                product()
            sync(device)
            t = time.perf_counter()
            for _ in range(repeats):
                product()
            sync(device)
            best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - t) / 1e12)
    return best


def peak_description(shapes, dtype: torch.dtype, device: torch.device, prepacked: bool = False) -> str:
    """What a roofline was divided by, in words, for the JSON report."""
    kind = "torch.matmul"
    if prepacked and dtype == torch.bfloat16 and device.type == "cpu" and cpu.packed_bf16_kernels():
        kind = "the faster of torch.matmul and oneDNN pre-packed matmul"
    dims = ", ".join("x".join(map(str, s)) for s in shapes)
    dtype_name = str(dtype).removeprefix("torch.")
    return f"sustained {dtype_name} {kind} on {device.type}, best of (M x K x N) {dims}"


def machine_report(device: torch.device) -> dict:
    """The CPU features figures depend on (so that two machines' figures are never compared
    blindly), and the GPU when there is one."""
    f = cpu.features()
    report = {"cpu_isa": f["isa"],
              "cpu_features": [k for k in ("avx2", "avx512", "avx512_bf16", "amx", "packed_bf16_kernels")
                               if f[k]]}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    return report
