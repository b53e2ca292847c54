"""TensorBoard and Weights & Biases (offline): the same scalars as metrics.csv, the mask and
feature pictures, rank 0 only, and a clear error when a package asked for is missing."""

import sys

import pytest

from imagejepa.cli import main
from imagejepa.config import load_config
from imagejepa.monitor.trackers import Trackers

from .conftest import DEMO_CONFIG
from .helpers import TINY_OVERRIDES, metric_rows


def _pretrain(run_dir, *overrides):
    args = ["pretrain", "--config", str(DEMO_CONFIG), "--run-dir", str(run_dir)]
    for item in [*TINY_OVERRIDES, "train.budget_minutes=null", *overrides]:
        args += ["--set", item]
    return main(args)


@pytest.mark.slow
def test_tensorboard_and_wandb_get_the_scalars_and_pictures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert _pretrain(run, "train.max_steps=25", "train.log_every=5", "monitor.every=10",
                     "monitor.knn_every=10", "monitor.tensorboard=true", "monitor.wandb=true") == 0
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    rows = {int(r["step"]): r for r in metric_rows(run)}
    loss = {e.step: e.value for e in events.Scalars("train/loss")}
    assert sorted(loss) == [0, 5, 10, 15, 20, 24]  # log steps, watched steps and the last
    assert all(v == pytest.approx(float(rows[s]["loss"]), rel=1e-6) for s, v in loss.items())
    assert [e.step for e in events.Scalars("train/rankme")] == [0, 10, 20]
    knn = {e.step: e.value for e in events.Scalars("train/knn_top1")}
    assert sorted(knn) == [0, 10, 20, 24]
    assert knn[10] == pytest.approx(float(rows[10]["knn_top1"]), rel=1e-6)
    masks, features = events.Images("masks"), events.Images("features")
    assert [m.step for m in masks] == [0] and [f.step for f in features] == [0, 10, 20, 24]
    assert masks[0].height >= 128 and features[0].height >= 2 * 128  # small images enlarged

    (offline,) = (run / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    assert log.stat().st_size > 1000
    pictures = sorted(p.name.split("_")[0] for p in (offline / "files" / "media" / "images").glob("*.png"))
    assert pictures == ["features"] * 4 + ["masks"]


def test_nothing_is_written_by_ranks_other_than_0(tmp_path):
    cfg = load_config(None, ["monitor.tensorboard=true"])
    trackers = Trackers(cfg.monitor, tmp_path, cfg.to_dict(), start_step=0, writes=False)
    trackers.scalars({"step": 0, "loss": 1.0})
    trackers.close()
    assert not trackers.active and list(tmp_path.iterdir()) == []


def test_a_missing_tracker_package_is_a_clear_error_before_the_build(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    assert _pretrain(tmp_path / "run", "train.max_steps=2", "monitor.wandb=true") == 2
    err = capsys.readouterr().err.strip()
    assert "monitor.wandb: true needs the wandb package" in err and "pip install 'imagejepa[wandb]'" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()
