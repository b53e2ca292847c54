"""Raw image datasets: ``load(i) -> (uint8 image (C, H, W), label)``, plus class names and
the normalisation statistics that suit them. Transforms are applied by the loader."""

from __future__ import annotations

from collections.abc import Sequence

import torch

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
    """``PATH/class_name/*.jpg`` through torchvision's ``ImageFolder``; decoded on demand."""

    def __init__(self, root: str):
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(root)
        self.classes = tuple(self.folder.classes)
        self.labels = torch.tensor(self.folder.targets, dtype=torch.int64)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def __len__(self) -> int:
        return len(self.folder)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.transforms.v2.functional import pil_to_tensor

        path, label = self.folder.samples[index]
        image = self.folder.loader(path)  # PIL, converted to RGB by torchvision's loader
        return pil_to_tensor(image), label
