"""A generated, labelled, deterministic image set for tests and smoke runs.

Class ``k`` is a sinusoidal grating at angle ``k * pi / num_classes`` with a class-specific
colour tint, at a random phase and frequency jitter, plus pixel noise. Easy to separate with
good features, but not a copy of any class template: every image differs.
"""

from __future__ import annotations

import math

import torch

from .base import TensorImageDataset


def make_synthetic(
    num_images: int = 2000,
    num_classes: int = 10,
    size: int = 32,
    channels: int = 3,
    seed: int = 0,
) -> TensorImageDataset:
    """``num_images`` uint8 images ``(N, channels, size, size)``, labels cycling over classes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_images) % num_classes
    labels = labels[torch.randperm(num_images, generator=g)]
    angle = labels.float() * math.pi / num_classes
    freq = 2 * math.pi * (3 + torch.rand(num_images, generator=g)) / size
    phase = 2 * math.pi * torch.rand(num_images, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    coord = xx * angle.cos()[:, None, None] + yy * angle.sin()[:, None, None]
    grating = torch.sin(coord * freq[:, None, None] + phase[:, None, None])  # (N, S, S)
    tint_angle = 2 * math.pi * labels.float() / num_classes
    tint = torch.stack([(tint_angle + c * 2 * math.pi / 3).cos() for c in range(channels)], 1)
    images = 0.5 + 0.3 * grating[:, None] + 0.1 * tint[:, :, None, None]
    images = images + 0.05 * torch.randn(images.shape, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    classes = tuple(f"class_{k}" for k in range(num_classes))
    return TensorImageDataset(images, labels, classes, (0.5,) * channels, (0.25,) * channels)
