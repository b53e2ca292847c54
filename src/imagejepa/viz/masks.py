"""``imagejepa viz masks``: training crops with the configured multi-block masks drawn on them.

Image ``i`` is cropped as epoch 0 of training crops it (``TrainTransform`` with the config's
``data.crop_scale``, generator seeded with ``(seed, 0, i)``), and the masks are those the
configured sampler draws for step 0 of a batch of the shown images. Patches outside the
context are darkened; each target block is outlined in its own colour.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config, load_config, mask_settings
from ..data import TrainTransform, build_dataset, channel_stats, check_data_path
from ..errors import UsageError
from ..masking import Masks, MultiBlockMaskSampler
from ..monitor.pictures import draw_masks, to_uint8_rgb
from ..train.recipe import resolve_recipe
from ..train.step import MASK_STREAM
from ..utils.seeds import mix_seed
from .figure import (
    check_count,
    check_png_path,
    grid_shape,
    hide,
    image_layout,
    panel_figure,
    png_bytes,
    show_image,
    write_png,
)

MAX_IMAGES = 64


def masked_crops(cfg: Config, images: int = 8, seed: int | None = None, data: str | None = None
                 ) -> tuple[torch.Tensor, Masks]:
    """``(uint8 (N, 3, H, W) crops with the masks drawn, Masks)`` for the first ``images``
    images of the training split of ``data`` (default: the config's ``data.dataset``)."""
    check_count("--images", images, 1, MAX_IMAGES)
    seed = cfg.train.seed if seed is None else seed
    spec = data or cfg.data.dataset
    check_data_path(spec)
    dataset = build_dataset(spec, train=True)
    if images > len(dataset):
        raise UsageError(f"--images {images}: data {spec!r} holds only {len(dataset)} images")
    resolve_recipe(cfg, dataset)  # recipe: auto sizes the grid from the data shown
    m = cfg.model
    mean, std = channel_stats(dataset.mean, m.in_chans), channel_stats(dataset.std, m.in_chans)
    transform = TrainTransform(m.img_size, m.in_chans, mean, std, cfg.data.crop_scale)
    crops = torch.stack([transform(dataset.load(i)[0], torch.Generator().manual_seed(mix_seed(seed, 0, i)))
                         for i in range(images)])
    grid = (m.img_size // m.patch_size, m.img_size // m.patch_size)
    sampler = MultiBlockMaskSampler(grid, mask_settings(cfg))
    masks = sampler(images, torch.Generator().manual_seed(mix_seed(seed, 0, MASK_STREAM)))
    return draw_masks(to_uint8_rgb(crops, mean, std), masks, grid, m.patch_size), masks


def masks_figure(config: str | Path | Config, images: int = 8, seed: int | None = None,
                 data: str | None = None):
    """A matplotlib Figure: one panel per image (at most 8 a row), titled with its index and
    its numbers of context and target patches. ``config``: a YAML file (ours or official) or a
    :class:`Config`."""
    cfg = config if isinstance(config, Config) else load_config(config)
    drawn, masks = masked_crops(cfg, images, seed, data)
    rows, cols = grid_shape(images)
    fig, axes = panel_figure(rows, cols)
    image_layout(fig, rows)
    context, targets = masks.context.shape[1], masks.targets.shape[1] * masks.targets.shape[2]
    for i, ax in enumerate(axes.flat):
        if i < images:
            show_image(ax, drawn[i], f"#{i}  context {context}  targets {targets}")
        else:
            hide(ax)
    return fig


def masks_png(config: str | Path | Config, images: int = 8, seed: int | None = None,
              data: str | None = None) -> bytes:
    """:func:`masks_figure` as PNG bytes."""
    return png_bytes(masks_figure(config, images, seed, data))


def write_masks_png(config: str | Path | Config, out: str | Path, images: int = 8,
                    seed: int | None = None, data: str | None = None) -> Path:
    """Write :func:`masks_figure` to ``out`` (a .png file) atomically; returns the path."""
    check_png_path(out)  # before the work, not after
    return write_png(masks_png(config, images, seed, data), out)
