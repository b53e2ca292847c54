"""Parity with timm ``vit_*_gap`` models (no class token, average pool), both directions.

Models are built from configs with random weights; nothing is downloaded.
"""

from __future__ import annotations

import pytest
import timm  # test extra: pip install -e '.[test]'
import torch
from safetensors.torch import save_file

from imagejepa import load_encoder
from imagejepa.interop.convert import convert, detect_format, read_model
from imagejepa.interop.export import ExportError

from .helpers import official_save_dict, tiny_ijepa
from .test_interop_hf import SHAPES, TOL, max_diff, our_encoder, shape_params


def timm_model(name: str, seed: int = 0):
    width, depth, heads, mlp, patch, img = SHAPES[name]
    torch.manual_seed(seed)
    return timm.create_model("vit_base_patch16_gap_224", pretrained=False, img_size=img, patch_size=patch,
                             embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp / width,
                             class_token=False, global_pool="avg", fc_norm=False, num_classes=0).eval()


@pytest.mark.parametrize("name", shape_params())
def test_import_timm_state_dict_matches_forward_features(big_tmp_path, name):
    tmp_path = big_tmp_path  # gigabytes at the huge shape: removed when the test ends
    model = timm_model(name)
    save_file(model.state_dict(), str(tmp_path / "vit.safetensors"))
    assert detect_format(tmp_path / "vit.safetensors") == "timm"
    encoder, _ = load_encoder(tmp_path / "vit.safetensors", which="context")
    img = SHAPES[name][-1]
    images = torch.randn(2, 3, img, img)
    with torch.no_grad():
        assert max_diff(encoder.forward_features(images), model.forward_features(images)) <= TOL
        # timm's pooled output (no head) is our embed()
        assert max_diff(encoder.embed(images), model(images)) <= TOL


@pytest.mark.parametrize("name", shape_params())
def test_export_to_timm_loads_both_ways(big_tmp_path, name):
    tmp_path = big_tmp_path  # gigabytes at the huge shape: removed when the test ends
    encoder = our_encoder(name)
    state = encoder.state_dict() | {"pos_embed": encoder.position_embedding()}
    save_file(state, str(tmp_path / "src.safetensors"))
    convert(tmp_path / "src.safetensors", tmp_path / "timm", to="timm", which="context")
    img = SHAPES[name][-1]
    images = torch.randn(2, 3, img, img)
    # 1. timm's own local-folder loader, config included
    loaded = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    # 2. the bare state dict into a model built by hand, strictly
    width, depth, heads, mlp, patch, _ = SHAPES[name]
    by_hand = timm.create_model("vit_base_patch16_gap_224", pretrained=False, img_size=img, patch_size=patch,
                                embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp / width,
                                class_token=False, global_pool="avg", num_classes=0).eval()
    from safetensors.torch import load_file

    by_hand.load_state_dict(load_file(str(tmp_path / "timm" / "model.safetensors")), strict=True)
    with torch.no_grad():
        ours = encoder.forward_features(images)
        assert max_diff(loaded.forward_features(images), ours) <= TOL
        assert max_diff(by_hand.forward_features(images), ours) <= TOL
    assert loaded.pretrained_cfg["mean"] == [0.485, 0.456, 0.406]


def test_round_trip_official_timm_imagejepa_is_exact(tmp_path):
    """official -> timm (target encoder) -> imagejepa: the target encoder's tensors unchanged."""
    model = tiny_ijepa()
    torch.save(official_save_dict(model), tmp_path / "ckpt.pth.tar")
    convert(tmp_path / "ckpt.pth.tar", tmp_path / "timm", to="timm")  # default: target
    convert(tmp_path / "timm", tmp_path / "ours", to="imagejepa")
    bundle = read_model(tmp_path / "ours")
    assert bundle.has("target") and not bundle.has("context")  # imagejepa.json recorded which
    for k, v in model.target_encoder.state_dict().items():
        assert torch.equal(bundle.states["target_encoder"][k], v), k
    assert bundle.encoder_spec["pos_embed"] == "sincos"


def test_export_refuses_a_missing_encoder_and_an_existing_output(tmp_path):
    model = timm_model("tiny")
    save_file(model.state_dict(), str(tmp_path / "vit.safetensors"))
    convert(tmp_path / "vit.safetensors", tmp_path / "ours")
    with pytest.raises(ExportError, match="no target encoder"):
        convert(tmp_path / "ours", tmp_path / "timm", to="timm")  # it holds the context encoder only
    with pytest.raises(ExportError, match="already exists"):
        convert(tmp_path / "vit.safetensors", tmp_path / "ours")
