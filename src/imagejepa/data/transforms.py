"""Image transforms on uint8 tensors, built on ``torchvision.transforms.v2.functional``.

The training crop draws its parameters from an explicit ``torch.Generator`` (seeded per
sample by the loader), so augmentation is a pure function of (seed, epoch, index) and a
resumed run sees exactly the crops an uninterrupted run would have seen.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as TF

# I-JEPA crops: RandomResizedCrop scale (0.3, 1.0), the usual ratio (3/4, 4/3), no flip.
CROP_RATIO = (3 / 4, 4 / 3)


def match_channels(image: torch.Tensor, in_chans: int) -> torch.Tensor:
    """``(..., C, H, W)`` uint8 -> ``(..., in_chans, H, W)``: grey repeated, colour made grey."""
    c = image.shape[-3]
    if c == in_chans:
        return image
    if c == 4:  # RGBA: drop alpha
        return match_channels(image[..., :3, :, :], in_chans)
    if c == 1 and in_chans == 3:
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:])
    if c == 3 and in_chans == 1:
        return TF.rgb_to_grayscale(image, num_output_channels=1)
    raise ValueError(f"cannot convert a {c}-channel image to {in_chans} channels")


def crop_params(
    height: int, width: int, scale: tuple[float, float], generator: torch.Generator
) -> tuple[int, int, int, int]:
    """RandomResizedCrop box ``(top, left, h, w)``: area fraction in ``scale``, log-uniform ratio.

    Same rule as torchvision's ``RandomResizedCrop.get_params`` (ten tries, then a centre
    crop), but drawing from ``generator`` instead of the global RNG.
    """
    area = height * width
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        u = torch.rand(4, generator=generator).tolist()
        target_area = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        ratio = math.exp(log_lo + u[1] * (log_hi - log_lo))
        w = int(round(math.sqrt(target_area * ratio)))
        h = int(round(math.sqrt(target_area / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[2] * (height - h + 1))
            left = int(u[3] * (width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        w, h = width, int(round(width / CROP_RATIO[0]))
    elif in_ratio > CROP_RATIO[1]:
        h, w = height, int(round(height * CROP_RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TrainTransform:
    """uint8 ``(C, H, W)`` -> normalised float ``(in_chans, size, size)`` with a random crop."""

    def __init__(self, size: int, in_chans: int, mean, std, crop_scale=(0.3, 1.0)):
        self.size, self.in_chans = size, in_chans
        self.mean, self.std = list(mean), list(std)
        self.crop_scale = tuple(crop_scale)

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        image = match_channels(image, self.in_chans)
        top, left, h, w = crop_params(image.shape[-2], image.shape[-1], self.crop_scale, generator)
        image = TF.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        return TF.normalize(TF.to_dtype(image, torch.float32, scale=True), self.mean, self.std)


class EvalTransform:
    """uint8 ``(..., C, H, W)`` -> normalised float ``(..., in_chans, size, size)``.

    The shorter side is resized to ``size`` and the centre kept (no random crop).
    """

    def __init__(self, size: int, in_chans: int, mean, std):
        self.size, self.in_chans = size, in_chans
        self.mean, self.std = list(mean), list(std)

    def resized(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Channels matched, resized and centre-cropped, still uint8 ``(..., in_chans, size, size)``."""
        image = match_channels(image, self.in_chans)
        if tuple(image.shape[-2:]) != (self.size, self.size):
            image = TF.resize(image, self.size, antialias=True)
            image = TF.center_crop(image, [self.size, self.size])
        return image

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        image = self.resized(image)
        return TF.normalize(TF.to_dtype(image, torch.float32, scale=True), self.mean, self.std)
