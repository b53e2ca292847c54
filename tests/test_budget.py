"""A time-budgeted schedule: its length follows the measured speed, each fit is recorded in the
run, and a resumed run continues that same schedule exactly."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from imagejepa.checkpoint import latest_checkpoint, load_meta, load_tensors
from imagejepa.cli import main
from imagejepa.config import ConfigError, OptimConfig, load_config
from imagejepa.train import budget
from imagejepa.train.schedules import Schedules
from imagejepa.train.trainer import Trainer

from .helpers import TINY_OVERRIDES

FIRST = budget.FIRST_FIT_STEP


def tiny_config(*extra):
    return load_config(None, TINY_OVERRIDES + ["train.checkpoint_every_steps=10", *extra])


def quiet(*_):
    pass


def rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def saved_config(run_dir):
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def saved_fits(run_dir):
    """The fits the run's newest checkpoint holds (training state, not config)."""
    return load_meta(latest_checkpoint(run_dir))["schedule_fits"]


# -- the arithmetic ---------------------------------------------------------------------------
def test_progress_along_fits_is_continuous_and_ends_at_the_last_length():
    fits = [(0, 1000), (100, 400), (250, 500)]
    u = [budget.fitted_progress(s, fits) for s in range(0, 600)]
    assert u[0] == 0 and u[100] == pytest.approx(0.1)  # 100 of 1000
    assert u[250] == pytest.approx(0.1 + 150 * 0.9 / 300)  # then 0.9 left over 300 steps
    assert u[499] < 1 and u[500] == 1 and u[599] == 1
    steps = [b - a for a, b in zip(u, u[1:])]
    assert all(d >= 0 for d in steps) and max(steps) < 0.005  # increasing, no jumps


def test_fitted_length_fills_the_time_left_less_a_margin():
    assert budget.fitted_length(30, 10.0, 540.0, 100_000) == 30 + int(10 * 540 * (1 - budget.MARGIN))
    assert budget.fitted_length(30, 10.0, 540.0, 3000) == 3000  # optim.epochs' worth is the most
    assert budget.fitted_length(700, 10.0, -5.0, 3000) == 701  # out of time: end at the next step


def test_clock_fits_after_the_timed_steps_then_refits_to_the_recent_speed():
    clock = budget.BudgetClock(minutes=10.0, max_steps=100_000, start_step=0, fits=[])
    seconds = {s: 5.0 + 0.1 * (s - budget.WARMUP_STEPS) for s in range(budget.WARMUP_STEPS, FIRST + 1)}
    results = [clock.observe(s, seconds.get(s, s * 2.0)) for s in range(1, FIRST + 1)]
    assert results[:-1] == [None] * (FIRST - 1)
    assert clock.steps_per_s == pytest.approx(10.0)  # the slow untimed first steps left out
    first = budget.fitted_length(FIRST, 10.0, 600.0 - seconds[FIRST], 100_000)
    assert results[-1] == [(0, 100_000), (FIRST, first)]
    assert clock.observe(FIRST + 1, seconds[FIRST] + 0.1) is None
    # At a tenth of the budget (60 s) the machine has slowed down: the end moves earlier.
    refit = clock.observe(300, 60.0)
    assert clock.steps_per_s == pytest.approx(270 / (60.0 - seconds[FIRST]))
    assert refit == [(0, 100_000), (FIRST, first),
                     (300, budget.fitted_length(300, clock.steps_per_s, 540.0, 100_000))]
    assert refit[-1][1] < first
    assert clock.observe(301, 60.1) is None  # the next refit waits for the next tenth


def test_clock_skips_tiny_changes_and_leaves_the_last_tenth_alone():
    expected = budget.fitted_length(2087, 56.0, 18.0, 10_000)  # 84 steps in 1.5 s, 18 s left
    for current, refits in ((expected + 1, False), (expected + 100, True)):
        clock = budget.BudgetClock(minutes=1.0, max_steps=10_000, start_step=2000,
                                   fits=[(0, 5000), (30, current)], seconds_before=40.0)
        assert clock.refit_at == pytest.approx([42.0, 48.0, 54.0])
        assert clock.observe(2003, 40.5) is None  # starts timing
        result = clock.observe(2087, 42.0)
        assert (result == [(0, 5000), (30, current), (2087, expected)]) if refits else result is None
    late = budget.BudgetClock(minutes=1.0, max_steps=10_000, start_step=2000, fits=[(0, 5000), (30, 9000)],
                              seconds_before=55.0)
    assert late.refit_at == [] and late.observe(2003, 55.5) is None and late.observe(2100, 59.0) is None


def test_clock_of_a_resumed_process_keeps_the_fits_recorded_ahead_of_it():
    fits = [(0, 9000), (30, 800), (400, 700)]
    clock = budget.BudgetClock(minutes=1.0, max_steps=10_000, start_step=100, fits=fits, seconds_before=10.0)
    assert all(clock.observe(step, 10.0 + 0.1 * (step - 100)) is None for step in range(101, 401))
    refit = clock.observe(401, 40.1)
    assert refit[:3] == fits and refit[3][0] == 401


# -- the schedules along fits -----------------------------------------------------------------
def test_fitted_schedule_warms_up_over_its_fraction_and_ends_with_the_last_fit():
    optim = OptimConfig(epochs=10, warmup_epochs=1)  # warm-up: a tenth of the run
    s = Schedules.from_config(optim, steps_per_epoch=100, fits=[(0, 1000), (50, 525)])
    assert s.total_steps == 525
    assert s.at(0) == pytest.approx((optim.start_lr, optim.weight_decay, optim.ema[0]))
    # Progress 0.05 at step 50, then 0.95 over 475 steps: 0.1 (the end of warm-up) at step 75.
    assert s.at(74)[0] < optim.lr and s.at(75)[0] == pytest.approx(optim.lr)
    assert s.at(525) == pytest.approx((optim.final_lr, optim.final_weight_decay, optim.ema[1]))
    assert s.at(524)[0] > optim.final_lr


# -- the trainer ------------------------------------------------------------------------------
def test_budgeted_run_fits_its_length_records_it_and_ends_its_schedule(tmp_path):
    """Real timing: whatever the speed, the length is fitted after the timed steps, every fit
    is in the checkpoints (config.yaml says what was asked for, as at the start), and the run
    ends exactly where its schedules end."""
    trainer = Trainer(tiny_config("train.budget_minutes=0.05"), tmp_path, log=quiet)
    trainer.fit()
    fits = saved_fits(tmp_path)
    assert "schedule_fits" not in saved_config(tmp_path)["optim"]
    # The first fit comes after the timed steps, or earlier when a tenth of the budget is up first.
    assert fits[0] == [0, trainer.max_steps] and fits[1][0] <= FIRST and len(fits) >= 2
    steps = fits[-1][1]
    # The fitted length lies beyond the step it was fitted at (beyond the timed steps on a
    # machine fast enough for them; a loaded one fits earlier, at a tenth of the budget).
    assert fits[1][0] < steps <= trainer.max_steps and trainer.step == steps
    log = rows(tmp_path)
    assert len(log) == steps
    optim = trainer.cfg.optim
    assert float(log[0]["lr"]) == pytest.approx(optim.start_lr)
    # Every step followed the recorded fits, and the schedule ends where the run ends.
    for r in log:
        lr, wd, ema = trainer.schedules.at(int(r["step"]))
        assert (float(r["lr"]), float(r["weight_decay"]), float(r["ema"])) == pytest.approx((lr, wd, ema))
    end = (optim.final_lr, optim.final_weight_decay, optim.ema[1])
    assert trainer.schedules.at(steps) == pytest.approx(end)
    assert sum(float(r["elapsed_s"]) > 0 for r in log) == steps


@pytest.fixture
def fixed_fits(monkeypatch):
    """Fits that depend on the step only, not on this machine's speed: the first at step 30
    ends the run at 60; a refit at the first tenth of the budget moves the end to 54."""
    def observe(self, step, seconds):
        if step == FIRST and len(self.fits) == 1:
            self.fits.append((FIRST, 60))
        elif step == 40 and self.fits[-1][0] < 40:
            self.fits.append((40, 54))
        else:
            return None
        self.steps_per_s = 1.0
        return list(self.fits)

    monkeypatch.setattr(budget.BudgetClock, "observe", observe)
    return [[0, 500], [FIRST, 60], [40, 54]]


def final_weights(run_dir):
    return load_tensors(latest_checkpoint(run_dir))


@pytest.mark.parametrize("interrupted_at", [FIRST - 10, FIRST + 6, 46], ids=["before-the-first-fit",
                                                                           "between-fits", "after-them"])
def test_resumed_budgeted_run_matches_an_uninterrupted_one(tmp_path, fixed_fits, interrupted_at):
    straight, split = tmp_path / "straight", tmp_path / "split"
    Trainer(tiny_config("train.budget_minutes=5"), straight, log=quiet).fit()
    assert saved_fits(straight) == fixed_fits
    first = tiny_config("train.budget_minutes=5", f"train.max_steps={interrupted_at}")
    Trainer(first, split, log=quiet).fit()
    # The resumed run reads the fits made so far from its checkpoint.
    resumed = Trainer(load_config(split / "config.yaml", ["train.max_steps=null"]), split, resume=True,
                      log=quiet)
    assert resumed.step == interrupted_at and resumed.train_seconds > 0
    resumed.fit()
    assert saved_fits(split) == fixed_fits
    a, b = rows(straight), rows(split)
    assert len(a) == len(b) == 54
    for key in ("loss", "lr", "weight_decay", "ema"):
        assert max(abs(float(x[key]) - float(y[key])) for x, y in zip(a, b)) <= 1e-6, key
    wa, wb = final_weights(straight), final_weights(split)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("settings, message", [
    (["train.budget_minutes=1", "optim.epochs=0.1"], "optim.epochs gives only .* train.budget_minutes=null"),
    (["train.budget_minutes=1", "optim.total_steps=100"], "both set the schedule's length"),
])
def test_budget_settings_that_cannot_work_are_refused(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny_config(*settings), tmp_path, log=quiet)


def test_cli_budget_flag_and_resume_with_the_config_file(tmp_path, fixed_fits, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config().to_yaml())
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(config), "--run-dir", str(run), "--budget-minutes", "5",
                 "--set", "train.max_steps=44"]) == 0
    out = capsys.readouterr().out
    assert "fitted to 5 min" in out and "the schedule ends at step 60" in out
    assert saved_config(run)["train"]["budget_minutes"] == 5 and saved_fits(run) == fixed_fits
    # The same command line again, with --resume: the recorded fits are the run's, not a difference.
    assert main(["pretrain", "--config", str(config), "--run-dir", str(run), "--budget-minutes", "5",
                 "--resume"]) == 0
    assert len(rows(run)) == 54


def test_config_yaml_is_written_once_and_not_changed_by_the_fits(tmp_path, fixed_fits, monkeypatch):
    """The fits are training state: config.yaml is written at the start, never during the run."""
    from imagejepa.train import trainer as trainer_module

    writes = []
    real_write = trainer_module.atomic_write_text
    monkeypatch.setattr(trainer_module, "atomic_write_text",
                        lambda path, text: (writes.append(path.name), real_write(path, text)))
    cfg = tiny_config("train.budget_minutes=5")
    asked = cfg.to_yaml()
    Trainer(cfg, tmp_path, log=quiet).fit()
    assert saved_fits(tmp_path) == fixed_fits  # two refits were made ...
    assert writes == ["config.yaml"]  # ... and config.yaml written once, before them
    assert (tmp_path / "config.yaml").read_text() == asked


def as_written_before(run_dir, fits):
    """Turn a run into the layout of the version before the fits were training state: each
    checkpoint's fits inside its config (``optim.schedule_fits``, manifest rehashed), and the
    latest fits in config.yaml."""
    from imagejepa.checkpoint import DATA_FILES, write_manifest

    for folder in sorted((run_dir / "checkpoints").glob("step_*")):
        meta = load_meta(folder)
        meta["config"]["optim"]["schedule_fits"] = meta.pop("schedule_fits")
        (folder / "meta.json").write_text(json.dumps(meta))
        write_manifest(folder, meta["step"], DATA_FILES)
    config = saved_config(run_dir)
    config["optim"]["schedule_fits"] = fits
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


def test_a_run_written_by_the_previous_version_resumes(tmp_path, fixed_fits):
    straight, old = tmp_path / "straight", tmp_path / "old"
    Trainer(tiny_config("train.budget_minutes=5"), straight, log=quiet).fit()
    Trainer(tiny_config("train.budget_minutes=5", "train.max_steps=46"), old, log=quiet).fit()
    as_written_before(old, fixed_fits)
    assert main(["pretrain", "--run-dir", str(old), "--resume", "--set", "train.max_steps=null"]) == 0
    a, b = rows(straight), rows(old)
    assert len(a) == len(b) == 54
    for key in ("loss", "lr", "ema"):
        assert max(abs(float(x[key]) - float(y[key])) for x, y in zip(a, b)) <= 1e-6, key
    assert saved_fits(old) == fixed_fits
