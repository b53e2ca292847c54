"""Tests of representation health: RankMe, the per-block metrics, the collapse warnings,
and the health columns of a run's metrics.csv."""

import math

import pytest
import torch
import torch.nn.functional as F

from imagejepa.cli import main
from imagejepa.jepa import per_dim_std
from imagejepa.monitor import (
    CollapseMonitor,
    CollapseWatch,
    KnnDropMonitor,
    PartialCollapseMonitor,
    RankMonitor,
    StdHoverMonitor,
    Thresholds,
    health_metrics,
    rankme,
)
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


def test_partial_collapse_needs_both_a_halved_rank_and_a_loss_near_zero():
    monitor = PartialCollapseMonitor(fraction=0.5, loss_floor=0.1, window=2)
    for loss in (1.0, 0.8, 0.5):
        monitor.add_loss(loss)
    assert monitor.update(0, 20.0) is None and monitor.update(1, 8.0) is None  # rank halved, loss 0.65 x
    for loss in (0.02, 0.02):
        monitor.add_loss(loss)
    assert monitor.update(2, 12.0) is None  # loss near zero, rank above half
    warning = monitor.update(3, 8.0)
    assert "partial collapse at step 3" in warning and "RankMe of the target features is 8.0" in warning
    assert "monitor.rankme_partial=0.5 x its best (20.0)" in warning and "loss fell to 0.0200" in warning
    assert monitor.update(4, 7.0) is None  # once per episode
    # RankMe wavering about half its best stays one episode; back at 3/4 of it, the episode is over.
    assert monitor.update(5, 11.0) is None and monitor.update(6, 7.0) is None
    assert monitor.update(7, 15.0) is None and monitor.update(8, 7.0) is not None


def test_std_hovering_near_the_threshold_warns_after_a_long_window():
    monitor = StdHoverMonitor(threshold=0.15, factor=1.6, window=5)
    assert [monitor.update(s, 0.2) for s in range(4)] == [None] * 4  # the window is not full yet
    warning = monitor.update(4, 0.2)
    assert "partial collapse at step 4" in warning and "hovered near the collapse threshold" in warning
    assert all(monitor.update(s, 0.2) is None for s in range(5, 9))
    assert [StdHoverMonitor(0.15, 1.6, window=5).update(s, 0.4) for s in range(6)] == [None] * 6
    collapsed = StdHoverMonitor(0.15, 1.6, window=5)  # below the threshold: CollapseMonitor's to say
    assert [collapsed.update(s, 0.1) for s in range(6)] == [None] * 6


def test_knn_drop_allows_for_a_small_held_out_set():
    monitor = KnnDropMonitor(points=5.0)
    assert [monitor.update(s, v) for s, v in enumerate([40.0, 60.0, 56.0])] == [None] * 3
    warning = monitor.update(3, 54.0)
    assert "fell to 54.0% from its best of 60.0%" in warning
    noisy = KnnDropMonitor(points=5.0, queries=50)  # 2 standard errors of 60% on 50 images: 13.9
    assert noisy.update(0, 60.0) is None and noisy.update(1, 50.0) is None
    assert noisy.update(2, 45.0) is not None


def test_the_watch_gives_the_full_collapse_warning_instead_of_the_partial_one():
    watch = CollapseWatch(Thresholds(collapse_std=None), advice="try X")
    rows = [{"step": s, "loss": 1.0 if s == 0 else 0.001, "target_std": 0.5} for s in range(60)]
    for row, rank in zip(rows[::10], (20.0, 20.0, 9.0, 4.0, 9.0, 9.0)):
        row["rankme"] = rank
    warnings = [w for row in rows for w in watch.update(row)]
    assert len(warnings) == 2 and all(w.endswith("try X") for w in warnings)
    assert "partial collapse at step 20" in warnings[0]
    assert "possible representation collapse at step 30" in warnings[1]  # below 0.25 x 20: the full one
    # Back above a quarter at step 40: the partial episode goes on, and is not warned of again.
    assert watch.now() == ["RankMe is below 0.5 × its best 20 with the loss near zero"]


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
    assert _pretrain(tmp_path / "run", "optim.anti_collapse=none", "train.max_steps=80",
                     "optim.ema=[0.0, 0.0]", "optim.lr=0.01", "optim.start_lr=0.01",
                     "optim.warmup_epochs=0", "monitor.every=10", "monitor.knn_every=0") == 0
    err = capsys.readouterr().err
    assert "warning: possible representation collapse" in err and "RankMe" in err
    assert "optim.lr" in err and "optim.ema" in err
    rows = [r for r in metric_rows(tmp_path / "run") if r["rankme"]]
    assert [int(r["step"]) for r in rows] == list(range(0, 80, 10))
    assert float(rows[-1]["rankme"]) < 0.25 * max(float(r["rankme"]) for r in rows)
    assert all(r["loss_block4"] for r in rows)


# The std of this run's target features ends near the default collapse threshold (0.15):
# a lower one keeps the full-collapse warning out of what this test isolates.
PARTIAL = ["train.max_steps=200", "optim.ema=[0.996, 0.996]", "optim.lr=0.001", "optim.start_lr=0.001",
           "optim.warmup_epochs=0", "model.depth=2", "monitor.every=10", "monitor.knn_every=0",
           "train.collapse_std=0.12"]


def test_a_partially_collapsing_run_is_warned_of_and_the_term_against_collapse_prevents_it(tmp_path, capsys):
    """A fast EMA (0.996, held) and lr 1e-3 on the synthetic set: RankMe falls to about a third
    of its best while the loss falls to 2% of its start, the std staying above the collapse
    threshold: partial collapse, and said so, with the term against collapse to try. With the
    term on, the same run keeps its rank and warns of nothing."""
    assert _pretrain(tmp_path / "run", *PARTIAL, "optim.anti_collapse=none") == 0
    err = capsys.readouterr().err
    assert err.count("warning: partial collapse") == 1  # RankMe wavers, but it is one episode
    assert "RankMe of the target features is" in err
    assert "possible representation collapse" not in err
    assert "try optim.anti_collapse=vc" in err
    rows = [r for r in metric_rows(tmp_path / "run") if r["rankme"]]
    ranks = [float(r["rankme"]) for r in rows]
    assert ranks[-1] < 0.5 * max(ranks) and float(rows[-1]["loss"]) < 0.1 * float(rows[0]["loss"])
    assert _pretrain(tmp_path / "guarded", *PARTIAL, "optim.anti_collapse=vc") == 0
    assert "warning" not in capsys.readouterr().err
    ranks = [float(r["rankme"]) for r in metric_rows(tmp_path / "guarded") if r["rankme"]]
    assert min(ranks) > 0.5 * max(ranks)


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
