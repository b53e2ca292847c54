"""The paper's ViT-H/14 budget on paper: training FLOPs per image counted on shapes alone
(the 'meta' device: no memory, no GPU), turned into GPU-hours for 300 epochs of ImageNet-1k
at a given throughput or MFU. Prints one JSON object; docs/scaling.md is written from it.

    python benchmarks/scaling.py [--img-per-s-per-gpu R]   # R: measured by benchmarks/gpu_check.sh
"""

from __future__ import annotations

import argparse
import json

import torch

from imagejepa.bench.flops import count_train_flops
from imagejepa.bench.train import train_spec
from imagejepa.config import from_dict, mask_settings
from imagejepa.jepa import build_ijepa
from imagejepa.masking import MultiBlockMaskSampler

IMAGENET_TRAIN = 1_281_167
EPOCHS = 300
GLOBAL_BATCH = 2048
PAPER_A100_HOURS = 1200  # "under 1,200 GPU-hours" (the paper's Fig. 1 / Sec. 1), A100 80GB
DENSE_BF16_TFLOPS = {"A100": 312.0, "H100 SXM": 989.0}  # vendor peak, dense bf16


def flops_per_image(draws: int = 8) -> float:
    """Forward + backward of the ViT-H/14 recipe (encoder on the context, target encoder on the
    whole image, predictor), averaged over mask draws (the context length varies)."""
    cfg = from_dict(train_spec("vit_huge", 14, batch_size=GLOBAL_BATCH // 16))
    with torch.device("meta"):
        model = build_ijepa(cfg)
    sampler = MultiBlockMaskSampler(model.encoder.grid, mask_settings(cfg))
    g = torch.Generator().manual_seed(0)
    B = cfg.data.batch_size
    shape = (B, 3, cfg.model.img_size, cfg.model.img_size)
    total = sum(count_train_flops(model, shape, sampler(B, g), "bf16") for _ in range(draws))
    return total / (draws * B)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img-per-s-per-gpu", type=float, help="measured ViT-H/14 training images/s of one GPU")
    args = p.parse_args()
    per_image = flops_per_image()
    total = per_image * IMAGENET_TRAIN * EPOCHS
    paper_mfu = total / (PAPER_A100_HOURS * 3600 * DENSE_BF16_TFLOPS["A100"] * 1e12)
    out = {
        "recipe": f"ViT-H/14 at 224, {EPOCHS} epochs of ImageNet-1k ({IMAGENET_TRAIN} images), global batch "
                  f"{GLOBAL_BATCH}, predictor depth 12 width 384, paper masks",
        "train_flops_per_image": round(per_image),
        "train_flops_total": total,
        "paper_a100_hours": PAPER_A100_HOURS,
        # the MFU (against dense bf16 peak) at which the paper's hours are reached
        "paper_implied_a100_mfu": round(paper_mfu, 3),
        "gpu_hours_at_mfu": {
            gpu: {f"{mfu:.0%}": round(total / (mfu * peak * 1e12) / 3600) for mfu in (0.23, 0.35, 0.45)}
            for gpu, peak in DENSE_BF16_TFLOPS.items()
        },
    }
    if args.img_per_s_per_gpu:
        r = args.img_per_s_per_gpu
        out["measured_img_per_s_per_gpu"] = r
        out["gpu_hours_measured"] = round(IMAGENET_TRAIN * EPOCHS / r / 3600)
        out["loader_img_per_s_per_8_gpu_node"] = round(8 * r)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
