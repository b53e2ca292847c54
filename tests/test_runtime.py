"""Tests of device and precision resolution, and of the CPU capability checks they rest on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from imagejepa.config import ConfigError
from imagejepa.runtime import autocast, resolve_device, resolve_precision
from imagejepa.utils import cpu


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.parametrize("units", [True, False])
def test_resolve_precision_follows_the_bf16_units(monkeypatch, units):
    monkeypatch.setattr(cpu, "has_bf16_matmul_units", lambda: units)
    cpu_device = torch.device("cpu")
    assert resolve_precision("fp32", cpu_device) == "fp32"
    assert resolve_precision("bf16", cpu_device) == "bf16"  # asked for: given, even where emulated
    assert resolve_precision("auto", cpu_device) == ("bf16" if units else "fp32")


def test_autocast():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (a @ b).dtype == torch.float32


AS_AVX2 = """
import json, torch
from imagejepa.inference import InferenceBlock, optimize
from imagejepa.models import Encoder
from imagejepa.runtime import resolve_precision
from imagejepa.utils import cpu
torch.manual_seed(0)
encoder = optimize(Encoder("vit_small", 16, 64, depth=2))
images = torch.randn(2, 3, 64, 64)
taken = []
original = InferenceBlock.packed_bf16
InferenceBlock.packed_bf16 = lambda block, x: taken.append(1) or original(block, x)
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    bf16 = encoder(images).float()
with torch.no_grad():
    fp32 = encoder(images)
print(json.dumps({"features": cpu.features(), "auto": resolve_precision("auto", torch.device("cpu")),
                  "fast_blocks": len(taken), "max_diff": float((bf16 - fp32).abs().max())}))
"""


@pytest.mark.slow
def test_an_avx2_only_cpu_gets_fp32_by_default_and_correct_bf16_on_request():
    """PyTorch and oneDNN capped at AVX2 (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``): on a
    larger CPU this is what an AVX2-only machine sees; on such a machine it changes nothing.
    bf16 autocast inference must take the ordinary path there, not crash in oneDNN."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", AS_AVX2], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["features"]["isa"] == "AVX2"
    assert not report["features"]["avx512_bf16"] and not report["features"]["amx"]
    assert not report["features"]["packed_bf16_kernels"]
    assert report["auto"] == "fp32"
    assert report["fast_blocks"] == 0
    assert report["max_diff"] < 0.05


def test_compile_auto_compiles_on_cuda_only_and_keeps_graphs_in_our_cache(monkeypatch, tmp_path):
    from imagejepa.runtime import compile_pays, keep_compiled_graphs

    cpu_device, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert compile_pays("auto", gpu) and not compile_pays("auto", cpu_device)
    assert compile_pays(True, cpu_device) and not compile_pays(False, gpu)
    monkeypatch.setenv("IMAGEJEPA_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    keep_compiled_graphs()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")  # the user's choice stays
    keep_compiled_graphs()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/else"
