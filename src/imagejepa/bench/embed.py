"""``imagejepa bench embed``: encoder inference throughput against Hugging Face, in one run.

Both models get the same random weights (ours copied into ``transformers.IJepaModel`` with
SDPA attention) and the same images, run at the same precision (bf16 autocast where the
device supports it, fp32 otherwise), timed alternately so that a busy machine slows both
alike. FLOPs are counted with ``torch.utils.flop_counter`` on our forward and divided by the
sustained matmul throughput of the model's own matmul shapes, measured in the same run
before and after the timing (the higher of the two, and on CPU in bf16 the faster of plain
and pre-packed oneDNN matmuls: the roofline is not flattered by the packing we do). Ours
runs as ``eval`` and ``embed`` run it, through :func:`imagejepa.inference.optimize`; the
plain model is timed beside it.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..errors import MissingDependencyError
from ..inference import optimize
from ..interop.keymaps import encoder_to_hf, hf_layout
from ..models import Encoder
from ..runtime import autocast, resolve_device, resolve_precision
from .roofline import machine_report, matmul_peak_tflops, peak_description, sync


def hf_twin(encoder: Encoder, attn_implementation: str = "sdpa"):
    """A ``transformers.IJepaModel`` with ``encoder``'s exact weights (built on 'meta', then
    the tensors assigned: no second random initialisation of a large model)."""
    try:
        from transformers import IJepaConfig, IJepaModel
    except ImportError as e:
        raise MissingDependencyError("bench embed compares against Hugging Face transformers: "
                           "pip install 'transformers>=4.47' (or the package's [test] extra)") from e
    h, w = encoder.img_size
    config = IJepaConfig(
        hidden_size=encoder.embed_dim, num_hidden_layers=encoder.depth, num_attention_heads=encoder.num_heads,
        intermediate_size=encoder.mlp_hidden_dim, layer_norm_eps=encoder.norm_eps, hidden_act="gelu",
        image_size=h if h == w else [h, w], patch_size=encoder.patch_size, num_channels=encoder.in_chans,
        qkv_bias=True, attn_implementation=attn_implementation,
    )
    with torch.device("meta"):
        model = IJepaModel(config)
    layout = hf_layout(model.state_dict())
    state = encoder_to_hf(encoder.state_dict(), encoder.position_embedding().detach(), layout)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def forward_flops(encoder: Encoder, batch_size: int) -> int:
    """FLOPs of one inference forward of ``batch_size`` images, counted on shapes alone."""
    spec = encoder.spec()
    with torch.device("meta"):
        twin = Encoder.from_spec(spec)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        twin(torch.empty(batch_size, encoder.in_chans, *encoder.img_size, device="meta"))
    return counter.get_total_flops()


def bench_embed(arch: str = "vit_huge", patch_size: int = 14, img_size: int = 224, batch_size: int = 8,
                steps: int = 3, warmup: int = 1, precision: str = "auto", device: str = "auto",
                depth: int | None = None) -> dict:
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    torch.manual_seed(0)
    plain = Encoder(arch, patch_size, img_size, depth=depth).to(dev).eval().requires_grad_(False)
    hf = hf_twin(plain).to(dev)
    ours = optimize(plain)  # what eval and embed run
    images = torch.randn(batch_size, ours.in_chans, img_size, img_size, device=dev)
    runners = {
        "ours": lambda: ours.forward_features(images),
        "plain": lambda: plain.forward_features(images),  # the model without imagejepa.inference
        "hf": lambda: hf(pixel_values=images).last_hidden_state,
    }

    def timed(name: str) -> tuple[float, torch.Tensor]:
        with torch.no_grad(), autocast(dev, prec):
            sync(dev)
            t = time.perf_counter()
            out = runners[name]()
            sync(dev)
        return time.perf_counter() - t, out

    D, tokens = ours.embed_dim, batch_size * ours.num_patches
    shapes = [(tokens, D, ours.mlp_hidden_dim), (tokens, ours.mlp_hidden_dim, D), (tokens, D, 3 * D)]
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    peak_before = matmul_peak_tflops(shapes, dtype, dev, prepacked=True)
    for _ in range(warmup):
        for name in runners:
            timed(name)
    seconds = {name: [] for name in runners}
    outputs = {}
    for _ in range(steps):  # alternate, so load from other processes hits both
        for name in runners:
            t, outputs[name] = timed(name)
            seconds[name].append(t)
    best = {name: min(ts) for name, ts in seconds.items()}
    diff = (outputs["ours"].float() - outputs["hf"].float()).abs().max().item()

    flops = forward_flops(ours, batch_size)
    peak = max(peak_before, matmul_peak_tflops(shapes, dtype, dev, prepacked=True))  # the stricter
    import transformers

    return {
        "bench": "embed",
        "model": f"{arch}/{patch_size}@{img_size}" + (f" depth {ours.depth}" if depth else ""),
        "weights": "random (the same in both)",
        "device": str(dev),
        **machine_report(dev),
        "precision": prec,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "steps": steps,
        "timing": f"best of {steps} alternating runs each",
        "img_per_s": round(batch_size / best["ours"], 3),
        "reference": f"transformers {transformers.__version__} IJepaModel (sdpa)",
        "reference_img_per_s": round(batch_size / best["hf"], 3),
        "speedup": round(best["hf"] / best["ours"], 3),
        "plain_model_img_per_s": round(batch_size / best["plain"], 3),
        "speedup_over_plain_model": round(best["plain"] / best["ours"], 3),
        "flops_per_img": round(flops / batch_size),
        "achieved_tflops": round(flops / best["ours"] / 1e12, 4),
        "matmul_peak_tflops": round(peak, 4),
        "matmul_peak_of": peak_description(shapes, dtype, dev, prepacked=True),
        "roofline_fraction": round(flops / best["ours"] / 1e12 / peak, 4),
        "reference_roofline_fraction": round(flops / best["hf"] / 1e12 / peak, 4),
        "max_abs_diff": round(diff, 5),
    }
