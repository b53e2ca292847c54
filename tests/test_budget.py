"""A time-budgeted schedule: the length is fixed once from the measured speed, recorded in the
run, and a resumed run continues that same schedule exactly."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml

from imagejepa import budget
from imagejepa.checkpoint import latest_checkpoint, load_meta, load_tensors
from imagejepa.cli import main
from imagejepa.config import ConfigError, OptimConfig, load_config
from imagejepa.schedules import Schedules
from imagejepa.train import Trainer

from .helpers import TINY_OVERRIDES

HOLD = budget.HOLD_STEPS


def tiny_config(*extra):
    return load_config(None, TINY_OVERRIDES + ["train.checkpoint_every_steps=10", *extra])


def quiet(*_):
    pass


def rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def saved_config(run_dir):
    return yaml.safe_load((run_dir / "config.yaml").read_text())


# -- the arithmetic ---------------------------------------------------------------------------
def test_budgeted_length_fills_the_budget_less_a_margin():
    assert budget.budgeted_length(10.0, 9.0, 100_000) == int(10 * 540 * (1 - budget.MARGIN))
    assert budget.budgeted_length(10.0, 9.0, 3000) == 3000  # optim.epochs' worth is the most
    assert budget.budgeted_length(0.01, 1.0, 3000) == HOLD + 1  # at least one step past the hold


def test_clock_times_the_hold_after_its_first_steps():
    clock = budget.BudgetClock(minutes=1.0, max_steps=10_000, start_step=0)
    # Slow first steps (not timed), then 0.1 s per step.
    times = {s: 5.0 + 0.1 * (s - budget.WARMUP_STEPS) for s in range(budget.WARMUP_STEPS, HOLD + 1)}
    results = [clock.finished(s, times.get(s, s * 2.0)) for s in range(1, HOLD + 1)]
    assert results[:-1] == [None] * (HOLD - 1)
    assert clock.steps_per_s == pytest.approx(10.0)
    assert results[-1] == budget.budgeted_length(10.0, 1.0, 10_000)
    assert clock.finished(HOLD + 1, 100.0) is None  # fixed once


def test_clock_of_a_process_resumed_inside_the_hold():
    clock = budget.BudgetClock(minutes=1.0, max_steps=10_000, start_step=HOLD - 2)
    assert clock.finished(HOLD - 1, 10.0) is None
    assert clock.finished(HOLD, 10.5) == budget.budgeted_length(2.0, 1.0, 10_000)


# -- the schedules with a hold ----------------------------------------------------------------
def test_schedule_with_a_hold_starts_after_it_and_ends_at_its_length():
    optim = OptimConfig(epochs=10, warmup_epochs=1, total_steps=530)
    s = Schedules.from_config(optim, steps_per_epoch=100, hold_steps=HOLD)
    start = (optim.start_lr, optim.weight_decay, optim.ema[0])
    for step in (0, HOLD // 2, HOLD):
        assert s.at(step) == pytest.approx(start)
    assert s.warmup_steps == 50  # warm-up keeps its fraction (1 of 10 epochs) of the 500 scheduled steps
    assert s.at(HOLD + 50)[0] == pytest.approx(optim.lr)
    assert s.at(530) == pytest.approx((optim.final_lr, optim.final_weight_decay, optim.ema[1]))
    assert s.at(529)[0] > optim.final_lr


# -- the trainer ------------------------------------------------------------------------------
def test_budgeted_run_fixes_its_length_records_it_and_ends_its_schedule(tmp_path):
    """Real timing: whatever the speed, the length is fixed after the hold, written into
    config.yaml and the checkpoints, and the run ends exactly where its schedules end."""
    trainer = Trainer(tiny_config("train.budget_minutes=0.05"), tmp_path, log=quiet)
    trainer.fit()
    steps = saved_config(tmp_path)["optim"]["total_steps"]
    assert HOLD < steps <= trainer.steps_per_epoch * 2 and trainer.step == steps
    assert load_meta(latest_checkpoint(tmp_path))["config"]["optim"]["total_steps"] == steps
    log = rows(tmp_path)
    assert len(log) == steps
    optim = trainer.cfg.optim
    assert all(float(r["lr"]) == pytest.approx(optim.start_lr) for r in log[:HOLD])  # the timed hold
    # Every step followed the fixed schedule, and that schedule ends where the run ends.
    for r in log:
        lr, wd, ema = trainer.schedules.at(int(r["step"]))
        assert (float(r["lr"]), float(r["weight_decay"]), float(r["ema"])) == pytest.approx((lr, wd, ema))
    end = (optim.final_lr, optim.final_weight_decay, optim.ema[1])
    assert trainer.schedules.at(steps) == pytest.approx(end)


@pytest.fixture
def fixed_length(monkeypatch):
    """The length the budget would give, made independent of this machine's speed."""
    monkeypatch.setattr(budget, "budgeted_length", lambda steps_per_s, minutes, max_steps: 48)
    return 48


def final_weights(run_dir):
    return load_tensors(latest_checkpoint(run_dir))


@pytest.mark.parametrize("interrupted_at", [HOLD - 10, HOLD + 6], ids=["inside-the-hold", "after-it"])
def test_resumed_budgeted_run_matches_an_uninterrupted_one(tmp_path, fixed_length, interrupted_at):
    straight, split = tmp_path / "straight", tmp_path / "split"
    Trainer(tiny_config("train.budget_minutes=5"), straight, log=quiet).fit()
    assert saved_config(straight)["optim"]["total_steps"] == fixed_length
    first = tiny_config("train.budget_minutes=5", f"train.max_steps={interrupted_at}")
    Trainer(first, split, log=quiet).fit()
    # The resumed run reads the length from the run's config.yaml, as `--resume` does.
    resumed = Trainer(load_config(split / "config.yaml", ["train.max_steps=null"]), split, resume=True,
                      log=quiet)
    assert resumed.step == interrupted_at
    resumed.fit()
    a, b = rows(straight), rows(split)
    assert len(a) == len(b) == fixed_length
    for key in ("loss", "lr", "weight_decay", "ema"):
        assert max(abs(float(x[key]) - float(y[key])) for x, y in zip(a, b)) <= 1e-6, key
    wa, wb = final_weights(straight), final_weights(split)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


def test_budget_needs_a_schedule_longer_than_the_hold(tmp_path):
    with pytest.raises(ConfigError, match="train.budget_minutes"):
        Trainer(tiny_config("train.budget_minutes=1", "optim.epochs=0.1"), tmp_path, log=quiet)


def test_cli_budget_flag_and_resume_with_the_config_file(tmp_path, fixed_length, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config().to_yaml())
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(config), "--run-dir", str(run), "--budget-minutes", "5",
                 "--set", f"train.max_steps={HOLD + 4}"]) == 0
    out = capsys.readouterr().out
    assert "fitted to 5 min" in out and f"fixed at {fixed_length} steps" in out
    saved = saved_config(run)
    assert saved["train"]["budget_minutes"] == 5 and saved["optim"]["total_steps"] == fixed_length
    # The same command line again, with --resume: the fixed length is the run's, not a difference.
    assert main(["pretrain", "--config", str(config), "--run-dir", str(run), "--budget-minutes", "5",
                 "--resume"]) == 0
    assert len(rows(run)) == fixed_length
