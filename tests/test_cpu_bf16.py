"""The bf16 CPU inference fast path: taken exactly when the CPU can run it, same numbers either way.

The fast path needs oneDNN's packed bf16 kernels, which CPUs without AVX512BW/VL/DQ or
AVX-NE-CONVERT (AVX2-only x86) refuse to run. The kernels themselves are tested where the CPU
has them and skipped, with the reason, where it does not. Everything else (the dispatch, the
weight cache, the in-place residual) runs on every CPU: the capability check is forced both
ways, and where the real kernels cannot run, plain-torch stand-ins with the same contract
take their place.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from imagejepa.models import Encoder, cpu_bf16
from imagejepa.utils import cpu

KERNELS = cpu.packed_bf16_kernels()
NO_KERNELS = (
    f"this CPU (PyTorch ISA {cpu.features()['isa']}) cannot run oneDNN's packed bf16 kernels "
    "(they need AVX512BW+VL+DQ or AVX-NE-CONVERT); the same code is tested with stand-in kernels"
)


def stand_in_matmul(x, weight, bias, gelu):
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def use_kernels(monkeypatch, kind: str) -> None:
    """Make the fast path available, with oneDNN's kernels (``real``) or plain-torch ones."""
    monkeypatch.setattr(cpu, "packed_bf16_kernels", lambda: True)
    if kind == "stand-in":
        monkeypatch.setattr(cpu_bf16, "pack_weight", lambda weight, rows: weight)
        monkeypatch.setattr(cpu_bf16, "packed_matmul", stand_in_matmul)


@pytest.fixture(params=[
    pytest.param("real", marks=pytest.mark.skipif(not KERNELS, reason=NO_KERNELS)),
    "stand-in",
])
def kernels(request, monkeypatch):
    use_kernels(monkeypatch, request.param)
    return request.param


def count_fast_blocks(monkeypatch) -> list:
    calls, original = [], cpu_bf16.block_forward
    monkeypatch.setattr(cpu_bf16, "block_forward", lambda block, x: calls.append(1) or original(block, x))
    return calls


def eager(encoder, images, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(cpu_bf16, "active", lambda x: False)
        return encoder(images)


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return Encoder("vit_small", 16, 64, depth=2).eval()


def test_capability_check_agrees_with_pytorch():
    ops = torch.ops.mkldnn
    expected = torch.backends.mkldnn.is_available() and ops._is_mkldnn_bf16_supported()
    assert cpu.packed_bf16_kernels() == expected
    f = cpu.features()
    assert f["packed_bf16_kernels"] == expected
    assert cpu.has_bf16_matmul_units() == bool(f["avx512_bf16"] or f["amx"])


@pytest.mark.parametrize("capable", [True, False])
def test_fast_path_is_taken_only_for_bf16_autocast_inference_on_a_capable_cpu(monkeypatch, capable):
    monkeypatch.setattr(cpu, "packed_bf16_kernels", lambda: capable)
    x = torch.randn(1, 4, 384)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_bf16.active(x) == capable
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_bf16.active(x)  # gradients on: training uses the ordinary path
    with torch.no_grad():
        assert not cpu_bf16.active(x)  # fp32


def test_dispatch_gives_the_same_numbers_either_way(encoder, monkeypatch):
    """Forced capable (real kernels, or stand-ins where the CPU lacks them) and forced not:
    the fast path is taken in every block or in none, and both stay at bf16 distance of fp32."""
    images = torch.randn(3, 3, 64, 64)
    outputs = {}
    for capable in (True, False):
        with monkeypatch.context() as m:
            if capable:
                use_kernels(m, "real" if KERNELS else "stand-in")
            else:
                m.setattr(cpu, "packed_bf16_kernels", lambda: False)
            calls = count_fast_blocks(m)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                outputs[capable] = encoder(images).float()
            assert len(calls) == (encoder.depth if capable else 0)
    with torch.no_grad():
        full = encoder(images)
    assert (outputs[True] - outputs[False]).abs().max() < 0.05
    for out in outputs.values():
        assert (out - full).abs().max() < 0.05


def test_train_mode_keeps_the_ordinary_path(encoder, monkeypatch):
    """A target encoder inside a training step (train mode, no grad) is not touched."""
    monkeypatch.setattr(cpu, "packed_bf16_kernels", lambda: True)
    calls = []
    monkeypatch.setattr(cpu_bf16, "block_forward", lambda block, x: calls.append(1) or x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        encoder.train()(torch.randn(1, 3, 64, 64))
        assert not calls
        encoder.eval()(torch.randn(1, 3, 64, 64))
    assert len(calls) == 2  # both blocks took the fast path


def test_fast_path_matches_eager_autocast(encoder, kernels, monkeypatch):
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = encoder(images).float()
        slow = eager(encoder, images, monkeypatch).float()
    with torch.no_grad():
        full = encoder(images)
    # bf16 rounding differs in places (GELU inside the matmul); both stay at bf16 distance of fp32.
    assert (fast - slow).abs().max() < 0.05
    assert (fast - full).abs().max() < 0.05 and (slow - full).abs().max() < 0.05
    assert (fast - full).abs().mean() <= 1.2 * (slow - full).abs().mean()


def test_weight_cache_follows_weight_changes(encoder, kernels):
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = encoder(images).float()
        encoder.blocks[0].mlp.fc1.weight.mul_(2.0)  # in place, as an EMA update or a load does
        after = encoder(images).float()
    with torch.no_grad():
        reference = encoder(images)
    assert (after - before).abs().max() > 0.1
    assert (after - reference).abs().max() < 0.05


def test_fast_path_leaves_its_input_alone(encoder, kernels):
    """Blocks return new tensors: out_layers keeps every block's output intact."""
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = encoder.embed_patches(images)
        kept = x.clone()
        y = encoder.blocks[0](x)
        assert torch.equal(x, kept) and y.data_ptr() != x.data_ptr()
        both = encoder(images, out_layers=2)
        torch.testing.assert_close(both[0], encoder.norm(encoder.blocks[0](x)), rtol=0, atol=0)
