"""``imagejepa bench``: speed figures as ratios measured in one run.

- ``train``: images/s of full training steps on a named standard config, FLOPs per image
  counted with ``torch.utils.flop_counter`` on the very masks that were timed, and the
  fraction of the machine's matmul peak (timed in the same run) that this achieves.
- ``masks``: multi-block masks per second, vectorised sampler against a per-sample Python
  loop written the way the official sampler is.
"""

from __future__ import annotations

import copy
import functools
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import Config, mask_settings
from .jepa import build_ijepa
from .masking import Masks, MaskSettings, MultiBlockMaskSampler
from .models import cpu_bf16
from .optim import build_optimizer
from .runtime import autocast, resolve_device, resolve_precision
from .utils import cpu

# ViT-T/16 at 224, batch 32, predictor depth 6 width 192, 4 targets, paper mask settings.
STANDARD_TRAIN = {
    "model": {"arch": "vit_tiny", "patch_size": 16, "img_size": 224, "pred_depth": 6, "pred_dim": 192},
    "data": {"dataset": "synthetic", "batch_size": 32},
}


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
            _sync(device)
            t = time.perf_counter()
            for _ in range(repeats):
                product()
            _sync(device)
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_train_flops(model, images_shape, masks: Masks, precision: str) -> int:
    """FLOPs of one forward + backward on shapes alone (a copy of the model on 'meta')."""
    meta_model = copy.deepcopy(model).to("meta")
    images = torch.empty(images_shape, device="meta")
    masks = Masks(masks.context.to("meta"), masks.targets.to("meta"))
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = meta_model(images, masks)
        loss.backward()
    return counter.get_total_flops()


def bench_train(steps: int = 5, warmup: int = 2, device: str = "auto", precision: str = "auto",
                batch_size: int | None = None) -> dict:
    from .config import from_dict

    spec = copy.deepcopy(STANDARD_TRAIN)
    if batch_size:
        spec["data"]["batch_size"] = batch_size
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
    _sync(dev)
    t = time.perf_counter()
    for masks in all_masks[warmup:]:
        step(masks)
    _sync(dev)
    seconds = time.perf_counter() - t
    flops = sum(count_train_flops(model, images.shape, m, prec) for m in all_masks[warmup:])
    D = model.encoder.embed_dim
    tokens = B * model.encoder.num_patches
    shapes = [(tokens, D, 4 * D), (tokens, 4 * D, D), (tokens, D, 3 * D)]
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    peak = matmul_peak_tflops(shapes, dtype, dev)
    achieved = flops / seconds / 1e12
    return {
        "bench": "train",
        "config": "vit_tiny/16@224 batch 32, predictor depth 6 width 192, 4 targets, paper masks",
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


# -- masks -----------------------------------------------------------------------------------
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


def model_info(arch: str, patch_size: int, img_size: int, in_chans: int = 3) -> dict:
    """Parameters and forward GFLOPs per image of an encoder (counted on 'meta', no memory)."""
    from .models import Encoder

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


__all__ = ["bench_masks", "bench_train", "loop_masks", "matmul_peak_tflops", "model_info"]
