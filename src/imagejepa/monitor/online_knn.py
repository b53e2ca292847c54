"""Online kNN: does the target encoder's representation get better as the run trains?

Every ``monitor.knn_every`` steps the target encoder embeds a fixed bank of training images
and a fixed, disjoint set of held-out training images (average-pooled patch tokens of the
last ``eval.last_layers`` blocks, as ``imagejepa eval`` does), and each held-out image is
classified by a weighted vote of its ``k`` nearest bank images (the DINO protocol of
:mod:`imagejepa.eval.knn`). Both sets are drawn once from ``train.seed``, decoded and
resized once, and kept in memory as uint8, so each evaluation costs one forward pass over
a few thousand small images: seconds, not the minutes of a full ``eval knn``.
"""

from __future__ import annotations

import torch

from ..data import BadImageError, EvalTransform, TensorImageDataset
from ..eval.features import extract_features
from ..eval.knn import TEMPERATURE, nearest_neighbours, vote
from ..utils.seeds import mix_seed

KNN_STREAM = 0x6B4E  # the random stream that draws the bank and the held-out images


def has_labels(dataset) -> bool:
    """Labels worth a kNN: every image labelled, and at least two classes."""
    labels = getattr(dataset, "labels", None)
    return labels is not None and len(labels) > 0 and int(labels.min()) >= 0 and len(labels.unique()) >= 2


def _resized_subset(dataset, indices: torch.Tensor, transform: EvalTransform) -> TensorImageDataset:
    """The images at ``indices``, decoded, resized and centre-cropped once: uint8 ``(n, C,
    size, size)``. Unreadable files are left out (training names them when it meets them)."""
    to_size = transform.resized
    in_memory = getattr(dataset, "images", None)
    if in_memory is not None:
        images, kept = to_size(in_memory[indices]), indices
    else:
        pictures, kept = [], []
        for i in indices.tolist():
            try:
                image, _ = dataset.load(i)
            except BadImageError:
                continue
            pictures.append(to_size(image))
            kept.append(i)
        images, kept = torch.stack(pictures), torch.tensor(kept, dtype=torch.long)
    return TensorImageDataset(images, dataset.labels[kept], getattr(dataset, "classes", ()),
                              dataset.mean, dataset.std)


class OnlineKNN:
    """``knn(encoder) -> top-1 accuracy (%)`` of ``k``-NN on ``queries`` held-out training
    images against a bank of ``bank`` others; :meth:`for_data` returns None for unlabelled data."""

    def __init__(self, dataset, transform: EvalTransform, bank: int, queries: int, k: int, seed: int,
                 device: torch.device, precision: str = "fp32", last_layers: int = 1):
        n = len(dataset)
        queries = min(queries, n // 5)  # small data: at least four bank images per held-out one
        order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, 0, KNN_STREAM)))
        chosen = {"queries": order[:queries], "bank": order[queries : queries + bank]}
        self.sets = {name: _resized_subset(dataset, idx.sort().values, transform)
                     for name, idx in chosen.items()}
        self.transform, self.k, self.device = transform, k, device
        self.precision, self.last_layers = precision, last_layers
        self.num_classes = int(dataset.labels.max()) + 1

    @classmethod
    def for_data(cls, dataset, transform: EvalTransform, monitor_cfg, seed: int, device: torch.device,
                 precision: str, last_layers: int) -> OnlineKNN | None:
        if monitor_cfg.knn_every == 0 or not has_labels(dataset) or len(dataset) < 10:
            return None
        return cls(dataset, transform, monitor_cfg.knn_bank, monitor_cfg.knn_queries, monitor_cfg.knn_k,
                   seed, device, precision, last_layers)

    def features(self, encoder, name: str) -> torch.Tensor:
        """Pooled features ``(n, last_layers * D)`` of the ``"bank"`` or ``"queries"`` set."""
        features, _ = extract_features(encoder, self.sets[name], self.transform, self.device,
                                       self.precision, last_layers=self.last_layers, progress=False)
        return features

    @torch.no_grad()
    def __call__(self, encoder) -> float:
        training = encoder.training  # restored: a compiled step guards on the module's mode
        try:
            bank, queries = self.features(encoder, "bank"), self.features(encoder, "queries")
        finally:
            encoder.train(training)
        sims, idx = nearest_neighbours(bank, queries, self.k)
        labels = self.sets["bank"].labels[idx]
        scores = vote(sims, labels, self.num_classes, TEMPERATURE)
        return 100.0 * (scores.argmax(dim=1) == self.sets["queries"].labels).float().mean().item()
