"""Low-shot evaluation: logistic regression on N labelled images per class.

For each shot count (1, 5, 10 per class, and 1% of the training split, class-balanced)
and each seed, a class-balanced subset is drawn, multinomial logistic regression is fit on
its frozen features by L-BFGS, and top-1 on the whole test split is recorded. Results are
mean and standard deviation over seeds. Features are standardised with statistics of the
whole (unlabelled) training split; not whitened, which would give the noise directions as
much weight as the informative ones and overfit a handful of labels.
"""

from __future__ import annotations

import statistics

import torch

from .heads import logistic_regression, standardize, topk_accuracy

SHOTS = ("1", "5", "10", "1%")
L2 = 1e-3  # no held-out labels to tune on at 1 shot; one fixed, moderate strength


def shots_per_class(shot: str, train_size: int, num_classes: int) -> int:
    """``"5"`` -> 5; ``"1%"`` -> 1% of the training split spread evenly over the classes."""
    if shot.endswith("%"):
        return max(1, round(float(shot[:-1]) / 100 * train_size / num_classes))
    n = int(shot)
    if n < 1:
        raise ValueError(f"shots must be >= 1 per class or a percentage like 1%, got {shot!r}")
    return n


def balanced_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` random images of every class (fewer if a class is smaller)."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        picks.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(picks)


def lowshot_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                  shots=SHOTS, seeds: int = 3, l2: float = L2) -> dict:
    """``{"5-shot": {"per_class", "top1_mean", "top1_std", "top1_runs"}, ...}``."""
    train_x, test_x = standardize(train_x.float(), test_x.float())
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    out = {}
    for shot in shots:
        per_class = shots_per_class(str(shot), len(train_x), num_classes)
        runs = []
        for seed in range(seeds):
            idx = balanced_subset(train_y, per_class, seed).to(train_x.device)
            head = logistic_regression(train_x[idx], train_y[idx], num_classes, l2)
            with torch.no_grad():
                runs.append(topk_accuracy(head(test_x), test_y))
        out[f"{shot}-shot"] = {
            "per_class": per_class,
            "top1_mean": statistics.fmean(runs),
            "top1_std": statistics.stdev(runs) if len(runs) > 1 else 0.0,
            "top1_runs": runs,
        }
    return out


def summary(result: dict) -> dict:
    return {name: (r["top1_mean"], r["top1_std"]) for name, r in result.items()}
