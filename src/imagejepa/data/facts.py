"""What a recipe needs to know about a dataset before training: how many images, how large,
how many channels. Read from a few images spread over the dataset, not from all of them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

SAMPLE = 16  # images decoded to learn the size and the channels


@dataclass(frozen=True)
class DataFacts:
    images: int  # training images
    size: int  # their typical shorter side, in pixels (the median over the sample)
    channels: int  # 1 when every sampled image is grey (or RGB with equal channels), else 3

    def describe(self) -> str:
        colour = "grey" if self.channels == 1 else "colour"
        return f"{self.images:,} {colour} images of about {self.size} pixels"


def data_facts(dataset) -> DataFacts:
    """:class:`DataFacts` of a raw dataset (``len`` and ``load(i) -> (uint8 (C, H, W), label)``);
    unreadable images in the sample are passed over."""
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset holds no images")
    sides, channels = [], 1
    for index in sorted({i * n // SAMPLE for i in range(min(SAMPLE, n))}):
        try:
            image, _ = dataset.load(index)
        except Exception:  # a broken file says nothing about the others
            continue
        sides.append(min(image.shape[-2:]))
        channels = max(channels, 3 if _coloured(image) else 1)
    if not sides:
        raise ValueError(f"none of the {min(SAMPLE, n)} images sampled from the dataset could be read")
    return DataFacts(n, int(statistics.median(sides)), channels)


def _coloured(image) -> bool:
    """Whether a uint8 ``(C, H, W)`` image has colour: three channels that are not all equal
    (grey pictures are often stored as RGB)."""
    if image.shape[-3] < 3:
        return False
    return not (bool((image[0] == image[1]).all()) and bool((image[1] == image[2]).all()))
