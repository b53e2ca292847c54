"""recipe: auto: the rules on constructed datasets, explicit settings winning, the resolved
values in the run's config.yaml and start-up line, and a resume that re-reads them."""

import pytest
import torch
import yaml
from PIL import Image

from imagejepa.cli import main
from imagejepa.config import load_config
from imagejepa.data import TensorImageDataset
from imagejepa.data.facts import DataFacts, data_facts
from imagejepa.train.recipe import FEW_IMAGES, PASSES_CAP, auto_choices, resolve_recipe

from .helpers import metric_rows


def chosen(facts: DataFacts) -> dict:
    return {c.key: c.value for c in auto_choices(facts)}


def test_rules_on_constructed_dataset_sizes():
    small = chosen(DataFacts(images=1_400, size=28, channels=1))
    assert (small["model.in_chans"], small["model.img_size"], small["model.patch_size"]) == (1, 28, 4)
    assert small["model.depth"] == 4 and small["data.batch_size"] == 32
    assert small["optim.anti_collapse"] == "vc"
    # Width: ViT-S for few images, ViT-T from FEW_IMAGES on.
    assert small["model.arch"] == "vit_small"
    assert chosen(DataFacts(FEW_IMAGES, 28, 1))["model.arch"] == "vit_tiny"
    # Passes: the demo's 360,000 images seen, at most PASSES_CAP passes, at least 6.
    assert small["optim.epochs"] == pytest.approx(360_000 / 1_400, abs=0.01)
    assert small["optim.warmup_epochs"] == pytest.approx(small["optim.epochs"] / 8, abs=0.01)
    assert chosen(DataFacts(500, 28, 1))["optim.epochs"] == PASSES_CAP
    assert chosen(DataFacts(60_000, 28, 1))["optim.epochs"] == 6
    assert chosen(DataFacts(1_000_000, 28, 1))["optim.epochs"] == 6
    # Larger and colour images: a coarser patch for a grid of 7 to 14, the size a multiple of it.
    colour = chosen(DataFacts(5_000, 64, 3))
    assert (colour["model.in_chans"], colour["model.img_size"], colour["model.patch_size"]) == (3, 64, 8)
    odd = chosen(DataFacts(5_000, 90, 3))
    assert (odd["model.img_size"], odd["model.patch_size"]) == (88, 8)
    photos = chosen(DataFacts(200_000, 375, 3))
    assert (photos["model.img_size"], photos["model.patch_size"], photos["model.depth"]) == (224, 16, None)


def test_explicit_settings_win_and_only_auto_changes_anything():
    data = TensorImageDataset(torch.zeros(300, 1, 28, 28, dtype=torch.uint8),
                              torch.zeros(300, dtype=torch.long), ["a"], (0.5,), (0.25,))
    cfg = load_config(None, ["recipe=auto", "optim.lr=1e-3", "model.depth=2", "data.dataset=synthetic"])
    resolved = resolve_recipe(cfg, data)
    assert cfg.optim.lr == 1e-3 and cfg.model.depth == 2  # as set
    assert cfg.optim.anti_collapse == "vc" and cfg.model.in_chans == 1 and cfg.model.patch_size == 4
    assert set(resolved.kept) == {"optim.lr", "model.depth"}
    assert "optim.lr" not in {c.key for c in resolved.made}
    assert "as set: model.depth, optim.lr" in resolved.line
    assert "300 grey images of about 28 pixels" in resolved.line
    assert resolve_recipe(cfg) is resolved  # applied once
    plain = load_config(None, ["data.dataset=synthetic"])
    before = plain.to_dict()
    assert resolve_recipe(plain, data) is None and plain.to_dict() == before


def test_facts_of_an_image_folder(tmp_path):
    for i, (size, mode) in enumerate([(20, "L"), (30, "RGB"), (40, "L")] * 3):
        folder = tmp_path / f"c{i % 2}"
        folder.mkdir(exist_ok=True)
        image = Image.new(mode, (size + 5, size), color=(9, 9, 9) if mode == "RGB" else 9)
        image.save(folder / f"{i}.png")
    from imagejepa.data import build_dataset

    facts = data_facts(build_dataset(f"imagefolder:{tmp_path}"))
    # RGB files with three equal channels are grey; the size is the median shorter side.
    assert facts == DataFacts(images=9, size=30, channels=1)
    Image.new("RGB", (30, 30), color=(200, 10, 10)).save(tmp_path / "c0" / "red.png")
    assert data_facts(build_dataset(f"imagefolder:{tmp_path}")).channels == 3


def test_a_run_writes_the_resolved_recipe_and_resumes_from_the_same_file(tmp_path, capsys):
    config = tmp_path / "auto.yaml"
    config.write_text("recipe: auto\ndata:\n  dataset: synthetic\ntrain:\n  precision: fp32\n"
                      "  log_every: 1\nmonitor:\n  knn_every: 0\n")
    run = tmp_path / "run"
    args = ["pretrain", "--config", str(config), "--run-dir", str(run)]
    assert main([*args, "--set", "train.max_steps=2"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "recipe auto" in x)
    assert "2,000 colour images of about 32 pixels" in line and "optim.anti_collapse=vc" in line
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["recipe"] == "auto" and saved["model"]["patch_size"] == 4 and saved["model"]["in_chans"] == 3
    assert saved["model"]["arch"] == "vit_small"  # 2,000 images: few
    assert saved["optim"]["anti_collapse"] == "vc" and saved["optim"]["epochs"] == 180.0
    assert "anti_collapse" in metric_rows(run)[0]
    # The same file resolves to the same values, so --resume with it continues the run.
    assert main([*args, "--resume", "--set", "train.max_steps=3"]) == 0
    assert [int(r["step"]) for r in metric_rows(run)] == [0, 1, 2]
