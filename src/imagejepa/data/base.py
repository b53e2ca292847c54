"""Raw image datasets: ``load(i) -> (uint8 image (C, H, W), label)``, plus class names and
the normalisation statistics that suit them. Transforms are applied by the loader."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import IO

import numpy as np
import torch

from ..errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def channel_stats(stats: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Per-channel mean or std for a model with ``in_chans`` channels."""
    if len(stats) == in_chans:
        return tuple(stats)
    if len(stats) == 1:
        return tuple(stats) * in_chans
    if in_chans == 1:
        return (sum(stats) / len(stats),)
    raise ValueError(f"no normalisation for {in_chans} channels from {len(stats)}-channel stats")


class BadImageError(DataError):
    """One image file could not be decoded; the message starts with its path."""

    def __init__(self, path: str, reason: str | None = None):
        # One argument: a finished message (how DataLoader re-raises it from a worker).
        super().__init__(path if reason is None else f"{path}: {reason}")
        self.path, self.reason = path, reason


GREY_MODES = ("1", "L", "LA", "F")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def pil_to_uint8(image) -> torch.Tensor:
    """A PIL image of any mode -> uint8 ``(1, H, W)`` (grey) or ``(3, H, W)`` (colour).

    16-bit (and 32-bit integer) grey is scaled from 0..65535 to 0..255 instead of clipped;
    alpha is dropped; CMYK, palette, YCbCr and the rest are converted to RGB.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.float64)
        array = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
    elif image.mode in GREY_MODES:
        array = np.asarray(image.convert("L"))
    else:
        array = np.asarray(image.convert("RGB"))
    tensor = torch.from_numpy(array.copy())
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def read_image(path: str | os.PathLike | IO[bytes], where: str | None = None) -> torch.Tensor:
    """Decode an image file (a path, or a file object named ``where``) fully -> uint8
    ``(C, H, W)``; :class:`BadImageError` naming the file when it is empty, truncated, not an
    image, or otherwise undecodable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncation shows up here, not later
            return pil_to_uint8(ImageOps.exif_transpose(image))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise BadImageError(where or str(path), reason) from e


class TensorImageDataset:
    """Images held in memory: uint8 ``(N, C, H, W)`` and int64 labels ``(N,)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes, mean, std):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be uint8 (N, C, H, W)")
        self.images, self.labels = images, labels
        self.classes = tuple(classes)
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return self.images.shape[0]

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class ImageFolderDataset:
    """``PATH/class_name/*.jpg`` listed by torchvision's ``ImageFolder`` (by file extension);
    decoded on demand by :func:`read_image`."""

    def __init__(self, root: str):
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(root)
        self.classes = tuple(self.folder.classes)
        self.labels = torch.tensor(self.folder.targets, dtype=torch.int64)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def __len__(self) -> int:
        return len(self.folder)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """uint8 ``(1 or 3, H, W)`` and the label; :class:`BadImageError` for a broken file."""
        path, label = self.folder.samples[index]
        return read_image(path), label
