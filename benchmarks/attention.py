"""Attention kernels on this machine: SDPA against two written-out batched matmuls.

Prints one JSON object with forward + backward milliseconds per call for ViT-like shapes,
in bf16 and fp32. It is the measurement behind ``models/layers.py`` using the written-out
form on CPU in bf16. Run: ``python benchmarks/attention.py``.
"""

import json
import time

import torch
import torch.nn.functional as F

from imagejepa.models.softmax_attention import plain_attention

SHAPES = [(32, 3, 196, 64), (128, 3, 95, 64), (1024, 4, 30, 32)]  # (B, heads, N, head_dim)


def ms_per_call(fn, shape, dtype, repeats=5):
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))

    def run():
        fn(q, k, v).sum().backward()

    for _ in range(2):
        run()
    t = time.perf_counter()
    for _ in range(repeats):
        run()
    return round((time.perf_counter() - t) / repeats * 1000, 2)


def main():
    rows = []
    for shape in SHAPES:
        for dtype in (torch.bfloat16, torch.float32):
            sdpa = ms_per_call(F.scaled_dot_product_attention, shape, dtype)
            plain = ms_per_call(plain_attention, shape, dtype)
            rows.append({"shape": list(shape), "dtype": str(dtype).split(".")[-1],
                         "sdpa_ms": sdpa, "plain_ms": plain, "sdpa_over_plain": round(sdpa / plain, 2)})
    print(json.dumps({"bench": "attention_fwd_bwd", "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
