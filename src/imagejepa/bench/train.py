"""``imagejepa bench train``: full training steps on a named standard config, against the
machine's matmul peak timed in the same run."""

from __future__ import annotations

import copy
import time

import torch

from ..config import Config, from_dict, mask_settings
from ..jepa import build_ijepa
from ..masking import Masks, MultiBlockMaskSampler
from ..runtime import autocast, resolve_device, resolve_precision
from ..train.optim import build_optimizer
from .flops import count_train_flops
from .roofline import machine_report, matmul_peak_tflops, peak_description, sync

# ViT-T/16 at 224, batch 32, predictor depth 6 width 192, 4 targets, paper mask settings.
STANDARD_TRAIN = {
    "model": {"arch": "vit_tiny", "patch_size": 16, "img_size": 224, "pred_depth": 6, "pred_dim": 192},
    "data": {"dataset": "synthetic", "batch_size": 32},
}
# The paper's predictors: depth 12 for ViT-H, 6 for smaller encoders, width 384.
PAPER_PREDICTOR_DEPTH = {"vit_huge": 12, "vit_giant": 16}


def train_spec(arch: str = "vit_tiny", patch_size: int = 16, batch_size: int | None = None) -> dict:
    """The benchmark's config: the standard ViT-T/16 one, or another encoder at 224 with the
    paper's predictor for it."""
    spec = copy.deepcopy(STANDARD_TRAIN)
    if arch != "vit_tiny" or patch_size != 16:
        spec["model"].update(arch=arch, patch_size=patch_size, pred_dim=384,
                             pred_depth=PAPER_PREDICTOR_DEPTH.get(arch, 6))
    if batch_size:
        spec["data"]["batch_size"] = batch_size
    return spec


def bench_train(steps: int = 5, warmup: int = 2, device: str = "auto", precision: str = "auto",
                batch_size: int | None = None, arch: str = "vit_tiny", patch_size: int = 16) -> dict:
    spec = train_spec(arch, patch_size, batch_size)
    cfg: Config = from_dict(spec)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    torch.manual_seed(0)
    model = build_ijepa(cfg).to(dev)
    opt = build_optimizer(model.encoder, model.predictor, lr=1e-4, device=dev)
    sampler = MultiBlockMaskSampler(model.encoder.grid, mask_settings(cfg))
    B = cfg.data.batch_size
    images = torch.randn(B, 3, cfg.model.img_size, cfg.model.img_size, device=dev)
    g = torch.Generator().manual_seed(0)
    all_masks = [sampler(B, g) for _ in range(warmup + steps)]

    def step(masks: Masks):
        masks = Masks(masks.context.to(dev), masks.targets.to(dev))
        with autocast(dev, prec):
            loss, _ = model(images, masks)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_target(0.999)

    for masks in all_masks[:warmup]:
        step(masks)
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t = time.perf_counter()
    for masks in all_masks[warmup:]:
        step(masks)
    sync(dev)
    seconds = time.perf_counter() - t
    flops = sum(count_train_flops(model, images.shape, m, prec) for m in all_masks[warmup:])
    D = model.encoder.embed_dim
    tokens = B * model.encoder.num_patches
    shapes = [(tokens, D, 4 * D), (tokens, 4 * D, D), (tokens, D, 3 * D)]
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    peak = matmul_peak_tflops(shapes, dtype, dev)
    achieved = flops / seconds / 1e12
    m = cfg.model
    report = {
        "bench": "train",
        "config": f"{m.arch}/{m.patch_size}@{m.img_size} batch {B}, predictor depth {m.pred_depth} width "
                  f"{m.pred_dim}, 4 targets, paper masks",
        "device": str(dev),
        **machine_report(dev),
        "precision": prec,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "img_per_s": round(B * steps / seconds, 3),
        "flops_per_img": round(flops / (B * steps)),
        "achieved_tflops": round(achieved, 4),
        "matmul_peak_tflops": round(peak, 4),
        "matmul_peak_of": peak_description(shapes, dtype, dev),
        "roofline_fraction": round(achieved / peak, 4),
    }
    if dev.type == "cuda":  # of the timed steps: weights, AdamW state, activations
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return report
