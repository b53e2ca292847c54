"""Import of official I-JEPA checkpoints (``.pth.tar`` layout), the registry, and round trips."""

from __future__ import annotations

import pytest
import torch

from imagejepa import load_encoder
from imagejepa.interop.bundle import infer_encoder_spec, infer_predictor_spec
from imagejepa.interop.convert import ConvertError, convert, detect_format, read_model
from imagejepa.interop.keymaps import check_against, encoder_from_timm, strip_module_prefix
from imagejepa.interop.loading import load_pretrained
from imagejepa.interop.registry import RELEASES, Release
from imagejepa.models import Encoder, Predictor
from imagejepa.models.pos_embed import sincos_2d

from .helpers import official_save_dict, tiny_ijepa


@pytest.fixture
def model():
    return tiny_ijepa()


@pytest.fixture
def official_file(tmp_path, model):
    path = tmp_path / "IN1K-vit.t.8-7e.pth.tar"
    torch.save(official_save_dict(model), path)
    return path


def test_official_layout_imports_with_architecture_and_weights(official_file, model):
    assert detect_format(official_file) == "official"
    bundle = read_model(official_file)
    spec = bundle.encoder_spec
    assert (spec["arch"], spec["embed_dim"], spec["depth"], spec["num_heads"]) == ("vit_tiny", 192, 2, 3)
    assert (spec["patch_size"], spec["img_size"], spec["mlp_hidden_dim"]) == (8, [32, 32], 768)
    assert spec["pos_embed"] == "sincos"  # recomputed at any size, not carried as a table
    assert bundle.predictor_spec == {"pred_dim": 48, "depth": 2, "num_heads": 3, "mlp_ratio": 4.0}
    assert bundle.source["epoch"] == 7
    # Every tensor arrives under its own name, unchanged; module. prefixes are gone.
    for role in ("encoder", "target_encoder", "predictor"):
        ours = getattr(model, role).state_dict()
        assert bundle.states[role].keys() == ours.keys()
        for k, v in ours.items():
            assert torch.equal(bundle.states[role][k], v), (role, k)


def test_load_encoder_returns_target_by_default(official_file, model):
    images = torch.randn(2, 3, 32, 32)
    target, pre = load_encoder(official_file)
    context, _ = load_encoder(official_file, which="context")
    with torch.no_grad():
        torch.testing.assert_close(target(images), model.target_encoder(images), rtol=0, atol=0)
        torch.testing.assert_close(context(images), model.encoder(images), rtol=0, atol=0)
        assert not torch.allclose(target(images), context(images))
    assert pre.size == 32 and pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert not any(p.requires_grad for p in target.parameters()) and not target.training


def test_predictor_is_imported(official_file, model):
    predictor = read_model(official_file).build_predictor()
    ctx = model.encoder(torch.randn(2, 3, 32, 32))[:, :6]
    ctx_idx = torch.arange(6).expand(2, -1)
    tgt_idx = torch.tensor([[[10, 11], [14, 15]]]).expand(2, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(predictor(ctx, ctx_idx, tgt_idx), model.predictor(ctx, ctx_idx, tgt_idx))


def test_round_trip_official_imagejepa_official_is_exact(tmp_path, official_file):
    convert(official_file, tmp_path / "ours", to="imagejepa")
    convert(tmp_path / "ours", tmp_path / "back.pth.tar", to="official")
    original = torch.load(official_file, weights_only=True)
    back = torch.load(tmp_path / "back.pth.tar", weights_only=True)
    assert back["epoch"] == 7
    for role in ("encoder", "target_encoder", "predictor"):
        assert back[role].keys() == original[role].keys()
        for k in original[role]:
            assert torch.equal(back[role][k], original[role][k]), (role, k)


def test_ddp_prefix_must_be_all_or_nothing():
    with pytest.raises(ValueError, match="module"):
        strip_module_prefix({"module.a": torch.ones(1), "b": torch.ones(1)})


def test_official_file_without_encoders_is_refused(tmp_path):
    path = tmp_path / "x.pth.tar"
    torch.save({"opt": {}, "epoch": 1}, path)
    with pytest.raises(ConvertError, match="not"):
        read_model(path)


def meta_official_state(arch: str, patch: int, img: int) -> tuple[dict, dict]:
    """Encoder and predictor state dicts of a full-size model with official names and shapes
    (tensors on 'meta': no memory); positions are real sin-cos tables."""
    with torch.device("meta"):
        enc = Encoder(arch, patch, img)
        pred = Predictor(enc.embed_dim, enc.grid, pred_dim=384, depth=12 if arch == "vit_huge" else 16,
                         num_heads=enc.num_heads)
    encoder = {f"module.{k}": v for k, v in enc.state_dict().items()}
    encoder["module.pos_embed"] = sincos_2d(enc.embed_dim, *enc.grid)[None]
    predictor = {f"module.{k}": v for k, v in pred.state_dict().items()}
    return encoder, predictor


@pytest.mark.parametrize("release", list(RELEASES.values()), ids=list(RELEASES))
def test_every_released_architecture_is_inferred_from_shapes(release: Release):
    encoder, predictor = meta_official_state(release.arch, release.patch_size, release.img_size)
    state, pos = encoder_from_timm(strip_module_prefix(encoder))
    spec = infer_encoder_spec(state, pos)
    assert (spec["arch"], spec["patch_size"], spec["img_size"]) == (
        release.arch, release.patch_size, [release.img_size] * 2)
    assert spec["pos_embed"] == "sincos" and spec["num_heads"] == 16
    with torch.device("meta"):
        check_against(Encoder.from_spec(spec), state, release.name)  # names and shapes all match
    pred_spec = infer_predictor_spec(strip_module_prefix(predictor), spec["num_heads"])
    assert (pred_spec["pred_dim"], pred_spec["depth"]) == (release.pred_dim, release.pred_depth)
    giant = release.arch == "vit_giant"
    assert spec["mlp_hidden_dim"] == (6144 if giant else 4 * spec["embed_dim"])


def test_registry_missing_file_names_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEJEPA_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        load_pretrained("vit_huge_patch14.in1k")
    assert "https://dl.fbaipublicfiles.com/ijepa/IN1K-vit.h.14-300e.pth.tar" in str(e.value)
    assert "no download" in str(e.value)
    with pytest.raises(FileNotFoundError, match="IN1K-vit.h.14-300e.pth.tar"):
        load_pretrained("vit_huge_patch14.in1k", path=tmp_path)
    with pytest.raises(KeyError, match="known: vit_huge_patch14.in1k"):
        load_pretrained("vit_huge_patch14.in9k", path=tmp_path)


def test_registry_name_loads_a_local_file(tmp_path, model, monkeypatch):
    """A registry entry resolves to a local file (by folder or search path) and checks its shapes."""
    tiny = Release("vit_tiny_patch8.test", "vit_tiny", 8, 32, 7, "synthetic", "tiny-ijepa.pth.tar",
                   pred_depth=2, pred_dim=48)
    monkeypatch.setitem(RELEASES, tiny.name, tiny)
    torch.save(official_save_dict(model), tmp_path / tiny.file_name)
    encoder, pre = load_encoder(tiny.name, path=tmp_path)  # a folder holding the official file name
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), model.target_encoder(images), rtol=0, atol=0)
    monkeypatch.setenv("IMAGEJEPA_CHECKPOINTS", str(tmp_path))
    assert load_pretrained(tiny.name)[1] == pre  # found in the search folder
    wrong = Release("vit_small_patch8.test", "vit_small", 8, 32, 7, "synthetic", "tiny-ijepa.pth.tar", 2)
    monkeypatch.setitem(RELEASES, wrong.name, wrong)
    with pytest.raises(ValueError, match="vit_small/8@32, but the file holds vit_tiny/8@32"):
        load_pretrained(wrong.name, path=tmp_path)


def test_official_export_needs_both_encoders_and_the_predictor(tmp_path, official_file):
    from imagejepa.interop.export import ExportError

    convert(official_file, tmp_path / "hf", to="hf")  # holds the target encoder only
    with pytest.raises(ExportError, match="lacks the context encoder and the predictor"):
        convert(tmp_path / "hf", tmp_path / "back.pth.tar", to="official")
    assert not (tmp_path / "back.pth.tar").exists()
