"""FLOPs counted with ``torch.utils.flop_counter`` on shapes alone ('meta' tensors, no memory)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models import Encoder
from ..train.flops import count_train_flops

__all__ = ["count_train_flops", "model_info"]


def model_info(arch: str, patch_size: int, img_size: int, in_chans: int = 3) -> dict:
    """Parameters and forward GFLOPs per image of an encoder (counted on 'meta', no memory)."""

    with torch.device("meta"):
        encoder = Encoder(arch, patch_size, img_size, in_chans)
    params = sum(p.numel() for p in encoder.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        encoder(torch.empty(1, in_chans, img_size, img_size, device="meta"))
    return {
        "model": f"{arch}/{patch_size}@{img_size}",
        "embed_dim": encoder.embed_dim,
        "depth": encoder.depth,
        "heads": encoder.num_heads,
        "patches": encoder.num_patches,
        "params_m": round(params / 1e6, 2),
        "gflops_per_img": round(counter.get_total_flops() / 1e9, 2),
    }
