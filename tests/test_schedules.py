"""Tests of the learning-rate, weight-decay and EMA schedules."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from imagejepa.config import OptimConfig
from imagejepa.train.schedules import Schedules, cosine_increase, linear, warmup_cosine

WARM, TOTAL, START, PEAK, FINAL = 40, 300, 2e-4, 1e-3, 1e-6


def lr(step: int) -> float:
    return warmup_cosine(step, WARM, TOTAL, START, PEAK, FINAL)


def test_warmup_cosine_key_points():
    assert lr(0) == pytest.approx(START)
    assert lr(WARM // 2) == pytest.approx((START + PEAK) / 2)
    assert lr(WARM) == pytest.approx(PEAK)
    mid = (WARM + TOTAL) // 2
    assert lr(mid) == pytest.approx((PEAK + FINAL) / 2)
    assert lr(TOTAL) == pytest.approx(FINAL)
    assert lr(TOTAL + 1000) == pytest.approx(FINAL)  # held after the end


def test_warmup_cosine_shape():
    values = [lr(s) for s in range(TOTAL + 1)]
    warmup, decay = values[: WARM + 1], values[WARM:]
    assert all(b > a for a, b in pairwise(warmup))  # increasing warmup
    assert all(b < a for a, b in pairwise(decay))  # decreasing after
    # Linear warmup: constant increments.
    steps = {round(b - a, 12) for a, b in pairwise(warmup)}
    assert len(steps) == 1
    # Cosine: value at a quarter of the decay.
    q = WARM + (TOTAL - WARM) // 4
    progress = (q - WARM) / (TOTAL - WARM)
    expected = FINAL + (PEAK - FINAL) * 0.5 * (1 + math.cos(math.pi * progress))
    assert lr(q) == pytest.approx(expected)


def test_warmup_zero_starts_at_peak():
    assert warmup_cosine(0, 0, 100, START, PEAK, FINAL) == pytest.approx(PEAK)


def test_cosine_increase():
    wd = [cosine_increase(s, 100, 0.04, 0.4) for s in range(101)]
    assert wd[0] == pytest.approx(0.04)
    assert wd[50] == pytest.approx(0.22)
    assert wd[100] == pytest.approx(0.4)
    assert all(b > a for a, b in pairwise(wd))
    assert cosine_increase(500, 100, 0.04, 0.4) == pytest.approx(0.4)


def test_linear_ema():
    assert linear(0, 1000, 0.996, 1.0) == pytest.approx(0.996)
    assert linear(250, 1000, 0.996, 1.0) == pytest.approx(0.997)
    assert linear(1000, 1000, 0.996, 1.0) == pytest.approx(1.0)
    assert linear(5000, 1000, 0.996, 1.0) == pytest.approx(1.0)  # clamped
    assert linear(1001, 1000, 0.996, 1.0) <= 1.0


def test_schedules_from_config_with_ipe_scale():
    optim = OptimConfig(epochs=10, warmup_epochs=2, ipe_scale=1.25)
    sched = Schedules.from_config(optim, steps_per_epoch=100)
    assert sched.total_steps == 1250
    assert sched.warmup_steps == 200
    plain = Schedules.from_config(OptimConfig(epochs=10, warmup_epochs=2), steps_per_epoch=100)
    assert plain.total_steps == 1000

    # The run stops at 10 epochs = step 1000, before the stretched schedules end.
    lr_end, wd_end, ema_end = sched.at(1000)
    assert lr_end > optim.final_lr * 10
    assert wd_end < optim.final_weight_decay
    assert ema_end == pytest.approx(0.996 + 0.004 * 1000 / 1250)
    assert plain.at(1000) == pytest.approx((optim.final_lr, optim.final_weight_decay, 1.0))

    assert sched.at(0) == pytest.approx((optim.start_lr, optim.weight_decay, optim.ema[0]))
    assert sched.at(200)[0] == pytest.approx(optim.lr)
    assert sched.at(1250) == pytest.approx((optim.final_lr, optim.final_weight_decay, 1.0))
