"""Tests of the ViT encoder (``imagejepa.models.vit``)."""

from __future__ import annotations

import pytest
import torch

from imagejepa.models.pos_embed import sincos_2d
from imagejepa.models.vit import ARCHS, Encoder, gather_tokens, get_arch


def tiny_encoder(depth: int = 2, **kw) -> Encoder:
    # vit_tiny width (192) and heads (3), 32x32 images in 8x8 patches: a 4x4 grid.
    return Encoder("vit_tiny", patch_size=8, img_size=32, in_chans=3, depth=depth, **kw)


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def test_forward_shapes(images):
    torch.manual_seed(0)
    enc = tiny_encoder()
    assert enc.grid == (4, 4) and enc.num_patches == 16
    assert enc(images).shape == (2, 16, 192)
    keep = torch.tensor([[0, 3, 5, 9, 15], [1, 2, 4, 8, 14]])
    assert enc(images, keep=keep).shape == (2, 5, 192)
    assert enc.forward_features(images).shape == (2, 16, 192)


def test_keep_all_equals_full_forward(images):
    torch.manual_seed(0)
    enc = tiny_encoder()
    keep = torch.arange(16).expand(2, -1)
    torch.testing.assert_close(enc(images, keep=keep), enc(images), atol=1e-6, rtol=1e-6)


def test_keep_selects_tokens_before_the_blocks(images):
    """A kept subset is processed on its own: equal to running the blocks on gathered tokens."""
    torch.manual_seed(0)
    enc = tiny_encoder()
    keep = torch.tensor([[0, 3, 5, 9], [1, 2, 4, 8]])
    x = gather_tokens(enc.embed_patches(images), keep)
    for block in enc.blocks:
        x = block(x)
    torch.testing.assert_close(enc(images, keep=keep), enc.norm(x), atol=1e-6, rtol=1e-6)
    # Attention over fewer tokens changes the result: it is not a gather of the full output.
    full = gather_tokens(enc(images), keep)
    assert not torch.allclose(enc(images, keep=keep), full, atol=1e-4)


def test_out_layers(images):
    torch.manual_seed(0)
    enc = tiny_encoder(depth=4)
    out = enc(images, out_layers=4)
    assert out.shape == (4, 2, 16, 192)
    torch.testing.assert_close(out[-1], enc(images))
    # Entry i is block i's output through the final norm.
    x = enc.embed_patches(images)
    for i, block in enumerate(enc.blocks):
        x = block(x)
        torch.testing.assert_close(out[i], enc.norm(x))
    two = enc(images, out_layers=2)
    torch.testing.assert_close(two, out[2:])


def test_embed_is_mean_of_tokens(images):
    torch.manual_seed(0)
    enc = tiny_encoder()
    emb = enc.embed(images)
    assert emb.shape == (2, 192)
    torch.testing.assert_close(emb, enc(images).mean(1))


def test_set_img_size_recomputes_positions():
    torch.manual_seed(0)
    enc = tiny_encoder()
    enc.set_img_size(48)
    assert enc.grid == (6, 6) and enc.img_size == (48, 48)
    assert enc.pos_embed.shape == (1, 36, 192)
    torch.testing.assert_close(enc.pos_embed[0], sincos_2d(192, 6, 6))
    assert enc(torch.randn(1, 3, 48, 48)).shape == (1, 36, 192)
    enc.set_img_size((32, 48))
    assert enc.grid == (4, 6)
    assert enc(torch.randn(1, 3, 32, 48)).shape == (1, 24, 192)
    # The old size is now refused until set again; sizes must divide by the patch.
    with pytest.raises(ValueError, match="set_img_size"):
        enc(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="not divisible"):
        enc.set_img_size(50)
    # pos_embed is not saved: it is a function of the grid.
    assert "pos_embed" not in enc.state_dict()


def test_gradients_reach_every_parameter(images):
    torch.manual_seed(0)
    enc = tiny_encoder()
    keep = torch.tensor([[0, 3, 5, 9], [1, 2, 4, 8]])
    enc(images, keep=keep).pow(2).mean().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_in_chans_and_width_overrides():
    enc = Encoder("vit_small", 16, 32, 1, depth=1, embed_dim=96, num_heads=2)
    assert enc.embed_dim == 96 and enc.num_heads == 2 and len(enc.blocks) == 1
    # The MLP keeps the arch's ratio (4) at the overridden width.
    assert enc.blocks[0].mlp.fc1.out_features == 384
    assert enc(torch.randn(1, 1, 32, 32)).shape == (1, 4, 96)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "arch,patch,low,high",
    [
        ("vit_tiny", 16, 5.4e6, 5.8e6),
        ("vit_small", 16, 21e6, 22.5e6),
        ("vit_base", 16, 85e6, 87e6),
        ("vit_large", 16, 300e6, 306e6),
        ("vit_huge", 14, 625e6, 640e6),
        ("vit_giant", 16, 0.98e9, 1.02e9),
    ],
)
def test_parameter_counts_match_paper(arch, patch, low, high):
    with torch.device("meta"):
        enc = Encoder(arch, patch, 224, 3)
    spec = ARCHS[arch]
    assert enc.embed_dim == spec.embed_dim
    assert len(enc.blocks) == enc.depth == spec.depth
    assert enc.num_heads == spec.num_heads == enc.blocks[0].attn.num_heads
    assert enc.blocks[0].mlp.fc1.out_features == spec.mlp_hidden_dim
    assert enc.num_patches == (224 // patch) ** 2
    assert low <= count(enc) <= high

    # The count is the closed form of the architecture: patch conv, 12 D^2 + 13 D per
    # block with MLP ratio 4 (more generally 4 D^2 + 2 D H + 9 D + H), final norm.
    D, H = spec.embed_dim, spec.mlp_hidden_dim
    per_block = 4 * D * D + 2 * D * H + 9 * D + H
    expected = 3 * patch * patch * D + D + spec.depth * per_block + 2 * D
    assert count(enc) == expected


def test_arch_table():
    assert {k: (a.embed_dim, a.depth, a.num_heads) for k, a in ARCHS.items()} == {
        "vit_tiny": (192, 12, 3),
        "vit_small": (384, 12, 6),
        "vit_base": (768, 12, 12),
        "vit_large": (1024, 24, 16),
        "vit_huge": (1280, 32, 16),
        "vit_giant": (1408, 40, 16),
    }
    for name, arch in ARCHS.items():
        ratio = 6144 / 1408 if name == "vit_giant" else 4
        assert arch.mlp_hidden_dim == round(arch.embed_dim * ratio)
    assert ARCHS["vit_giant"].mlp_hidden_dim == 6144


def test_unknown_arch_raises():
    with pytest.raises(ValueError) as info:
        get_arch("vit_gigantic")
    msg = str(info.value)
    assert "vit_gigantic" in msg
    for name in ARCHS:
        assert name in msg
    with pytest.raises(ValueError, match="vit_tiny"):
        Encoder("resnet50")


def test_gather_tokens():
    x = torch.arange(2 * 5 * 3).reshape(2, 5, 3)
    index = torch.tensor([[[4, 0]], [[1, 1]]])  # (B, 1, 2)
    out = gather_tokens(x, index)
    assert out.shape == (2, 1, 2, 3)
    assert torch.equal(out[0, 0, 0], x[0, 4]) and torch.equal(out[0, 0, 1], x[0, 0])
    assert torch.equal(out[1, 0, 0], x[1, 1]) and torch.equal(out[1, 0, 1], x[1, 1])


def test_spec_rebuilds_the_same_encoder(images):
    torch.manual_seed(0)
    enc = tiny_encoder(norm_eps=1e-5)
    twin = Encoder.from_spec(enc.spec())
    assert twin.spec() == enc.spec() and twin.norm.eps == 1e-5 == twin.blocks[0].norm1.eps
    twin.load_state_dict(enc.state_dict())
    torch.testing.assert_close(twin(images), enc(images), rtol=0, atol=0)


def test_learned_positions_are_a_parameter_resampled_for_other_sizes(images):
    torch.manual_seed(0)
    enc = tiny_encoder(pos_embed="learned")
    assert enc.state_dict()["pos_embed"].shape == (1, 16, 192) and enc.pos_embed.requires_grad
    assert enc.spec()["pos_grid"] == [4, 4]
    torch.testing.assert_close(enc.position_embedding(), enc.pos_embed)
    enc.set_img_size((32, 64))
    assert enc.pos_grid == (4, 4) and enc.position_embedding().shape == (1, 32, 192)
    # Rows keep their values along the unchanged axis: a table constant along each row is
    # resampled to one constant along each (longer) row. (Parity with Hugging Face's own
    # interpolation is in test_interop_hf.)
    with torch.no_grad():
        enc.pos_embed.copy_(torch.arange(4.0).repeat_interleave(4)[None, :, None].expand(1, 16, 192))
    rows = enc.position_embedding()[0, :, 0].reshape(4, 8)
    torch.testing.assert_close(rows, torch.arange(4.0)[:, None].expand(4, 8))
    assert enc(torch.randn(1, 3, 32, 64)).shape == (1, 32, 192)
    with pytest.raises(ValueError, match="pos_embed must be one of"):
        tiny_encoder(pos_embed="rope")


def test_vit_huge_224_weights_run_at_448():
    """A ViT-H/14 checkpoint trained at 224 runs at 448: same weights, positions recomputed for 32x32."""
    torch.manual_seed(0)
    at224 = Encoder("vit_huge", 14, 224, depth=1)
    at448 = Encoder.from_spec({**at224.spec(), "img_size": [448, 448]})
    at448.load_state_dict(at224.state_dict())  # the checkpoint carries no position table
    torch.testing.assert_close(at448.pos_embed[0], sincos_2d(1280, 32, 32))
    with torch.no_grad():
        out = at448.forward_features(torch.randn(1, 3, 448, 448))
    assert out.shape == (1, 1024, 1280) and torch.isfinite(out).all()


def test_builders_place_parameters_as_they_are_made():
    """``device`` and ``dtype`` in the builders: parameters made there, nothing allocated
    elsewhere first (on the meta device: shapes only)."""
    from imagejepa.models import Predictor

    encoder = Encoder("vit_small", 16, 64, depth=2, device="meta")
    predictor = Predictor(384, encoder.grid, pred_dim=96, depth=2, num_heads=4, device="meta")
    for model in (encoder, predictor):
        assert {p.device.type for p in model.parameters()} == {"meta"}
    half = Encoder("vit_tiny", 16, 32, depth=1, dtype=torch.bfloat16, pos_embed="learned")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16
