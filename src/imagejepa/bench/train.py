"""``imagejepa bench train``: full training steps on a named standard config, against the
machine's matmul peak timed in the same run."""

from __future__ import annotations

import copy
import time

import torch

from ..config import Config, from_dict, mask_settings
from ..jepa import build_ijepa
from ..masking import Masks, MultiBlockMaskSampler
from ..models.layers import use_attention_kernel
from ..runtime import attention_kernel, autocast, resolve_device, resolve_precision
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
                batch_size: int | None = None, arch: str = "vit_tiny", patch_size: int = 16,
                compiled: bool = True) -> dict:
    """Eager training steps, and with ``compiled`` the same steps through ``torch.compile``
    (dynamic shapes, as ``train.compile`` runs them), timed alternately step by step after
    ``warmup`` steps of each (the compiled warm-up compiles, and is reported as such)."""
    spec = train_spec(arch, patch_size, batch_size)
    cfg: Config = from_dict(spec)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    torch.manual_seed(0)
    model = build_ijepa(cfg).to(dev)
    use_attention_kernel(model, attention_kernel(dev, prec))
    opt = build_optimizer(model.encoder, model.predictor, lr=1e-4, device=dev)
    sampler = MultiBlockMaskSampler(model.encoder.grid, mask_settings(cfg))
    B = cfg.data.batch_size
    images = torch.randn(B, 3, cfg.model.img_size, cfg.model.img_size, device=dev)
    g = torch.Generator().manual_seed(0)
    all_masks = [sampler(B, g) for _ in range(warmup + steps)]
    runners = {"eager": model}
    if compiled:
        runners["compiled"] = torch.compile(model, dynamic=True)

    def step(forward, masks: Masks) -> float:
        masks = Masks(masks.context.to(dev), masks.targets.to(dev))
        sync(dev)
        t = time.perf_counter()
        with autocast(dev, prec):
            loss, _ = forward(images, masks)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_target(0.999)
        sync(dev)
        return time.perf_counter() - t

    warmup_seconds = {name: sum(step(forward, masks) for masks in all_masks[:warmup])
                      for name, forward in runners.items()}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = dict.fromkeys(runners, 0.0)
    for masks in all_masks[warmup:]:  # alternately, so that a busy machine slows both alike
        for name, forward in runners.items():
            seconds[name] += step(forward, masks)
    flops = sum(count_train_flops(model, images.shape, m, prec) for m in all_masks[warmup:])
    D = model.encoder.embed_dim
    tokens = B * model.encoder.num_patches
    shapes = [(tokens, D, 4 * D), (tokens, 4 * D, D), (tokens, D, 3 * D)]
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    peak = matmul_peak_tflops(shapes, dtype, dev)
    m = cfg.model

    def figures(name: str) -> dict:
        achieved = flops / seconds[name] / 1e12
        return {"img_per_s": round(B * steps / seconds[name], 3), "achieved_tflops": round(achieved, 4),
                "roofline_fraction": round(achieved / peak, 4)}

    report = {
        "bench": "train",
        "config": f"{m.arch}/{m.patch_size}@{m.img_size} batch {B}, predictor depth {m.pred_depth} width "
                  f"{m.pred_dim}, 4 targets, paper masks",
        "device": str(dev),
        **machine_report(dev),
        "precision": prec,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "timing": "eager and compiled steps alternately" if compiled else "eager steps",
        **figures("eager"),
        "flops_per_img": round(flops / (B * steps)),
        "matmul_peak_tflops": round(peak, 4),
        "matmul_peak_of": peak_description(shapes, dtype, dev),
    }
    if compiled:
        report["compiled"] = {
            **figures("compiled"),
            "speedup": round(seconds["eager"] / seconds["compiled"], 3),
            # The warm-up steps' seconds over the eager ones': compiling, from PyTorch's cache when warm.
            "compile_s": round(warmup_seconds["compiled"] - warmup_seconds["eager"], 1),
        }
    if dev.type == "cuda":  # of the timed steps: weights, AdamW state, activations
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return report
