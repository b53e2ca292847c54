"""``imagejepa viz features``: the first three principal components of an encoder's patch
features as RGB, under the images as the encoder sees them (``EvalTransform``).

The PCA is fitted jointly over every patch of the shown images, so a colour means the same
direction in feature space in every panel: parts that the encoder represents alike are
coloured alike.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import EvalTransform, build_dataset, check_data_path, images_at
from ..errors import UsageError
from ..monitor.pictures import pca_rgb, to_uint8_rgb
from .figure import (
    MAX_COLUMNS,
    check_count,
    check_png_path,
    hide,
    image_layout,
    panel_figure,
    png_bytes,
    show_image,
    write_png,
)

MAX_IMAGES = 64
SPLITS = ("train", "test")


@torch.no_grad()
def feature_pca(checkpoint: str | Path, data: str, images: int = 8, split: str = "test",
                device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images (N, 3, H, W), PCA colours float (N, 3, h, w) in [0, 1])`` of the first
    ``images`` images of ``split``; ``checkpoint`` is anything ``load_encoder`` reads."""
    from ..interop.loading import load_encoder
    from ..runtime import resolve_device

    check_count("--images", images, 1, MAX_IMAGES)
    if split not in SPLITS:
        raise UsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    check_data_path(data)
    encoder, pre = load_encoder(checkpoint)
    dataset = build_dataset(data, train=split == "train")
    if images > len(dataset):
        raise UsageError(f"--images {images}: the {split} split of {data!r} holds only {len(dataset)} images")
    transform = EvalTransform(pre.size, pre.in_chans, pre.mean, pre.std)
    x = images_at(dataset, range(images), transform)
    device = torch.device(device) if device is not None else resolve_device("auto")
    tokens = encoder.to(device).eval()(x.to(device)).float().cpu()  # (N, T, D)
    return to_uint8_rgb(x, pre.mean, pre.std), pca_rgb(tokens, encoder.grid)


def features_figure(checkpoint: str | Path, data: str, images: int = 8, split: str = "test",
                    device: str | torch.device | None = None):
    """A matplotlib Figure: pairs of rows, the images above and their PCA colours below
    (upsampled to the image, nearest), at most 8 images a row pair."""
    pictures, colours = feature_pca(checkpoint, data, images, split, device)
    size = pictures.shape[-2:]
    colours = F.interpolate(colours, size=size, mode="nearest")
    colours = (colours * 255).round().to(torch.uint8)
    cols = min(images, MAX_COLUMNS)
    pairs = -(-images // cols)
    fig, axes = panel_figure(2 * pairs, cols)
    image_layout(fig, 2 * pairs)
    for i in range(pairs * cols):
        top, bottom = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        if i < images:
            show_image(top, pictures[i], f"{split} #{i}")
            show_image(bottom, colours[i], f"#{i} features PCA")
        else:
            hide(top)
            hide(bottom)
    return fig


def features_png(checkpoint: str | Path, data: str, images: int = 8, split: str = "test",
                 device: str | torch.device | None = None) -> bytes:
    """:func:`features_figure` as PNG bytes."""
    return png_bytes(features_figure(checkpoint, data, images, split, device))


def write_features_png(checkpoint: str | Path, data: str, out: str | Path, images: int = 8,
                       split: str = "test", device: str | torch.device | None = None) -> Path:
    """Write :func:`features_figure` to ``out`` (a .png file) atomically; returns the path."""
    check_png_path(out)
    return write_png(features_png(checkpoint, data, images, split, device), out)
