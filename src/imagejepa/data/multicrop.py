"""DINO's views (Caron et al. 2021): two global crops and several small local crops of each
image, each with its own augmentations, drawn from an explicit generator (so a resumed run
sees the views an uninterrupted one would).

DINO's augmentations, adapted to the data's channels: a horizontal flip; colour jitter
(brightness 0.4, contrast 0.4, and on colour images saturation 0.2 and hue 0.1) with
probability 0.8; on colour images, greyscale with probability 0.2; Gaussian blur (always on
the first global crop, 0.1 on the second, 0.5 on local crops; sigma 0.1 to 2 at 224 pixels,
scaled to the image); solarisation on the second global crop with probability 0.2.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF

from .transforms import crop_params, match_channels

LOCAL_SHARE = 96 / 224  # DINO's local crops: 96 pixels beside 224


def local_size(size: int, patch: int) -> int:
    """The local crops' side: DINO's share of the global one, whole patches, at least 2."""
    return max(2 * patch, round(size * LOCAL_SHARE / patch) * patch)


class MultiCropTransform:
    """uint8 ``(C, H, W)`` -> ``(globals (2, in_chans, S, S), locals (L, in_chans, s, s))``, normalised."""

    def __init__(self, size: int, patch: int, in_chans: int, mean, std, local_crops: int,
                 global_scale=(0.4, 1.0), local_scale=(0.05, 0.4)):
        self.size, self.small = size, local_size(size, patch)
        self.in_chans, self.mean, self.std = in_chans, list(mean), list(std)
        self.local_crops = local_crops
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)

    def __call__(self, image: torch.Tensor, generator: torch.Generator):
        image = match_channels(image, self.in_chans)
        first = self._view(image, self.size, self.global_scale, 1.0, 0.0, generator)
        second = self._view(image, self.size, self.global_scale, 0.1, 0.2, generator)
        local = [self._view(image, self.small, self.local_scale, 0.5, 0.0, generator)
                 for _ in range(self.local_crops)]
        small = torch.stack(local) if local else torch.empty(0, self.in_chans, self.small, self.small)
        return torch.stack([first, second]), small

    def _view(self, image, size, scale, blur_p, solarize_p, g) -> torch.Tensor:
        u = torch.rand(10, generator=g).tolist()
        top, left, h, w = crop_params(image.shape[-2], image.shape[-1], scale, g)
        x = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
        if u[0] < 0.5:
            x = TF.horizontal_flip(x)
        colour = x.shape[-3] == 3
        if u[1] < 0.8:
            x = TF.adjust_brightness(x, 0.6 + 0.8 * u[2])
            x = TF.adjust_contrast(x, 0.6 + 0.8 * u[3])
            if colour:
                x = TF.adjust_saturation(x, 0.8 + 0.4 * u[4])
                x = TF.adjust_hue(x, -0.1 + 0.2 * u[5])
        if colour and u[6] < 0.2:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if u[7] < blur_p:
            sigma = (0.1 + 1.9 * u[8]) * size / 224
            kernel = min(2 * int(3 * sigma + 0.5) + 1, size - 1 + size % 2)
            if kernel >= 3:
                x = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
        if u[9] < solarize_p:
            x = TF.solarize(x, 128)
        return TF.normalize(TF.to_dtype(x, torch.float32, scale=True), self.mean, self.std)
