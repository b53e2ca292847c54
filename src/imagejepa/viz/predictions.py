"""``imagejepa viz predictions``: what the predictor predicts, in pixels (the paper's figure).

One row per image: the image with its target blocks outlined; the context the model saw
(every other patch in the data's mean colour); the decoder applied to the target encoder's
features of the blocks (what a perfect predictor would give); then ``samples`` draws of the
decoder applied to the predictor's outputs for the blocks, from the context alone. Decoded
pixels are pasted into the blocks over the context image, so each panel shows what the
model sees plus what it predicts."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import build_dataset, images_at
from ..decoder.store import load_decoder
from ..decoder.train import SCORE_STREAM, load_source
from ..masking import Masks
from ..models import gather_tokens
from ..models.layers import patchify, unpatchify
from ..monitor.pictures import draw_masks, to_uint8_rgb
from ..utils.seeds import mix_seed
from .figure import (
    check_count,
    check_png_path,
    image_layout,
    panel_figure,
    png_bytes,
    show_image,
    write_png,
)

MAX_IMAGES, MAX_SAMPLES = 16, 8


@torch.no_grad()
def predictions_figure(checkpoint: str | Path, decoder_dir: str | Path, data: str, images: int = 4,
                       samples: int = 3, seed: int = 0):
    """A Figure of ``images`` rows x ``3 + samples`` panels (held-out images of ``data``)."""
    check_count("--images", images, 1, MAX_IMAGES)
    check_count("--samples", samples, 1, MAX_SAMPLES)
    decoder, _, _ = load_decoder(decoder_dir)
    source = load_source(checkpoint)
    test = build_dataset(data, train=False)
    count = min(images, len(test))
    x = images_at(test, torch.arange(count), source.transform)  # (n, C, H, W), normalised
    masks = source.sampler(count, torch.Generator().manual_seed(mix_seed(seed, 1, SCORE_STREAM)))
    grid, p = source.grid, source.patch_size
    everything = torch.arange(grid[0] * grid[1]).expand(count, -1)
    mean, std = source.transform.mean, source.transform.std

    def with_blocks(pixels: torch.Tensor | None) -> torch.Tensor:
        """The context image with ``pixels (n, T, Kt, P)`` pasted into the target blocks."""
        tokens = patchify(x, p)
        seen = torch.zeros(tokens.shape[:2], dtype=torch.bool)
        seen.scatter_(1, masks.context, True)
        tokens = torch.where(seen[..., None], tokens, torch.zeros(()))  # unseen: the mean colour
        if pixels is not None:
            flat = masks.targets.flatten(1)
            tokens.scatter_(1, flat[..., None].expand(-1, -1, tokens.shape[-1]), pixels.flatten(1, 2))
        image = to_uint8_rgb(unpatchify(tokens, grid, p, x.shape[1]), mean, std)
        return draw_masks(image, Masks(everything, masks.targets), grid, p)  # outlines only

    def decoded(features: torch.Tensor, sample_seed: int) -> torch.Tensor:
        n, t, k, _ = features.shape
        out = decoder.sample(features.flatten(0, 1), masks.targets.flatten(0, 1),
                             generator=torch.Generator().manual_seed(sample_seed))
        return out.reshape(n, t, k, -1)

    columns = [
        ("image, targets", draw_masks(to_uint8_rgb(x, mean, std), Masks(everything, masks.targets), grid, p)),
        ("context", with_blocks(None)),
        ("decoded targets", with_blocks(decoded(gather_tokens(source.features(x), masks.targets), 0))),
    ]
    predicted = source.predictions(x, masks)
    columns += [(f"predicted, sample {s + 1}", with_blocks(decoded(predicted, 1 + s)))
                for s in range(samples)]
    fig, axes = panel_figure(count, len(columns))
    image_layout(fig, count)
    for row in range(count):
        for col, (title, pictures) in enumerate(columns):
            show_image(axes[row, col], pictures[row], title if row == 0 else "")
    return fig


def write_predictions_png(checkpoint: str | Path, decoder_dir: str | Path, data: str, out: str | Path,
                          images: int = 4, samples: int = 3) -> Path:
    """Write :func:`predictions_figure` to ``out`` (a .png file) atomically; returns the path."""
    check_png_path(out)
    return write_png(png_bytes(predictions_figure(checkpoint, decoder_dir, data, images, samples)), out)
