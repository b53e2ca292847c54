"""The bf16 CPU inference fast path computes what eager bf16 autocast computes."""

from __future__ import annotations

import pytest
import torch

from imagejepa.models import Encoder, cpu_bf16


def eager(encoder, images, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(cpu_bf16, "active", lambda x: False)
        return encoder(images)


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return Encoder("vit_small", 16, 64, depth=2).eval()


def test_fast_path_is_taken_only_for_bf16_autocast_inference(encoder):
    x = torch.randn(1, 4, 384)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_bf16.active(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_bf16.active(x)  # gradients on: training uses the ordinary path
    with torch.no_grad():
        assert not cpu_bf16.active(x)  # fp32


def test_train_mode_keeps_the_ordinary_path(encoder, monkeypatch):
    """A target encoder inside a training step (train mode, no grad) is not touched."""
    calls = []
    monkeypatch.setattr(cpu_bf16, "block_forward", lambda block, x: calls.append(1) or x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        encoder.train()(torch.randn(1, 3, 64, 64))
        assert not calls
        encoder.eval()(torch.randn(1, 3, 64, 64))
    assert len(calls) == 2  # both blocks took the fast path


def test_fast_path_matches_eager_autocast(encoder, monkeypatch):
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


def test_weight_cache_follows_weight_changes(encoder):
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = encoder(images).float()
        encoder.blocks[0].mlp.fc1.weight.mul_(2.0)  # in place, as an EMA update or a load does
        after = encoder(images).float()
    with torch.no_grad():
        reference = encoder(images)
    assert (after - before).abs().max() > 0.1
    assert (after - reference).abs().max() < 0.05


def test_fast_path_leaves_its_input_alone(encoder):
    """Blocks return new tensors: out_layers keeps every block's output intact."""
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = encoder.embed_patches(images)
        kept = x.clone()
        y = encoder.blocks[0](x)
        assert torch.equal(x, kept) and y.data_ptr() != x.data_ptr()
        both = encoder(images, out_layers=2)
        torch.testing.assert_close(both[0], encoder.norm(encoder.blocks[0](x)), rtol=0, atol=0)
