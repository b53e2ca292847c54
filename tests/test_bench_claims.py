"""`imagejepa bench claims` on a tiny grid: cells pretrain by FLOPs and are probed alike, the
summary is written as JSON, markdown and a figure, and a finished cell is never run again."""

from __future__ import annotations

import json

import pytest

from imagejepa.bench import claims

from .helpers import TINY_OVERRIDES

TINY = [o for o in TINY_OVERRIDES if not o.startswith("data.dataset")] + [
    "monitor.knn_every=0", "method.decoder_dim=32", "method.decoder_heads=2"]


@pytest.fixture
def tiny_grid(monkeypatch):
    probes = (("knn20", "synthetic", "knn", {"ks": (20,)}),)
    monkeypatch.setattr(claims, "datasets", lambda quick: {
        "fashion-mnist": claims.Dataset("fashion-mnist", "synthetic", probes)})
    return [claims.Cell("ijepa", "fashion-mnist", "low"), claims.Cell("mae", "fashion-mnist", "low")]


def test_claims_runs_each_cell_once_and_writes_the_summary(tmp_path, tiny_grid, monkeypatch):
    budget = 6e9  # a few steps of the tiny model
    summary = claims.run_claims(tmp_path, cells=tiny_grid, budget_flops=lambda: budget * 3,
                                overrides=TINY, log=lambda line: None)
    cells = {r["method"]: r for r in summary["cells"]}
    assert set(cells) == {"ijepa", "mae"} and summary["pending"] == []
    for method, r in cells.items():
        assert r["key"] == f"fashion-mnist-{method}-low-s0"
        assert r["steps"] == int(budget // r["step_flops"]) and r["flops"] <= budget
        assert r["images_seen"] == 8 * r["steps"] and 0 <= r["probes"]["knn20"] <= 100
    assert cells["mae"]["step_flops"] < cells["ijepa"]["step_flops"]  # MAE's encoder sees a quarter
    assert set(summary["baselines"]["fashion-mnist"]) == {"pixels", "random"}
    written = json.loads((tmp_path / "claims.json").read_text())
    assert written["cells"] == summary["cells"] and written["mid_budget_flops"] == budget * 3
    table = (tmp_path / "claims.md").read_text()
    assert "| ijepa | low | 0 |" in table and "| raw pixels |" in table
    assert (tmp_path / "claims.png").stat().st_size > 1000

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(claims, "run_cell", must_not_run)
    monkeypatch.setattr(claims, "baselines", must_not_run)
    again = claims.run_claims(tmp_path, cells=tiny_grid, budget_flops=must_not_run, log=lambda line: None)
    assert again["cells"] == summary["cells"]


def test_the_full_grid_holds_what_the_comparison_needs():
    cells = claims.grid(quick=False)
    mid = [c for c in cells if c.budget == "mid" and c.seed == 0]
    assert {(c.method, c.dataset) for c in mid} == {(m, d) for m in claims.METHODS
                                                   for d in ("fashion-mnist", "scenes")}
    fm = {(c.method, c.budget) for c in cells if c.dataset == "fashion-mnist"}
    assert {(m, b) for m in ("ijepa", "mae") for b in ("low", "mid", "high")} <= fm
    budgets = claims.BUDGETS
    assert budgets["high"] / budgets["mid"] == budgets["mid"] / budgets["low"] == 3
    seeds = {(c.method, c.seed) for c in cells if c.budget == "mid" and c.dataset == "fashion-mnist"}
    assert {(m, s) for m in ("ijepa", "mae") for s in (0, 1, 2)} <= seeds
    assert len(cells) == len({c.key for c in cells})
    quick = claims.grid(quick=True)
    assert {(c.method, c.dataset) for c in quick} == {(m, d) for m in claims.METHODS
                                                      for d in ("fashion-mnist", "scenes")}
