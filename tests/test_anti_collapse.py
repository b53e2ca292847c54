"""The term against collapse (optim.anti_collapse: vc): what it measures, that its gradient
spreads features out, and that a run with it trains, logs it and resumes exactly."""

import pytest
import torch

from imagejepa.anti_collapse import variance_covariance
from imagejepa.config import load_config
from imagejepa.train.trainer import Trainer

from .helpers import TINY_OVERRIDES, final_tensors, losses, metric_rows, quiet

VC = ["optim.anti_collapse=vc", "optim.anti_collapse_weight=1.0"]


def test_spread_features_cost_nothing_and_collapsed_ones_cost_most():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(8, 512, 16, generator=g)  # (B, K, D): independent, unit variance
    variance, covariance = variance_covariance(spread)
    # Layer norm leaves each pair of dimensions correlated by -1/D: 1/D of covariance term.
    assert variance.item() < 0.05 and covariance.item() < 1.5 / 16
    collapsed = torch.randn(16, generator=g).expand(8, 512, 16)  # every token the same vector
    variance, covariance = variance_covariance(collapsed)
    assert variance.item() > 0.95
    # Two directions only: spread within them, but most dimensions correlated with them.
    low_rank = torch.randn(8, 512, 2, generator=g) @ torch.randn(2, 16, generator=g)
    variance, covariance = variance_covariance(low_rank)
    assert covariance.item() > 1.0


def test_its_gradient_spreads_collapsing_features_out():
    g = torch.Generator().manual_seed(1)
    tokens = (torch.randn(16, generator=g) + 0.05 * torch.randn(4, 64, 16, generator=g)).requires_grad_()

    def spread(x):  # per-dimension std over tokens, of the layer-normed features the term sees
        return torch.nn.functional.layer_norm(x.detach(), (16,)).reshape(-1, 16).std(0).mean()

    before = spread(tokens)
    optimizer = torch.optim.Adam([tokens], lr=0.05)  # scale-free: each token gets 1/N of the gradient
    for _ in range(100):
        variance, covariance = variance_covariance(tokens)
        optimizer.zero_grad()
        (variance + 0.04 * covariance).backward()
        optimizer.step()
    assert spread(tokens) > 5 * before


def test_a_run_with_it_trains_logs_the_term_and_resumes_exactly(tmp_path):
    run = TINY_OVERRIDES + VC + ["train.budget_minutes=null", "train.checkpoint_every_steps=3"]
    Trainer(load_config(None, run + ["train.max_steps=6"]), tmp_path / "whole", log=quiet).fit()
    rows = metric_rows(tmp_path / "whole")
    assert all(0 < float(r["anti_collapse"]) < 2 for r in rows)
    plain = tmp_path / "plain"
    Trainer(load_config(None, TINY_OVERRIDES + ["train.max_steps=6"]), plain, log=quiet).fit()
    assert losses(plain)[0] == pytest.approx(losses(tmp_path / "whole")[0])  # the loss column: prediction
    assert "anti_collapse" not in metric_rows(plain)[0]
    assert final_tensors(plain)["encoder.patch_embed.proj.weight"].ne(
        final_tensors(tmp_path / "whole")["encoder.patch_embed.proj.weight"]).any()  # the term trains
    # Interrupted at step 3, resumed: the same losses, terms and weights as the whole run.
    part = tmp_path / "part"
    Trainer(load_config(None, run + ["train.max_steps=3"]), part, log=quiet).fit()
    Trainer(load_config(None, run + ["train.max_steps=6"]), part, resume=True, log=quiet).fit()
    assert losses(part) == losses(tmp_path / "whole")
    assert [r["anti_collapse"] for r in metric_rows(part)] == [r["anti_collapse"] for r in rows]
    a, b = final_tensors(part), final_tensors(tmp_path / "whole")
    assert all(torch.equal(a[k], b[k]) for k in a)
