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
    use_attention_kernel,
)
from imagejepa.models.softmax_attention import plain_attention
from imagejepa.runtime import attention_kernel

from . import reference_block


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
    sdpa = Attention(64, num_heads=4)
    plain = Attention(64, num_heads=4)
    plain.load_state_dict(sdpa.state_dict())
    use_attention_kernel(plain, plain_attention)
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


def test_attention_runs_sdpa_unless_the_runtime_picks_the_written_out_form(monkeypatch):
    """The model calls SDPA; the runtime swaps in the written-out form on CPU in bf16 (a
    documented speed choice, the same values), SDPA elsewhere."""
    torch.manual_seed(0)
    block = Block(32, num_heads=2, mlp_hidden_dim=64)
    x = torch.randn(2, 6, 32)
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    block.attn.kernel = F.scaled_dot_product_attention  # the default, patched for counting
    out = block(x)
    assert len(calls) == 1
    cpu = torch.device("cpu")
    assert attention_kernel(cpu, "bf16") is plain_attention
    assert attention_kernel(cpu, "fp32") is counting_sdpa
    assert attention_kernel(torch.device("meta"), "bf16") is counting_sdpa
    use_attention_kernel(block, attention_kernel(cpu, "bf16"))
    torch.testing.assert_close(block(x), out, rtol=1e-5, atol=1e-6)
    assert len(calls) == 1


@pytest.mark.parametrize("grad", [True, False])
def test_plain_block_equals_the_block_it_replaced(grad):
    """The plain block (two residual lines, SDPA) against the block before it (three paths,
    in-place ops without gradients; tests/reference_block.py), the same weights in fp32:
    outputs to 1e-6 and gradients to 1e-5, whole and with ``queries_from``."""
    torch.manual_seed(0)
    block = Block(48, num_heads=3, mlp_hidden_dim=192)
    with torch.no_grad():  # non-trivial norms and biases
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    for use_sdpa in (True, False):
        before = reference_block.Block(48, num_heads=3, mlp_hidden_dim=192, use_sdpa=use_sdpa)
        before.load_state_dict(block.state_dict())
        for queries_from in (0, 7):
            x = torch.randn(4, 13, 48)
            xs = [x.clone().requires_grad_(grad) for _ in range(2)]
            with torch.set_grad_enabled(grad):
                new, old = block(xs[0], queries_from), before(xs[1], queries_from)
            torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
            assert torch.equal(xs[1].detach(), x)  # neither changes its input
            if grad:
                weights = torch.randn_like(new)  # gradients of order one
                (new * weights).sum().backward()
                (old * weights).sum().backward()
                torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-5)
                for (name, p), q in zip(block.named_parameters(), before.parameters()):
                    torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=name)
                block.zero_grad(), before.zero_grad()


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
