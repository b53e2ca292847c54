"""``imagejepa viz neighbors``: query images and their nearest neighbours in feature space.

Features are the encoder's average-pooled patch tokens (as the kNN probe uses them);
neighbours are found by cosine similarity among the first ``bank`` images of the training
split. Queries come from the test split; a spec with one split only (tar shards, an image
folder without val/test) takes them from the end of the training split, outside the bank,
so a query never finds itself.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import EvalTransform, build_dataset, check_data_path, images_at, parse_data_spec
from ..data.base import TensorImageDataset
from ..errors import UsageError
from ..eval.features import extract_features
from ..eval.knn import nearest_neighbours
from ..monitor.pictures import to_uint8_rgb
from .figure import check_count, check_png_path, image_layout, panel_figure, png_bytes, show_image, write_png

MAX_QUERIES, MAX_K = 32, 16
SAME, OTHER = "#1a7f37", "#cf222e"  # title colours: neighbour of the query's class or not


class _Range:
    """Images ``start .. stop - 1`` of a raw dataset, as a raw dataset (``load``, ``len``)."""

    def __init__(self, raw, start: int, stop: int):
        self.raw, self.start, self.stop = raw, start, stop
        self.classes = getattr(raw, "classes", ())

    def __len__(self) -> int:
        return self.stop - self.start

    def load(self, index: int):
        return self.raw.load(self.start + index)


def take(raw, start: int, stop: int):
    """A contiguous part of a raw dataset; in-memory ones stay in memory (batched transforms)."""
    if isinstance(raw, TensorImageDataset):
        return TensorImageDataset(raw.images[start:stop], raw.labels[start:stop], raw.classes,
                                  raw.mean, raw.std)
    return _Range(raw, start, stop)


def split_bank_and_queries(data: str, queries: int, bank: int):
    """``(bank dataset, query dataset, where the queries come from)``."""
    train = build_dataset(data, train=True)
    test = None
    if parse_data_spec(data).kind != "webdataset":  # shards are one split
        try:
            test = build_dataset(data, train=False)
        except FileNotFoundError:  # an image folder without val/ or test/
            test = None
    if test is not None:
        if queries > len(test):
            raise UsageError(f"--queries {queries}: the test split of {data!r} holds only {len(test)} images")
        return take(train, 0, min(bank, len(train))), take(test, 0, queries), "test"
    if queries >= len(train):
        raise UsageError(f"--queries {queries}: {data!r} holds only {len(train)} images, and the "
                         "queries must leave some for the bank")
    size = min(bank, len(train) - queries)
    return take(train, 0, size), take(train, len(train) - queries, len(train)), "train (held out of the bank)"


def class_name(classes, label: int) -> str:
    if 0 <= label < len(classes):
        return str(classes[label])
    return str(label)


@torch.no_grad()
def neighbors_figure(checkpoint: str | Path, data: str, queries: int = 6, k: int = 5, bank: int = 5000,
                     device: str | torch.device | None = None):
    """A matplotlib Figure of ``queries`` rows x ``1 + k`` panels: the query (titled with its
    label) and its ``k`` nearest neighbours, most similar first (titled with the cosine
    similarity and the label; green when the label is the query's, red otherwise)."""
    from ..interop.loading import load_encoder
    from ..runtime import resolve_device, resolve_precision

    check_count("--queries", queries, 1, MAX_QUERIES)
    check_count("--k", k, 1, MAX_K)
    check_count("--bank", bank, k)
    check_data_path(data)
    encoder, pre = load_encoder(checkpoint)
    bank_set, query_set, source = split_bank_and_queries(data, queries, bank)
    if len(bank_set) < k:
        raise UsageError(f"--k {k}: the bank holds only {len(bank_set)} images")
    device = torch.device(device) if device is not None else resolve_device("auto")
    precision = resolve_precision("auto", device)
    transform = EvalTransform(pre.size, pre.in_chans, pre.mean, pre.std)
    bank_x, bank_y = extract_features(encoder, bank_set, transform, device, precision, progress=False)
    query_x, query_y = extract_features(encoder, query_set, transform, device, precision, progress=False)
    sims, idxs = nearest_neighbours(bank_x, query_x, k)  # (Q, k) each
    classes = getattr(bank_set, "classes", ()) or ()

    query_images = images_at(query_set, range(queries), transform)
    fig, axes = panel_figure(queries, 1 + k)
    image_layout(fig, queries)
    for q in range(queries):
        label = int(query_y[q])
        show_image(axes[q, 0], to_uint8_rgb(query_images[q : q + 1], pre.mean, pre.std)[0],
                   f"query ({source.split()[0]}): {class_name(classes, label)}")
        picked = [int(i) for i in idxs[q]]
        images = images_at(bank_set, picked, transform)
        pixels = to_uint8_rgb(images, pre.mean, pre.std)
        for j, index in enumerate(picked):
            neighbour = int(bank_y[index])
            show_image(axes[q, 1 + j], pixels[j], f"{float(sims[q, j]):.3f} {class_name(classes, neighbour)}",
                       SAME if neighbour == label else OTHER)
    return fig


def neighbors_png(checkpoint: str | Path, data: str, queries: int = 6, k: int = 5, bank: int = 5000,
                  device: str | torch.device | None = None) -> bytes:
    """:func:`neighbors_figure` as PNG bytes."""
    return png_bytes(neighbors_figure(checkpoint, data, queries, k, bank, device))


def write_neighbors_png(checkpoint: str | Path, data: str, out: str | Path, queries: int = 6, k: int = 5,
                        bank: int = 5000, device: str | torch.device | None = None) -> Path:
    """Write :func:`neighbors_figure` to ``out`` (a .png file) atomically; returns the path."""
    check_png_path(out)
    return write_png(neighbors_png(checkpoint, data, queries, k, bank, device), out)
