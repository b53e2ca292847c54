"""``imagejepa.inference``: opt-in, the plain model's values, and on a CPU that can, oneDNN's
packed bf16 kernels under bf16 autocast.

The packed path needs oneDNN's packed bf16 kernels, which CPUs without AVX512BW/VL/DQ or
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

from imagejepa.inference import InferenceBlock, cpu_bf16, optimize
from imagejepa.models import Encoder
from imagejepa.models.layers import Block
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
    """Make the packed path available, with oneDNN's kernels (``real``) or plain-torch ones."""
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


def count_packed_blocks(monkeypatch) -> list:
    calls, original = [], InferenceBlock.packed_bf16
    monkeypatch.setattr(InferenceBlock, "packed_bf16", lambda block, x: calls.append(1) or original(block, x))
    return calls


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return Encoder("vit_small", 16, 64, depth=2).eval()


def test_optimize_is_opt_in_and_leaves_the_encoder_and_its_state_dict_alone(encoder):
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    fast = optimize(encoder)
    assert all(type(b) is Block for b in encoder.blocks)  # the given encoder is not changed
    assert all(isinstance(b, InferenceBlock) for b in fast.blocks)
    state, fast_state = encoder.state_dict(), fast.state_dict()
    assert list(fast_state) == list(state)
    for name, value in fast_state.items():  # the same storage: nothing copied
        assert value.data_ptr() == state[name].data_ptr() and torch.equal(value, before[name])
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    assert all(p.requires_grad for p in encoder.parameters())
    # A model loads from the twin's state dict, and the twin from the model's.
    other = Encoder.from_spec(encoder.spec())
    other.load_state_dict(fast_state)
    fast.load_state_dict(other.state_dict())


def test_optimized_encoder_gives_the_plain_features_in_fp32(encoder):
    """fp32 without gradients: the in-place path, to the bit."""
    images = torch.randn(3, 3, 64, 64)
    fast = optimize(encoder)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), encoder(images), rtol=0, atol=0)
        torch.testing.assert_close(fast(images, out_layers=2), encoder(images, out_layers=2), rtol=0, atol=0)
        keep = torch.tensor([[0, 3, 5], [1, 2, 15], [4, 8, 9]])
        torch.testing.assert_close(fast(images, keep), encoder(images, keep), rtol=0, atol=0)
    with torch.enable_grad():  # gradients on: the plain block, gradients flow as through the model
        assert not fast(images).requires_grad  # its parameters are frozen...
        x = fast.embed_patches(images).requires_grad_()
        fast.blocks[0](x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_capability_check_agrees_with_pytorch():
    ops = torch.ops.mkldnn
    expected = torch.backends.mkldnn.is_available() and ops._is_mkldnn_bf16_supported()
    assert cpu.packed_bf16_kernels() == expected
    f = cpu.features()
    assert f["packed_bf16_kernels"] == expected
    assert cpu.has_bf16_matmul_units() == bool(f["avx512_bf16"] or f["amx"])


@pytest.mark.parametrize("capable", [True, False])
def test_packed_path_is_for_bf16_autocast_inference_on_a_capable_cpu(monkeypatch, capable):
    monkeypatch.setattr(cpu, "packed_bf16_kernels", lambda: capable)
    x = torch.randn(1, 4, 384)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_bf16.active(x) == capable
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_bf16.active(x)  # gradients on
    with torch.no_grad():
        assert not cpu_bf16.active(x)  # fp32


def test_dispatch_gives_the_same_numbers_either_way(encoder, monkeypatch):
    """Forced capable (real kernels, or stand-ins where the CPU lacks them) and forced not:
    the packed path is taken in every block or in none, and both stay at bf16 distance of fp32."""
    images = torch.randn(3, 3, 64, 64)
    fast = optimize(encoder)
    outputs = {}
    for capable in (True, False):
        with monkeypatch.context() as m:
            if capable:
                use_kernels(m, "real" if KERNELS else "stand-in")
            else:
                m.setattr(cpu, "packed_bf16_kernels", lambda: False)
            calls = count_packed_blocks(m)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                outputs[capable] = fast(images).float()
            assert len(calls) == (encoder.depth if capable else 0)
    with torch.no_grad():
        full = encoder(images)
    assert (outputs[True] - outputs[False]).abs().max() < 0.05
    for out in outputs.values():
        assert (out - full).abs().max() < 0.05


def test_plain_model_never_takes_the_packed_path(encoder, monkeypatch):
    monkeypatch.setattr(cpu, "packed_bf16_kernels", lambda: True)
    calls = count_packed_blocks(monkeypatch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        encoder(torch.randn(1, 3, 64, 64))
    assert not calls


def test_packed_path_matches_the_plain_model_under_autocast(encoder, kernels):
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = optimize(encoder)(images).float()
        slow = encoder(images).float()
    with torch.no_grad():
        full = encoder(images)
    # bf16 rounding differs in places (GELU inside the matmul); both stay at bf16 distance of fp32.
    assert (fast - slow).abs().max() < 0.05
    assert (fast - full).abs().max() < 0.05 and (slow - full).abs().max() < 0.05
    assert (fast - full).abs().mean() <= 1.2 * (slow - full).abs().mean()


def test_packed_weights_follow_weight_changes(encoder, kernels):
    images = torch.randn(2, 3, 64, 64)
    fast = optimize(encoder)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = fast(images).float()
        encoder.blocks[0].mlp.fc1.weight.mul_(2.0)  # in place, on the shared storage
        after = fast(images).float()
    with torch.no_grad():
        reference = encoder(images)
    assert (after - before).abs().max() > 0.1
    assert (after - reference).abs().max() < 0.05


def test_inference_blocks_leave_their_input_alone(encoder, kernels):
    """Blocks return new tensors: out_layers keeps every block's output intact."""
    images = torch.randn(2, 3, 64, 64)
    fast = optimize(encoder)
    for precision in ("fp32", "bf16"):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            x = fast.embed_patches(images)
            kept = x.clone()
            y = fast.blocks[0](x)
            assert torch.equal(x, kept) and y.data_ptr() != x.data_ptr()
            both = fast(images, out_layers=2)
            torch.testing.assert_close(both[0], fast.norm(fast.blocks[0](x)), rtol=0, atol=0)
