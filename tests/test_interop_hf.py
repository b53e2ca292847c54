"""Parity with Hugging Face ``transformers.IJepaModel``, both directions, tiny and huge shapes.

Models are built from configs with random weights; nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import IJepaConfig, IJepaModel  # test extra: pip install -e '.[test]'

from imagejepa import load_encoder
from imagejepa.interop.convert import convert, read_model
from imagejepa.masking import MaskSettings
from imagejepa.models import Encoder

from .helpers import official_save_dict, tiny_ijepa

TOL = 1e-4  # max abs difference allowed in fp32

SHAPES = {  # (width, depth, heads, mlp, patch, image)
    "tiny": (192, 2, 3, 768, 8, 32),
    # ViT-H/14 as released (width, heads, MLP, patch, image), with 12 of its 32 blocks: every
    # block maps alike, and 12 reach two-digit indices; 240M parameters instead of 630M.
    "huge": (1280, 12, 16, 5120, 14, 224),
}


def shape_params():
    return [pytest.param("tiny"), pytest.param("huge", marks=pytest.mark.slow)]


def hf_model(name: str, seed: int = 0) -> IJepaModel:
    width, depth, heads, mlp, patch, img = SHAPES[name]
    torch.manual_seed(seed)
    config = IJepaConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                         intermediate_size=mlp, image_size=img, patch_size=patch, layer_norm_eps=1e-6)
    return IJepaModel(config).eval()


def our_encoder(name: str, seed: int = 0) -> Encoder:
    width, depth, heads, mlp, patch, img = SHAPES[name]
    torch.manual_seed(seed)
    arch = "vit_tiny" if name == "tiny" else "vit_huge"
    return Encoder(arch, patch, img, depth=depth).eval()


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", shape_params())
def test_import_from_hf_matches_last_hidden_state(big_tmp_path, name):
    tmp_path = big_tmp_path  # gigabytes at the huge shape: removed when the test ends
    hf = hf_model(name)
    hf.save_pretrained(tmp_path / "hf")
    encoder, pre = load_encoder(tmp_path / "hf", which="context")  # the public ports hold the context encoder
    img = SHAPES[name][-1]
    images = torch.randn(2, 3, img, img)
    with torch.no_grad():
        diff = max_diff(encoder.forward_features(images), hf(pixel_values=images).last_hidden_state)
    assert diff <= TOL
    # HF's preprocessor default (mean/std 0.5) is not what I-JEPA was trained with.
    assert pre.mean == (0.485, 0.456, 0.406)
    # Random HF positions are not sin-cos: they are kept as a learned table.
    assert encoder.pos_kind == "learned"
    with pytest.raises(KeyError, match="no target encoder"):
        load_encoder(tmp_path / "hf")


@pytest.mark.parametrize("name", shape_params())
def test_export_to_hf_loads_with_from_pretrained(big_tmp_path, name):
    tmp_path = big_tmp_path  # gigabytes at the huge shape: removed when the test ends
    encoder = our_encoder(name)
    model = tiny_ijepa() if name == "tiny" else None
    src = tmp_path / "ours.pth.tar"
    if model is not None:  # a full official-layout checkpoint: pick the target encoder
        torch.save(official_save_dict(model), src)
        encoder = model.target_encoder
    else:
        torch.save({k: v for k, v in encoder.state_dict().items()}
                   | {"pos_embed": encoder.position_embedding()}, src)
    summary = convert(src, tmp_path / "hf", to="hf", which="target" if model else "context")
    assert summary["to"] == "hf"
    hf, info = IJepaModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    img = SHAPES[name][-1]
    images = torch.randn(2, 3, img, img)
    with torch.no_grad():
        assert max_diff(hf.eval()(pixel_values=images).last_hidden_state, encoder(images)) <= TOL
    processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.485, 0.456, 0.406]


def test_round_trip_hf_imagejepa_hf_is_exact(tmp_path):
    hf = hf_model("tiny")
    hf.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ours", to="imagejepa")
    convert(tmp_path / "ours", tmp_path / "hf2", to="hf", which="context")
    back = IJepaModel.from_pretrained(tmp_path / "hf2").state_dict()
    for k, v in hf.state_dict().items():
        assert torch.equal(back[k], v), k
    # and ours -> hf -> ours keeps every imagejepa tensor bit for bit
    first, second = read_model(tmp_path / "ours"), read_model(tmp_path / "hf2")
    assert first.encoder_spec == second.encoder_spec
    for k, v in first.states["encoder"].items():
        assert torch.equal(second.states["encoder"][k], v), k


def test_learned_positions_resample_like_hf_at_another_resolution(tmp_path):
    """A learned table (from an import) is resampled bicubically, as HF's interpolate_pos_encoding."""
    hf = hf_model("tiny")
    hf.save_pretrained(tmp_path / "hf")
    encoder, _ = load_encoder(tmp_path / "hf", which="context")
    encoder.set_img_size(64)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = encoder(images)
        theirs = hf(pixel_values=images, interpolate_pos_encoding=True).last_hidden_state
    assert ours.shape == (2, 64, 192) and max_diff(ours, theirs) <= TOL


def test_official_import_runs_at_448_with_recomputed_sincos(tmp_path):
    """A 224-style checkpoint (here 32px) runs at twice the resolution and non-square input."""
    model = tiny_ijepa()
    torch.save(official_save_dict(model), tmp_path / "ckpt.pth.tar")
    encoder, _ = load_encoder(tmp_path / "ckpt.pth.tar")
    encoder.set_img_size(64)
    assert encoder.embed(torch.randn(2, 3, 64, 64)).shape == (2, 192)
    encoder.set_img_size((32, 64))
    assert encoder.forward_features(torch.randn(1, 3, 32, 64)).shape == (1, 32, 192)


def test_import_reads_transformers_5_module_names_too(tmp_path):
    """Files written from transformers 5's in-memory names (layers.N.attention.q_proj ...)."""
    from safetensors.torch import save_file

    hf = hf_model("tiny", seed=3)
    assert any(k.startswith("layers.0.attention.q_proj") for k in hf.state_dict())
    (tmp_path / "hf").mkdir()
    save_file(hf.state_dict(), str(tmp_path / "hf" / "model.safetensors"))
    hf.config.to_json_file(tmp_path / "hf" / "config.json")
    encoder, _ = load_encoder(tmp_path / "hf", which="context")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(encoder(images), hf(pixel_values=images).last_hidden_state) <= TOL


def hub_cache(root, folder, repo: str, commit: str = "a1" * 20):
    """``folder`` laid out in ``root`` as huggingface_hub caches ``repo``: blobs named by their
    hash, the snapshot's files linking to them, ``refs/main`` naming the snapshot."""
    import hashlib

    model = root / f"models--{repo.replace('/', '--')}"
    (model / "blobs").mkdir(parents=True)
    (model / "snapshots" / commit).mkdir(parents=True)
    for f in folder.iterdir():
        blob = model / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        (model / "snapshots" / commit / f.name).symlink_to(blob)
    (model / "refs").mkdir()
    (model / "refs" / "main").write_text(commit)
    return root


def test_hf_hub_names_read_the_hub_cache_offline(tmp_path, monkeypatch, capsys):
    """hf-hub:ORG/NAME with HF_HUB_OFFLINE=1: the cached snapshot, the same encoder and the same
    features as its folder (load_encoder, eval); @REVISION too; a name not cached is one line,
    exit 2, saying what to do."""
    from imagejepa.cli import main

    hf_model("tiny").save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"height": 32, "width": 32}}))
    cache = hub_cache(tmp_path / "hub", tmp_path / "hf", "test-org/tiny-ijepa")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("hf-hub:test-org/tiny-ijepa", "hf-hub:test-org/tiny-ijepa@main"):
        encoder, pre = load_encoder(name, which="context")  # a Hugging Face port holds that one
        folder_encoder, folder_pre = load_encoder(tmp_path / "hf", which="context")
        assert pre == folder_pre and pre.mean == (0.485, 0.456, 0.406)  # ImageNet's, not the port's 0.5
        a, b = encoder.state_dict(), folder_encoder.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    reports = []
    for i, source in enumerate(("hf-hub:test-org/tiny-ijepa", str(tmp_path / "hf"))):
        out = tmp_path / f"report{i}.json"
        assert main(["eval", "knn", "--checkpoint", source, "--encoder", "context", "--data", "synthetic",
                     "--cache-dir", str(tmp_path / f"cache{i}"), "--out", str(out)]) == 0
        reports.append(json.loads(out.read_text())["results"])
    assert reports[0] == reports[1]
    capsys.readouterr()
    assert main(["convert", "hf-hub:test-org/not-cached", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hf-hub:test-org/not-cached: not in" in err[0]
    assert "HF_HUB_OFFLINE is set" in err[0]


def test_hf_hub_name_of_an_imagejepa_checkpoint_feeds_the_decoder(tmp_path, monkeypatch, tiny_checkpoint):
    """An imagejepa checkpoint shared on the Hub: the decoder reads its predictor and its own
    mask settings through hf-hub:, as from the folder."""
    from imagejepa.checkpoint import find_checkpoint
    from imagejepa.decoder.train import load_source

    folder = find_checkpoint(tiny_checkpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache(tmp_path / "hub", folder, "test-org/tiny-run")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub, local = load_source("hf-hub:test-org/tiny-run"), load_source(folder)
    assert hub.sampler.s == local.sampler.s != MaskSettings()  # the run's own, not the defaults
    a, b = hub.predictor.state_dict(), local.predictor.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
