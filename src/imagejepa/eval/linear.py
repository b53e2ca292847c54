"""Linear probe: multinomial logistic regression on frozen, standardised features.

The L2 strength is chosen on a held-out 10% of the training features, then the probe is
refit on all training features and scored on the test split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3)


def _fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, iters: int) -> torch.nn.Linear:
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=iters, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def _accuracy(head, x, y, k: int = 1) -> float:
    with torch.no_grad():
        top = head(x).topk(min(k, head.out_features), dim=1).indices
    return (top == y[:, None]).any(dim=1).float().mean().item()


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    iters: int = 200, l2_grid=L2_GRID,
) -> dict:
    """Fit on train features ``(N, D)``, report top-1/top-5 on test features ``(M, D)``."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train_x), generator=g)
    n_val = max(1, len(train_x) // 10)
    val, fit = order[:n_val], order[n_val:]
    scores = {}
    for l2 in l2_grid:
        head = _fit(train_x[fit], train_y[fit], num_classes, l2, iters)
        scores[l2] = _accuracy(head, train_x[val], train_y[val])
    best = max(scores, key=scores.get)
    head = _fit(train_x, train_y, num_classes, best, iters)
    return {
        "top1": _accuracy(head, test_x, test_y, 1),
        "top5": _accuracy(head, test_x, test_y, 5),
        "l2": best,
        "val_top1": scores,
    }


def evaluate_linear(checkpoint, data_spec: str, which: str = "target", baselines: bool = False,
                    last_layers: int = 1, device=None, progress: bool = True) -> dict:
    """Linear probe of a checkpoint's encoder on ``data_spec`` (train split -> test split).

    With ``baselines`` the same probe also runs on raw pixels and on the same architecture
    at random initialisation, in the same run.
    """
    from ..data import EvalTransform, build_dataset, eval_batches
    from ..loading import load_encoder
    from ..models import Encoder
    from ..runtime import resolve_device, resolve_precision
    from .features import extract_features

    device = device or resolve_device("auto")
    precision = resolve_precision("auto", device)
    encoder, pre = load_encoder(checkpoint, which=which)
    train, test = build_dataset(data_spec, train=True), build_dataset(data_spec, train=False)
    transform = EvalTransform(pre.size, pre.in_chans, pre.mean, pre.std)

    def probe(enc):
        kw = dict(device=device, precision=precision, last_layers=last_layers, progress=progress)
        return linear_probe(*extract_features(enc, train, transform, **kw),
                            *extract_features(enc, test, transform, **kw))

    results = {f"{which}_encoder": probe(encoder)}
    if baselines:
        def pixels(ds):
            xs, ys = zip(*eval_batches(ds, transform, 1024))
            return torch.cat(xs).flatten(1), torch.cat([torch.as_tensor(y) for y in ys])

        results["raw_pixels"] = linear_probe(*pixels(train), *pixels(test))
        torch.manual_seed(0)
        results["random_init"] = probe(Encoder.from_spec(encoder.spec()))  # any source format
    return {"protocol": "linear", "checkpoint": str(checkpoint), "data": data_spec,
            "encoder": which, "last_layers": last_layers, "train_images": len(train),
            "test_images": len(test), "results": results}

