"""``imagejepa bench masks``: the vectorised multi-block sampler against a per-sample loop."""

from __future__ import annotations

import time

import torch

from ..masking import Masks, MaskSettings, MultiBlockMaskSampler
from .roofline import machine_report


def loop_masks(batch_size: int, grid: tuple[int, int], s: MaskSettings, g: torch.Generator) -> Masks:
    """Reference: one sample, one block at a time, in Python, as the official collator does."""
    H, W = grid
    sizer = MultiBlockMaskSampler(grid, s)  # the same block-size rule
    th, tw = sizer.block_size(s.target_scale, s.target_aspect, g)
    ch, cw = sizer.block_size(s.context_scale, s.context_aspect, g)
    contexts, targets = [], []
    for _ in range(batch_size):
        sample_targets, allowed = [], torch.ones(H, W, dtype=torch.bool)
        for _ in range(s.num_targets):
            top = int(torch.randint(0, H - th + 1, (1,), generator=g))
            left = int(torch.randint(0, W - tw + 1, (1,), generator=g))
            block = torch.zeros(H, W, dtype=torch.bool)
            block[top:top + th, left:left + tw] = True
            sample_targets.append(torch.nonzero(block.flatten()).squeeze(1))
            allowed &= ~block
        while True:
            top = int(torch.randint(0, H - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, W - cw + 1, (1,), generator=g))
            block = torch.zeros(H, W, dtype=torch.bool)
            block[top:top + ch, left:left + cw] = True
            context = torch.nonzero((block & allowed).flatten()).squeeze(1)
            if len(context) >= s.min_keep:
                break
        contexts.append(context)
        targets.append(torch.stack(sample_targets))
    keep = min(len(c) for c in contexts)
    contexts = [c[torch.randperm(len(c), generator=g)[:keep]].sort().values for c in contexts]
    return Masks(torch.stack(contexts), torch.stack(targets))


def bench_masks(batch_size: int = 2048, grid: int = 16, repeats: int = 20) -> dict:
    settings = MaskSettings()
    sampler = MultiBlockMaskSampler((grid, grid), settings)
    g = torch.Generator().manual_seed(0)
    sampler(batch_size, g)
    t = time.perf_counter()
    for _ in range(repeats):
        sampler(batch_size, g)
    fast = batch_size * repeats / (time.perf_counter() - t)
    t = time.perf_counter()
    loop_masks(batch_size, (grid, grid), settings, g)
    slow = batch_size / (time.perf_counter() - t)
    return {
        "bench": "masks",
        **machine_report(torch.device("cpu")),
        "batch_size": batch_size,
        "grid": f"{grid}x{grid}",
        "vectorised_samples_per_s": round(fast),
        "loop_samples_per_s": round(slow),
        "speedup": round(fast / slow, 1),
    }
