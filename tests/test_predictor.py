"""Tests of the narrow I-JEPA predictor."""

from __future__ import annotations

import pytest
import torch

from imagejepa.models import Predictor
from imagejepa.models.pos_embed import sincos_2d

D = 192  # vit_tiny width


def make_predictor(depth: int = 2) -> Predictor:
    torch.manual_seed(0)
    return Predictor(D, grid=(4, 4), pred_dim=64, depth=depth, num_heads=4)


@pytest.fixture
def inputs():
    torch.manual_seed(1)
    context = torch.randn(2, 6, D)
    context_idx = torch.tensor([[0, 1, 2, 4, 5, 6], [8, 9, 10, 12, 13, 14]])
    target_idx = torch.tensor([[[10, 11, 14], [3, 7, 15]], [[2, 3, 7], [0, 1, 5]]])  # (2, 2, 3)
    return context, context_idx, target_idx


def test_output_shape(inputs):
    pred = make_predictor()(*inputs)
    assert pred.shape == (2, 2, 3, D)
    assert torch.isfinite(pred).all()


def test_targets_do_not_attend_to_each_other(inputs):
    predictor = make_predictor()
    context, context_idx, target_idx = inputs
    moved = target_idx.clone()
    moved[:, 1] = torch.tensor([[12, 13, 15], [11, 14, 15]])  # only target 1 changes
    a = predictor(context, context_idx, target_idx)
    b = predictor(context, context_idx, moved)
    torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-6, rtol=0)
    # Target 1's prediction does depend on its positions.
    assert (a[:, 1] - b[:, 1]).abs().max() > 1e-3
    # And a target predicted alone (T=1) equals its prediction among others.
    alone = predictor(context, context_idx, target_idx[:, :1])
    torch.testing.assert_close(alone[:, 0], a[:, 0], atol=1e-6, rtol=0)


def test_mask_tokens_of_one_block_attend_to_each_other(inputs):
    """Within a block the mask tokens share a sequence: moving one changes the others."""
    predictor = make_predictor()
    context, context_idx, target_idx = inputs
    moved = target_idx.clone()
    moved[:, 0, 2] = torch.tensor([15, 6])
    a = predictor(context, context_idx, target_idx)
    b = predictor(context, context_idx, moved)
    assert (a[:, 0, :2] - b[:, 0, :2]).abs().max() > 1e-5


def test_prediction_depends_on_context(inputs):
    predictor = make_predictor()
    context, context_idx, target_idx = inputs
    a = predictor(context, context_idx, target_idx)
    changed = context.clone()
    changed[0, 3] += 1.0  # one token of sample 0
    b = predictor(changed, context_idx, target_idx)
    assert (a[0] - b[0]).abs().max() > 1e-4
    torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=0)  # other sample untouched
    # Context positions matter too.
    c = predictor(context, context_idx.flip(1), target_idx)
    assert (a - c).abs().max() > 1e-4


def test_gradients_reach_every_parameter(inputs):
    predictor = make_predictor()
    context, context_idx, target_idx = inputs
    context.requires_grad_(True)
    predictor(context, context_idx, target_idx).pow(2).mean().backward()
    for name, p in predictor.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert predictor.mask_token.grad.abs().sum() > 0
    assert context.grad.abs().sum() > 0


def test_pos_embed_and_mask_token_init():
    predictor = make_predictor()
    assert predictor.pos_embed.shape == (1, 16, 64)
    torch.testing.assert_close(predictor.pos_embed[0], sincos_2d(64, 4, 4))
    assert "pos_embed" not in predictor.state_dict()
    assert predictor.mask_token.shape == (1, 1, 64)
    assert predictor.mask_token.abs().sum() > 0  # trunc-normal, not left at zero
    predictor.set_grid((2, 8))
    assert predictor.pos_embed.shape == (1, 16, 64)
    torch.testing.assert_close(predictor.pos_embed[0], sincos_2d(64, 2, 8))


def test_matches_the_written_out_definition(inputs):
    """Every block over every token of each [context, mask tokens] sequence, then the mask
    tokens' outputs: what the predictor computes (its last block only for the mask tokens)."""
    predictor = make_predictor()
    context, context_idx, target_idx = inputs
    B, T, Kt = target_idx.shape
    pos = predictor.pos_embed[0]
    sequences = []
    for b in range(B):
        for t in range(T):
            ctx = predictor.predictor_embed(context[b]) + pos[context_idx[b]]
            masks = predictor.mask_token[0] + pos[target_idx[b, t]]
            sequences.append(torch.cat([ctx, masks]))
    x = torch.stack(sequences)
    for block in predictor.predictor_blocks:
        x = x + block.attn(block.norm1(x))
        x = x + block.mlp(block.norm2(x))
    expected = predictor.predictor_proj(predictor.predictor_norm(x[:, -Kt:])).reshape(B, T, Kt, D)
    torch.testing.assert_close(predictor(context, context_idx, target_idx), expected, rtol=1e-5, atol=1e-6)
