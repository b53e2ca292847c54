"""Tests of the typed run configuration and the official I-JEPA YAML translation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imagejepa.config import (
    Config,
    ConfigError,
    from_dict,
    load_config,
    mask_settings,
    parse_override,
)
from imagejepa.masking import MaskSettings

ROOT = Path(__file__).parents[1]


def test_defaults_load_and_validate():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.model.arch == "vit_tiny" and cfg.model.patch_size == 16
    assert cfg.mask.target_scale == (0.15, 0.2) and cfg.mask.num_targets == 4
    assert cfg.optim.ema == (0.996, 1.0) and cfg.optim.loss == "smooth_l1"
    assert mask_settings(cfg) == MaskSettings()
    # The dict form round-trips.
    assert from_dict(cfg.to_dict()) == cfg
    assert from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


@pytest.mark.parametrize("name", ["fmnist_vit_tiny", "your_data", "in1k_vith14_ep300"])
def test_repo_config_files(name):
    """Every key of a shipped file lands in the typed config (and is explicit: the recipe
    leaves it alone), lists as tuples, numbers typed."""
    path = ROOT / "configs" / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    loaded = load_config(path)
    cfg = loaded.to_dict()
    for section, values in raw.items():
        if not isinstance(values, dict):  # recipe: a key of its own
            assert cfg[section] == values
            continue
        for key, value in values.items():
            assert cfg[section][key] == value, f"{section}.{key}"
            assert f"{section}.{key}" in loaded.explicit
    assert isinstance(loaded.optim.lr, float) and isinstance(loaded.mask.target_aspect, tuple)
    assert loaded.model.img_size % loaded.model.patch_size == 0
    assert loaded.recipe == ("none" if name.startswith("in1k") else "auto")


def test_overrides_are_typed():
    cfg = load_config(
        ROOT / "configs" / "fmnist_vit_tiny.yaml",
        ["optim.lr=5e-4", "train.max_steps=20", "train.compile=true", "optim.ema=[0.99, 1.0]"],
    )
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 20 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.compile is True
    assert load_config(None, []).train.compile == "auto"  # a bool or "auto", nothing else
    assert load_config(None, ["train.compile=false"]).train.compile is False
    assert cfg.optim.ema == (0.99, 1.0)
    # Overrides apply over the file; untouched keys keep the file's values.
    assert cfg.train.budget_minutes == 9 and cfg.recipe == "auto"
    assert {"optim.lr", "train.max_steps", "train.budget_minutes"} <= cfg.explicit
    assert parse_override("optim.lr=5e-4") == ("optim.lr", "5e-4")  # YAML 1.1: a string ...
    assert load_config(None, ["optim.lr=5e-4"]).optim.lr == 5e-4  # ... coerced to float
    assert load_config(None, ["train.max_steps="]).train.max_steps is None
    # An int is accepted for a float key.
    assert load_config(None, ["optim.epochs=3", "optim.warmup_epochs=1"]).optim.warmup_epochs == 1.0


@pytest.mark.parametrize("text", ["optim.lr", "lr=5", "a.b.c=1"])
def test_malformed_override(text):
    with pytest.raises(ConfigError):
        parse_override(text)


def expect_error(overrides, *fragments):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_unknown_key_and_section():
    expect_error(["model.foo=1"], "model.foo", "arch")  # lists the allowed keys
    expect_error(["modle.arch=vit_tiny"], "modle", "model")


@pytest.mark.parametrize(
    "override,key",
    [
        ("data.batch_size=abc", "data.batch_size"),
        ("train.compile=3", "train.compile"),
        ("train.compile=yes please", "train.compile"),
        ("data.batch_size=2.5", "data.batch_size"),
        ("data.batch_size=true", "data.batch_size"),
        ("optim.lr=fast", "optim.lr"),
        ("optim.ema=0.99", "optim.ema"),
        ("model.arch=3", "model.arch"),
    ],
)
def test_wrong_types(override, key):
    expect_error([override], key)


def test_impossible_values_name_the_key():
    expect_error(["model.img_size=100", "model.patch_size=16"],
                 "model.img_size", "model.patch_size")
    expect_error(["data.batch_size=10", "optim.grad_accum=3"],
                 "data.batch_size", "optim.grad_accum")
    expect_error(["optim.loss=l1"], "optim.loss", "smooth_l1", "l2")
    expect_error(["train.precision=fp16"], "train.precision", "bf16", "fp32")
    expect_error(["model.arch=vit_enormous"], "model.arch", "vit_huge")
    expect_error(["optim.ema=[1.0, 0.99]"], "optim.ema")
    expect_error(["data.crop_scale=[0.0, 1.0]"], "data.crop_scale")
    expect_error(["optim.epochs=10", "optim.warmup_epochs=20"], "optim.warmup_epochs")
    expect_error(["train.device=tpu"], "train.device")
    expect_error(["mask.target_scale=[0.3, 0.2]"], "target_scale")


def test_mask_settings_impossible_for_grid():
    # 32 / 16 = a 2x2 grid: a context can never keep min_keep=10 patches.
    expect_error(["model.img_size=32", "model.patch_size=16"], "min_keep")
    # The same grid is fine once min_keep fits.
    cfg = load_config(None, ["model.img_size=32", "model.patch_size=16", "mask.min_keep=1",
                             "mask.num_targets=1"])
    assert cfg.model.img_size == 32


def test_data_specs():
    expect_error(["data.dataset=imagenet"], "imagenet", "imagefolder")
    expect_error(["data.dataset=imagefolder"], "imagefolder:PATH")
    assert load_config(None, ["data.dataset=imagefolder:/some/where"]).data.dataset == (
        "imagefolder:/some/where"
    )


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError):
        load_config(not_mapping)
    section_not_mapping = tmp_path / "section.yaml"
    section_not_mapping.write_text("model: 3\n")
    with pytest.raises(ConfigError, match="model"):
        load_config(section_not_mapping)


# -- the official I-JEPA layout -------------------------------------------------------------
def official_vith14() -> dict:
    """configs/in1k_vith14_ep300.yaml of the official repository, as published."""
    return {
        "data": {
            "batch_size": 128,
            "color_jitter_strength": 0.0,
            "crop_scale": [0.3, 1.0],
            "crop_size": 224,
            "image_folder": "imagenet/",
            "num_workers": 10,
            "pin_mem": True,
            "root_path": "/data",
            "use_color_distortion": False,
            "use_gaussian_blur": False,
            "use_horizontal_flip": False,
        },
        "logging": {"folder": "/logs/in1k_vith14_ep300/", "write_tag": "jepa"},
        "mask": {
            "allow_overlap": False,
            "aspect_ratio": [0.75, 1.5],
            "enc_mask_scale": [0.85, 1.0],
            "min_keep": 10,
            "num_enc_masks": 1,
            "num_pred_masks": 4,
            "patch_size": 14,
            "pred_mask_scale": [0.15, 0.2],
        },
        "meta": {
            "copy_data": False,
            "load_checkpoint": False,
            "model_name": "vit_huge",
            "pred_depth": 12,
            "pred_emb_dim": 384,
            "read_checkpoint": None,
            "use_bfloat16": True,
        },
        "optimization": {
            "ema": [0.996, 1.0],
            "epochs": 300,
            "final_lr": 1.0e-06,
            "final_weight_decay": 0.4,
            "ipe_scale": 1.0,
            "lr": 0.001,
            "start_lr": 0.0002,
            "warmup": 40,
            "weight_decay": 0.04,
        },
    }


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def check_vith14(cfg: Config) -> None:
    m, k, o = cfg.model, cfg.mask, cfg.optim
    assert (m.arch, m.patch_size, m.img_size) == ("vit_huge", 14, 224)
    assert (m.pred_depth, m.pred_dim) == (12, 384)
    assert k.num_targets == 4 and k.min_keep == 10
    assert k.target_scale == (0.15, 0.2)
    assert k.context_scale == (0.85, 1.0)
    assert k.target_aspect == (0.75, 1.5)
    assert o.ema == (0.996, 1.0) and o.epochs == 300
    assert (o.lr, o.start_lr, o.final_lr) == (0.001, 0.0002, 1e-6)
    assert o.warmup_epochs == 40.0
    assert (o.weight_decay, o.final_weight_decay) == (0.04, 0.4)
    assert o.ipe_scale == 1.0 and o.loss == "smooth_l1"
    assert cfg.train.precision == "bf16"
    assert cfg.data.dataset == "imagefolder:/data/imagenet/train"
    assert cfg.data.batch_size == 128 and cfg.data.crop_scale == (0.3, 1.0)


def test_official_yaml_translation(tmp_path):
    cfg = load_config(write_yaml(tmp_path / "official.yaml", official_vith14()))
    check_vith14(cfg)
    # Overrides apply on top of the translation, in our schema.
    cfg = load_config(tmp_path / "official.yaml", ["data.batch_size=64", "train.precision=fp32"])
    assert cfg.data.batch_size == 64 and cfg.train.precision == "fp32"
    assert cfg.model.arch == "vit_huge"


def test_official_batch_size_is_per_process(tmp_path):
    """The official files give the batch per GPU (128 x 16 GPUs = the paper's 2048): on 16
    processes the global batch is 2048, and the start-up line is told how it came about."""
    path = write_yaml(tmp_path / "official.yaml", official_vith14())
    one, sixteen = load_config(path), load_config(path, world_size=16)
    assert (one.data.batch_size, sixteen.data.batch_size) == (128, 2048)
    assert sixteen.source_note == "the official file's batch_size 128 is per process: x 16 processes = 2048"
    assert load_config(path, world_size=2).data.batch_size == 256
    # A batch given on the command line is ours: global, taken as it is, no note.
    given = load_config(path, ["data.batch_size=512"], world_size=16)
    assert given.data.batch_size == 512 and given.source_note is None
    # Our own files already hold the global batch.
    ours = load_config(ROOT / "configs" / "in1k_vith14_ep300.yaml", world_size=16)
    assert ours.data.batch_size == 2048 and ours.source_note is None
    assert "source_note" not in ours.to_yaml()


def test_official_yaml_text_with_yaml11_floats(tmp_path):
    """Floats written like 1e-6 (no dot) are strings in YAML 1.1; they still load as floats."""
    text = yaml.safe_dump(official_vith14()).replace("1.0e-06", "1e-6")
    assert "final_lr: 1e-6" in text
    path = tmp_path / "official.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.optim.final_lr == 1e-6 and isinstance(cfg.optim.final_lr, float)


def test_official_use_bfloat16_false(tmp_path):
    data = official_vith14()
    data["meta"]["use_bfloat16"] = False
    assert load_config(write_yaml(tmp_path / "o.yaml", data)).train.precision == "fp32"


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("data", "use_horizontal_flip", True),
        ("data", "use_color_distortion", True),
        ("data", "use_gaussian_blur", True),
        ("mask", "num_enc_masks", 2),
        ("mask", "allow_overlap", True),
    ],
)
def test_official_unsupported_options_raise(tmp_path, section, key, value):
    data = official_vith14()
    data[section][key] = value
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        load_config(write_yaml(tmp_path / "o.yaml", data))


def test_official_unknown_key_or_section_raises(tmp_path):
    data = official_vith14()
    data["optimization"]["momentum"] = 0.9
    with pytest.raises(ConfigError, match="optimization.momentum"):
        load_config(write_yaml(tmp_path / "o.yaml", data))
    data = official_vith14()
    data["extra"] = {"a": 1}
    with pytest.raises(ConfigError, match="extra"):
        load_config(write_yaml(tmp_path / "o2.yaml", data))


def test_official_values_are_validated(tmp_path):
    data = official_vith14()
    data["data"]["crop_size"] = 225  # not divisible by patch 14
    with pytest.raises(ConfigError, match="model.img_size"):
        load_config(write_yaml(tmp_path / "o.yaml", data))


def test_repo_vith14_config_matches_official_translation(tmp_path):
    """configs/in1k_vith14_ep300.yaml is the official ViT-H/14 recipe in our schema."""
    ours = load_config(ROOT / "configs" / "in1k_vith14_ep300.yaml")
    official = load_config(write_yaml(tmp_path / "official.yaml", official_vith14()))
    assert ours.model == official.model
    assert ours.mask == official.mask
    assert ours.optim == official.optim
    assert ours.train.precision == official.train.precision == "bf16"
    assert ours.data.crop_scale == official.data.crop_scale
    # Global batch: the official 128 per GPU on 16 GPUs.
    assert ours.data.batch_size == 128 * 16
    assert ours.data.dataset.startswith("imagefolder:")
