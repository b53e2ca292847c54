"""Tests of the representation-collapse monitor."""

import math

import torch

from imagejepa.monitor import CollapseMonitor, per_dim_std


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
