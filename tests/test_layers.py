"""Tests of the ViT building blocks in ``imagejepa.models.layers``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imagejepa.models.layers import (
    LAYER_NORM_EPS,
    Attention,
    Block,
    PatchEmbed,
    init_weights,
    plain_attention,
)


def test_patch_embed_shape_and_raster_order():
    torch.manual_seed(0)
    embed = PatchEmbed(patch_size=8, in_chans=3, embed_dim=64)
    images = torch.randn(2, 3, 32, 24)
    tokens = embed(images)
    assert tokens.shape == (2, (32 // 8) * (24 // 8), 64)

    # Token r * W + c is the linear map of patch (r, c): check against an explicit unfold.
    grid_w = 24 // 8
    weight = embed.proj.weight.reshape(64, -1)
    for r, c in [(0, 0), (0, 2), (1, 0), (3, 1)]:
        patch = images[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8].reshape(2, -1)
        expected = patch @ weight.T + embed.proj.bias
        torch.testing.assert_close(tokens[:, r * grid_w + c], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(30, 32), (32, 33)])
def test_patch_embed_rejects_non_divisible_size(size):
    embed = PatchEmbed(patch_size=8, in_chans=3, embed_dim=16)
    with pytest.raises(ValueError, match="not divisible by patch size 8"):
        embed(torch.randn(1, 3, *size))


def test_attention_sdpa_matches_plain_path():
    torch.manual_seed(0)
    sdpa = Attention(64, num_heads=4, use_sdpa=True)
    plain = Attention(64, num_heads=4, use_sdpa=False)
    plain.load_state_dict(sdpa.state_dict())
    x = torch.randn(3, 17, 64)
    out_sdpa, out_plain = sdpa(x), plain(x)
    assert out_sdpa.shape == (3, 17, 64)
    torch.testing.assert_close(out_sdpa, out_plain, atol=1e-5, rtol=1e-5)


def test_sdpa_equals_plain_attention_on_random_qkv():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 11, 16) for _ in range(3))
    torch.testing.assert_close(
        F.scaled_dot_product_attention(q, k, v), plain_attention(q, k, v), atol=1e-5, rtol=1e-5
    )


def test_plain_attention_matches_definition():
    """softmax(q k^T / sqrt(d)) v written out per query, independently of the batched code."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 5, 8, dtype=torch.float64) for _ in range(3))
    out = plain_attention(q, k, v)
    for i in range(5):
        scores = torch.stack([(q[0, 0, i] * k[0, 0, j]).sum() / 8**0.5 for j in range(5)])
        weights = torch.exp(scores - scores.max())
        weights = weights / weights.sum()
        expected = (weights[:, None] * v[0, 0]).sum(0)
        torch.testing.assert_close(out[0, 0, i], expected)


def test_attention_rejects_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="not divisible by 5 heads"):
        Attention(64, num_heads=5)


def test_block_shape_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    block = Block(64, num_heads=4, mlp_hidden_dim=128)
    x = torch.randn(2, 9, 64, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    out.pow(2).mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_block_is_pre_norm_residual():
    """out = h + mlp(norm2(h)) with h = x + attn(norm1(x))."""
    torch.manual_seed(0)
    block = Block(32, num_heads=2, mlp_hidden_dim=64)
    x = torch.randn(2, 5, 32)

    def norm(t, ln):
        return F.layer_norm(t, (32,), ln.weight, ln.bias, LAYER_NORM_EPS)

    h = x + block.attn(norm(x, block.norm1))
    expected = h + block.mlp(norm(h, block.norm2))
    torch.testing.assert_close(block(x), expected)


def test_init_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.LayerNorm(512), nn.Conv2d(3, 8, 4))
    # Start from values init_weights must overwrite.
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    model.apply(init_weights)
    linear, norm, conv = model
    assert torch.equal(linear.bias, torch.zeros(512))
    assert torch.equal(conv.bias, torch.zeros(8))
    assert torch.equal(norm.weight, torch.ones(512))
    assert torch.equal(norm.bias, torch.zeros(512))
    w = linear.weight
    assert 0.018 <= w.std().item() <= 0.022
    assert abs(w.mean().item()) < 1e-3
    # nn.init.trunc_normal_(std=0.02) truncates at a=-2, b=2 in absolute units, exactly like the
    # official I-JEPA code (src/utils/tensors.py trunc_normal_, a=-2., b=2.): at std 0.02 that
    # is no truncation at all, so about 4.55% of the weights lie beyond 2 std (0.04).
    tail = (w.abs() > 0.04).float().mean().item()
    assert 0.035 <= tail <= 0.056
    assert conv.weight.std().item() > 0.01


def test_attention_cpu_bf16_uses_written_out_path(monkeypatch):
    """On CPU in bf16 the SDPA kernel is bypassed (documented speed choice); fp32 uses it."""
    torch.manual_seed(0)
    attn = Attention(32, num_heads=2, use_sdpa=True)
    x = torch.randn(2, 6, 32)
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    attn(x)
    assert len(calls) == 1
    out_bf16 = attn.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert len(calls) == 1 and out_bf16.dtype == torch.bfloat16
    plain = Attention(32, num_heads=2, use_sdpa=False).to(torch.bfloat16)
    plain.load_state_dict(attn.state_dict())
    assert torch.equal(out_bf16, plain(x.to(torch.bfloat16)))


def test_block_inference_in_place_gives_the_training_values_and_keeps_its_input():
    """Without gradients the block adds and applies GELU in place, on its own tensors only."""
    torch.manual_seed(0)
    block = Block(32, num_heads=4, mlp_hidden_dim=128).eval()
    x = torch.randn(2, 9, 32)
    kept = x.clone()
    with torch.no_grad():
        fast = block(x)
    assert torch.equal(x, kept) and fast.data_ptr() != x.data_ptr()
    torch.testing.assert_close(fast, block(x).detach(), rtol=0, atol=0)


@pytest.mark.parametrize("grad", [True, False])
def test_block_queries_from_computes_only_the_kept_tokens(grad):
    """``queries_from=s``: the outputs of tokens s: alone, equal to the full block's."""
    torch.manual_seed(0)
    block = Block(32, num_heads=4, mlp_hidden_dim=128)
    x = torch.randn(3, 11, 32)
    with torch.set_grad_enabled(grad):
        tail = block(x, queries_from=7)
        full = block(x)[:, 7:]
    assert tail.shape == (3, 4, 32)
    torch.testing.assert_close(tail, full, rtol=1e-5, atol=1e-6)
