"""One I-JEPA training step, this project against the official facebookresearch/ijepa code.

Both sides train ViT-T/16 at 224 (predictor depth 6, width 192, 3 heads), batch 32, in one
process, on the same random images and the *same masks* (sampled with our sampler from a
seeded generator, handed to the official modules in their list format), timed alternately
(ours, official, ours, ...) after a warm-up. A step: target encoder -> layer norm -> target
blocks; encoder on the context -> predictor; smooth-L1; backward; AdamW; zero_grad; EMA.
The official step is our short code calling the official classes and functions in the
order of its ``src/train.py`` (no logging, grad stats, GradScaler or AllReduce), with the
parameter groups of its ``init_opt`` and its EMA loop over parameters.

Our weights are copied into the official modules by name first, and one fp32 forward on
the same inputs is compared (``loss_abs_diff``, ``prediction_max_abs_diff``): the same
function. FLOPs are counted for each side on the timed masks (``torch.utils.flop_counter``,
on 'meta' copies): ours are fewer, because our predictor's last block computes only the
outputs that the loss reads. Prints one JSON line: img/s of each side, their ratio, FLOPs
per image of each, and each side's fraction of the matmul peak of the model's shapes
measured in the same run.

No official code is in this repository. Point ``--official`` at a checkout of it::

    git clone https://github.com/facebookresearch/ijepa /tmp/ijepa
    python benchmarks/official_step.py --official /tmp/ijepa            # --precision bf16

``--precision bf16`` is CPU autocast on both sides (the official's own autocast is CUDA-only).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from imagejepa.bench.flops import count_train_flops
from imagejepa.bench.roofline import machine_report, matmul_peak_tflops, peak_description, sync
from imagejepa.bench.train import STANDARD_TRAIN
from imagejepa.config import from_dict, mask_settings
from imagejepa.jepa import build_ijepa
from imagejepa.masking import Masks, MultiBlockMaskSampler
from imagejepa.models.layers import use_attention_kernel
from imagejepa.runtime import attention_kernel, autocast, resolve_device
from imagejepa.train.optim import build_optimizer

EMA = 0.996  # the official configs' starting momentum
LR = 1e-4


def import_official(root: str):
    """The official ViT module, ``apply_masks`` and ``repeat_interleave_batch`` (torch + numpy
    only; ``src/train.py`` is not imported: it needs yaml, the data loaders, distributed)."""
    root = Path(root).resolve()
    if not (root / "src" / "models" / "vision_transformer.py").is_file():
        sys.exit(f"--official {root}: no src/models/vision_transformer.py; expected a checkout "
                 "of https://github.com/facebookresearch/ijepa")
    sys.path.insert(0, str(root))
    try:
        vit = importlib.import_module("src.models.vision_transformer")
        masks_utils = importlib.import_module("src.masks.utils")
        tensors = importlib.import_module("src.utils.tensors")
    except ImportError as e:
        sys.exit(f"importing the official modules from {root} failed: {e} (they need torch and numpy)")
    if not Path(vit.__file__).resolve().is_relative_to(root):
        sys.exit(f"'src' resolved to {vit.__file__}, not to the checkout {root}")
    return vit, masks_utils.apply_masks, tensors.repeat_interleave_batch


def official_groups(encoder, predictor) -> list[dict]:
    """``init_opt``'s four groups: encoder / predictor weights decayed, biases and 1-D not."""
    def decayed(name, p):
        return "bias" not in name and p.ndim != 1

    return [
        {"params": [p for n, p in encoder.named_parameters() if decayed(n, p)]},
        {"params": [p for n, p in predictor.named_parameters() if decayed(n, p)]},
        {"params": [p for n, p in encoder.named_parameters() if not decayed(n, p)], "weight_decay": 0},
        {"params": [p for n, p in predictor.named_parameters() if not decayed(n, p)], "weight_decay": 0},
    ]


def load_by_name(official_module, ours) -> None:
    """Our parameters into the official module; only its stored sin-cos positions stay its own."""
    missing, unexpected = official_module.load_state_dict(ours.state_dict(), strict=False)
    if unexpected or any(not k.endswith("pos_embed") for k in missing):
        raise SystemExit(f"parameter names differ: missing {missing}, unexpected {unexpected}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="checkout of facebookresearch/ijepa")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--stat", choices=("median", "best"), default="median", help="per-step time kept")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=STANDARD_TRAIN["data"]["batch_size"])
    args = ap.parse_args(argv)
    vit, apply_masks, repeat_interleave_batch = import_official(args.official)

    cfg = from_dict({**STANDARD_TRAIN, "data": {**STANDARD_TRAIN["data"], "batch_size": args.batch_size}})
    m, B, dev, prec = cfg.model, args.batch_size, resolve_device(args.device), args.precision
    torch.manual_seed(0)
    model = build_ijepa(cfg).to(dev)
    use_attention_kernel(model, attention_kernel(dev, prec))  # as the trainer runs it
    enc = vit.__dict__[m.arch](img_size=[m.img_size], patch_size=m.patch_size)
    pred = vit.vit_predictor(num_patches=enc.patch_embed.num_patches, embed_dim=enc.embed_dim,
                             predictor_embed_dim=m.pred_dim, depth=m.pred_depth, num_heads=enc.num_heads)
    load_by_name(enc, model.encoder)
    load_by_name(pred, model.predictor)
    enc, pred = enc.to(dev), pred.to(dev)
    tgt = copy.deepcopy(enc).requires_grad_(False)  # as the official train.py: a copy, no grad

    sampler = MultiBlockMaskSampler(model.encoder.grid, mask_settings(cfg))
    g = torch.Generator().manual_seed(0)
    images = torch.randn(B, 3, m.img_size, m.img_size, generator=g).to(dev)
    masks = [Masks(*(x.to(dev) for x in sampler(B, g))) for _ in range(args.warmup + args.steps)]

    def official_format(k: Masks):  # masks_enc: [(B, K)]; masks_pred: T x (B, Kt)
        return [k.context], [k.targets[:, t] for t in range(k.targets.shape[1])]

    def official_loss(k: Masks, enc=enc, pred=pred, tgt=tgt, images=images) -> torch.Tensor:
        masks_enc, masks_pred = official_format(k)
        with torch.no_grad():
            h = tgt(images)
            h = F.layer_norm(h, (h.size(-1),))
            h = apply_masks(h, masks_pred)
            h = repeat_interleave_batch(h, B, repeat=len(masks_enc))
        z = pred(enc(images, masks_enc), masks_enc, masks_pred)
        return F.smooth_l1_loss(z, h)

    def official_flops(k: Masks) -> int:
        """Forward + backward FLOPs of the official step, on shapes alone ('meta' copies)."""
        meta = [copy.deepcopy(m).to("meta") for m in (enc, pred, tgt)]
        counter = FlopCounterMode(display=False)
        with counter:
            official_loss(Masks(*(x.to("meta") for x in k)), *meta, images.to("meta")).backward()
        return counter.get_total_flops()

    # Same function: fp32 losses (and predictions) of one forward on the same weights and inputs.
    with torch.no_grad():
        loss_ours = model(images, masks[0])[0].item()
        loss_official = official_loss(masks[0]).item()
        k = masks[0]
        z_ours = model.predictor(model.encoder(images, k.context), k.context, k.targets)
        masks_enc, masks_pred = official_format(k)
        z_official = pred(enc(images, masks_enc), masks_enc, masks_pred)  # (T * B, Kt, D), target-major
        z_official = z_official.unflatten(0, (len(masks_pred), B)).transpose(0, 1)
        pred_diff = (z_ours - z_official).abs().max().item()

    opt_ours = build_optimizer(model.encoder, model.predictor, lr=LR, device=dev)
    opt_official = torch.optim.AdamW(official_groups(enc, pred), lr=LR)  # torch's defaults, as theirs

    def step_ours(k: Masks) -> torch.Tensor:
        with autocast(dev, prec):
            loss, _ = model(images, k)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        model.update_target(EMA)
        return loss.detach()

    def step_official(k: Masks) -> torch.Tensor:
        with autocast(dev, prec):
            loss = official_loss(k)
        loss.backward()
        opt_official.step()
        opt_official.zero_grad()
        with torch.no_grad():  # their EMA: one mul_ and add_ per parameter
            for q, t in zip(enc.parameters(), tgt.parameters()):
                t.data.mul_(EMA).add_((1.0 - EMA) * q.detach().data)
        return loss.detach()

    times, last_loss = {"ours": [], "official": []}, {}
    for i, k in enumerate(masks):
        for side, step in (("ours", step_ours), ("official", step_official)):
            sync(dev)
            t = time.perf_counter()
            last_loss[side] = step(k)
            sync(dev)
            if i >= args.warmup:
                times[side].append(time.perf_counter() - t)

    pick = statistics.median if args.stat == "median" else min
    sec = {side: pick(ts) for side, ts in times.items()}
    timed = masks[args.warmup:]
    flops = {"ours": sum(count_train_flops(model, images.shape, k, prec) for k in timed) / len(timed),
             "official": sum(official_flops(k) for k in timed) / len(timed)}
    D, tokens = model.encoder.embed_dim, B * model.encoder.num_patches
    shapes = [(tokens, D, 4 * D), (tokens, 4 * D, D), (tokens, D, 3 * D)]
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    peak = matmul_peak_tflops(shapes, dtype, dev)
    print(json.dumps({
        "bench": "official_step",
        "config": f"{m.arch}/{m.patch_size}@{m.img_size} batch {B}, predictor depth {m.pred_depth} "
                  f"width {m.pred_dim}, {cfg.mask.num_targets} targets, paper masks (same on both sides)",
        "device": str(dev), **machine_report(dev), "precision": prec, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "warmup": args.warmup, "steps": args.steps,
        "stat": f"{args.stat} of per-step times, sides alternated step by step",
        "ours_img_per_s": round(B / sec["ours"], 3), "official_img_per_s": round(B / sec["official"], 3),
        "speedup": round(sec["official"] / sec["ours"], 3),
        "ours_flops_per_img": round(flops["ours"] / B),
        "official_flops_per_img": round(flops["official"] / B),
        "matmul_peak_tflops": round(peak, 4), "matmul_peak_of": peak_description(shapes, dtype, dev),
        "ours_roofline_fraction": round(flops["ours"] / sec["ours"] / 1e12 / peak, 4),
        "official_roofline_fraction": round(flops["official"] / sec["official"] / 1e12 / peak, 4),
        "weights": "ours copied into the official modules by name (positions: each side's sin-cos)",
        "loss_fp32_ours": round(loss_ours, 6), "loss_fp32_official": round(loss_official, 6),
        "loss_abs_diff": abs(loss_ours - loss_official), "prediction_max_abs_diff": pred_diff,
        "last_step_loss_abs_diff": abs(last_loss["ours"].item() - last_loss["official"].item()),
        "step_s": {side: [round(t, 3) for t in ts] for side, ts in times.items()},
    }))


if __name__ == "__main__":
    main()
