"""Checks that need a CUDA device (marked gpu; skipped, with the reason, without one).
benchmarks/gpu_check.sh runs them with the GPU benchmarks."""

from __future__ import annotations

import pytest
import torch

from imagejepa import checkpoint as ckpt
from imagejepa.config import load_config
from imagejepa.train.trainer import Trainer

from .helpers import TINY_OVERRIDES

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def quiet(*_):
    pass


def test_trainer_on_cuda_in_bf16(tmp_path):
    """A few steps on the GPU in bf16 autocast: finite losses, and the checkpoint holds the
    weights the trainer ends with."""
    on_gpu = ["train.device=cuda", "train.precision=bf16", "train.max_steps=4"]
    cfg = load_config(None, TINY_OVERRIDES + on_gpu)
    trainer = Trainer(cfg, tmp_path, log=quiet, warn=quiet)
    last = trainer.fit()
    assert trainer.device.type == "cuda" and trainer.precision == "bf16"
    assert last["loss"] == last["loss"] and last["skipped_step"] == 0
    saved = ckpt.load_tensors(ckpt.find_checkpoint(tmp_path))
    for name, value in trainer.model.encoder.state_dict().items():
        assert torch.equal(saved[f"encoder.{name}"], value.cpu())


def test_attention_runs_on_flash_attention_in_bf16():
    """The blocks' SDPA call is one flash attention can take (bf16, head dim 64)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from imagejepa.models.layers import Attention

    attention = Attention(384, num_heads=6).cuda()
    x = torch.randn(4, 257, 384, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        y = attention(x)
    reference = attention.float()(x)
    assert y.shape == x.shape and (y.float() - reference).abs().max() < 0.05


def test_bench_train_reports_gpu_memory_and_mfu():
    from imagejepa.bench.train import bench_train

    report = bench_train(steps=1, warmup=1, device="cuda", precision="bf16")
    assert report["gpu"] and report["peak_memory_gib"] > 0 and 0 < report["roofline_fraction"] < 1


def test_training_steps_never_wait_for_the_gpu(tmp_path):
    """Steps (with the health metrics, the fused AdamW and the EMA update, and a skipped
    non-finite step) under CUDA's sync debug mode set to raise: no step reads a value back."""
    from .test_host_sync import NAN_STEP, STEPS

    cfg = load_config(None, TINY_OVERRIDES + ["train.device=cuda", "train.precision=bf16", "monitor.every=2",
                                              "train.on_nan=skip_step"])
    trainer = Trainer(cfg, tmp_path, log=quiet, warn=quiet)
    batches = iter(trainer.loader)
    images = [next(batches)[0] for _ in range(STEPS)]
    real_forward = trainer.stepper.forward
    trainer.stepper.forward = lambda views, masks: (lambda out: (
        out[0] * float("nan") if step == NAN_STEP else out[0], out[1]))(real_forward(views, masks))
    trainer.train_step(images[0], 0)  # the first step (lazy initialisation may sync once)
    torch.cuda.synchronize()
    results = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, STEPS):
            results.append(trainer.train_step(images[step], step))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    rows = trainer.stepper.read(results)
    assert [r["skipped_step"] for r in rows] == [int(s == NAN_STEP) for s in range(1, STEPS)]
