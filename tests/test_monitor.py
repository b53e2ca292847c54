"""Tests of representation health: RankMe, the per-block metrics, the collapse warnings,
and the health columns of a run's metrics.csv."""

import math

import pytest
import torch
import torch.nn.functional as F

from imagejepa.cli import main
from imagejepa.jepa import per_dim_std
from imagejepa.monitor import CollapseMonitor, RankMonitor, health_metrics, rankme
from imagejepa.train.metrics_log import MetricsLog, metric_columns

from .conftest import DEMO_CONFIG
from .helpers import TINY_OVERRIDES, metric_rows


def test_per_dim_std_over_all_leading_axes():
    x = torch.randn(4, 3, 5, 6)
    expected = x.reshape(-1, 6).std(dim=0)
    torch.testing.assert_close(per_dim_std(x), expected)
    assert per_dim_std(x).shape == (6,)
    collapsed = torch.ones(8, 6) * torch.arange(6.0)  # every row the same vector
    assert torch.equal(per_dim_std(collapsed), torch.zeros(6))


def test_collapse_monitor_warns_once_per_episode():
    monitor = CollapseMonitor(threshold=0.15, window=3)
    healthy = per_dim_std(torch.randn(256, 16) * 0.4).mean().item()
    collapsed = per_dim_std(torch.ones(256, 16) + 1e-3 * torch.randn(256, 16)).mean().item()
    assert [monitor.update(s, healthy) for s in range(3)] == [None] * 3
    # The window mean crosses the threshold on the second collapsed step.
    assert monitor.update(3, collapsed) is None
    warning = monitor.update(4, collapsed)
    assert warning is not None and "at step 4" in warning and "train.collapse_std=0.15" in warning
    assert monitor.update(5, collapsed) is None  # not repeated while still collapsed
    for s in range(6, 9):
        assert monitor.update(s, healthy) is None  # recovered: re-armed
    monitor.update(9, collapsed)
    assert "at step 10" in monitor.update(10, collapsed)


def test_collapse_monitor_disabled_and_nan_steps_ignored():
    assert CollapseMonitor(threshold=None).update(0, 0.0) is None
    monitor = CollapseMonitor(threshold=0.15, window=2)
    assert monitor.update(0, math.nan) is None and len(monitor.recent) == 0


def test_rankme_of_a_rank_r_matrix_is_about_r():
    g = torch.Generator().manual_seed(0)
    for r in (1, 5, 20):
        left = torch.linalg.qr(torch.randn(500, r, generator=g)).Q  # orthonormal columns
        right = torch.linalg.qr(torch.randn(64, r, generator=g)).Q
        equal = left @ right.T  # r equal singular values: exactly r
        assert rankme(equal).item() == pytest.approx(r, rel=1e-3)
        generic = torch.randn(500, r, generator=g) @ torch.randn(r, 64, generator=g)
        assert 0.7 * r <= rankme(generic).item() <= r + 1e-3
    assert rankme(torch.randn(4000, 64, generator=g)).item() > 60  # full rank: about D


def test_health_metrics_per_block_loss_and_cosine():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(4, 3, 5, 16, generator=g)
    predicted = target.clone()
    predicted[:, 1] += 0.5  # only block 2 is predicted wrongly
    h = health_metrics(predicted, target, "l2")
    torch.testing.assert_close(h["block_loss"], torch.tensor([0.0, 0.25, 0.0]))
    assert h["block_loss"].mean().item() == pytest.approx(F.mse_loss(predicted, target).item())
    assert 0.8 < h["pred_cos"].item() < 1.0
    assert health_metrics(target, target, "smooth_l1")["pred_cos"].item() == pytest.approx(1.0)
    assert health_metrics(-target, target, "l2")["pred_cos"].item() == pytest.approx(-1.0)


def test_rank_monitor_warns_on_a_drop_once_per_episode():
    monitor = RankMonitor(drop=0.25)
    assert [monitor.update(s, v) for s, v in enumerate([10.0, 14.0, 12.0, 5.0])] == [None] * 4
    warning = monitor.update(4, 3.0)  # below 0.25 x 14
    assert "RankMe" in warning and "fell to 3.0" in warning and "optim.lr" in warning
    assert monitor.update(5, 2.0) is None  # not repeated while it stays low
    assert monitor.update(6, 10.0) is None and monitor.update(7, 2.0) is not None  # re-armed
    assert RankMonitor(drop=None).update(0, 0.0) is None


def test_metrics_log_has_the_health_columns_and_refuses_unknown_ones(tmp_path):
    columns = metric_columns(num_targets=3)
    assert columns[-6:] == ("rankme", "pred_cos", "loss_block1", "loss_block2", "loss_block3", "knn_top1")
    with MetricsLog(tmp_path / "metrics.csv", 0, columns) as log:
        log.write({"step": 0, "loss": 1.0, "rankme": 7.5})
        with pytest.raises(ValueError, match="not_a_column"):
            log.write({"step": 1, "not_a_column": 1.0})
    rows = metric_rows(tmp_path)
    assert rows[0]["rankme"] == "7.5" and rows[0]["knn_top1"] == ""


def _pretrain(run_dir, *overrides, config=DEMO_CONFIG, tiny=True):
    args = ["pretrain", "--config", str(config), "--run-dir", str(run_dir)]
    for item in [*(TINY_OVERRIDES if tiny else []), "train.budget_minutes=null", *overrides]:
        args += ["--set", item]
    return main(args)


def test_a_collapsing_run_is_warned_of(tmp_path, capsys):
    """EMA 0 (the target is the encoder itself) with a high learning rate: the features
    collapse within tens of steps, and the run says so, with what to try."""
    assert _pretrain(tmp_path / "run", "train.max_steps=60", "optim.ema=[0.0, 0.0]", "optim.lr=0.01",
                     "optim.start_lr=0.01", "optim.warmup_epochs=0", "monitor.every=10",
                     "monitor.knn_every=0") == 0
    err = capsys.readouterr().err
    assert "warning: possible representation collapse" in err and "RankMe" in err
    assert "optim.lr" in err and "optim.ema" in err
    rows = [r for r in metric_rows(tmp_path / "run") if r["rankme"]]
    assert [int(r["step"]) for r in rows] == list(range(0, 60, 10))
    assert float(rows[-1]["rankme"]) < 0.25 * max(float(r["rankme"]) for r in rows)
    assert all(r["loss_block4"] for r in rows)


@pytest.mark.slow
def test_a_healthy_demo_run_is_not_warned_of_and_logs_online_knn(tmp_path, capsys):
    """The demo recipe on Fashion-MNIST for 200 steps: no warning; RankMe, the cosine and
    the online kNN (far above the 10% of chance) are in metrics.csv."""
    assert _pretrain(tmp_path / "run", "train.max_steps=200", "monitor.every=50", "monitor.knn_every=100",
                     "monitor.knn_bank=1000", "monitor.knn_queries=250", tiny=False) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert "online 20-NN top-1 every 100 steps (250 held-out training images against a bank of 1000)" \
        in captured.out
    rows = metric_rows(tmp_path / "run")
    knn = {int(r["step"]): float(r["knn_top1"]) for r in rows if r["knn_top1"]}
    assert sorted(knn) == [0, 100, 199]  # and the last step, for the curve's end
    assert all(40 < v <= 100 for v in knn.values())
    health = [r for r in rows if r["rankme"]]
    assert [int(r["step"]) for r in health] == [0, 50, 100, 150]
    assert float(health[-1]["pred_cos"]) > float(health[0]["pred_cos"])  # the predictor learns
