"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol).

Cosine similarity; each of the k nearest training images votes for its label with weight
``exp(similarity / T)``. Similarities are computed in (test chunk x train chunk) blocks
with a running top-k, so memory stays ``O(chunk * (k + chunk))`` however large both
splits are (1M x 1M never needs a 1M^2 matrix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KS = (10, 20, 100)
TEMPERATURE = 0.07


@torch.no_grad()
def nearest_neighbours(train_x: torch.Tensor, query_x: torch.Tensor, k: int,
                       query_chunk: int = 1024, train_chunk: int = 65536
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities ``(M, k)`` and indices ``(M, k)`` of each query's k nearest
    training rows, most similar first. ``train_x (N, D)``, ``query_x (M, D)``."""
    k = min(k, len(train_x))
    train = F.normalize(train_x.float(), dim=1)
    sims, idxs = [], []
    for q0 in range(0, len(query_x), query_chunk):
        query = F.normalize(query_x[q0 : q0 + query_chunk].float(), dim=1)
        best_s = torch.full((len(query), 0), -2.0, device=query.device)
        best_i = torch.zeros((len(query), 0), dtype=torch.long, device=query.device)
        for t0 in range(0, len(train), train_chunk):
            block = query @ train[t0 : t0 + train_chunk].T  # (q, t)
            s, i = block.topk(min(k, block.shape[1]), dim=1)
            best_s, order = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.cat([best_i, i + t0], 1).gather(1, order)
        sims.append(best_s)
        idxs.append(best_i)
    return torch.cat(sims), torch.cat(idxs)


def vote(sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int,
         temperature: float = TEMPERATURE) -> torch.Tensor:
    """Class scores ``(M, C)`` from neighbours' similarities and labels, both ``(M, k)``."""
    weights = (sims / temperature).exp()
    scores = torch.zeros(len(sims), num_classes, device=sims.device)
    return scores.scatter_add_(1, neighbour_labels, weights)


def knn_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
              ks=KS, temperature: float = TEMPERATURE) -> dict:
    """Top-1/top-5 of weighted kNN on the test split for each k in ``ks``."""
    from .heads import topk_accuracy

    num_classes = int(max(train_y.max(), test_y.max())) + 1
    sims, idx = nearest_neighbours(train_x, test_x, max(ks))
    labels = train_y.to(idx.device)[idx]
    test_y = test_y.to(idx.device)
    out = {}
    for k in ks:
        scores = vote(sims[:, :k], labels[:, :k], num_classes, temperature)
        out[f"k={k}"] = {"top1": topk_accuracy(scores, test_y, 1), "top5": topk_accuracy(scores, test_y, 5)}
    return {**out, "temperature": temperature}


def summary(result: dict) -> dict:
    return {f"{name} top-1": r["top1"] for name, r in result.items() if name.startswith("k=")}
