"""The checkpoints Meta released with I-JEPA, by name, and where to find them on disk.

``load_pretrained("vit_huge_patch14.in1k", path=...)`` reads the official ``.pth.tar``
safely and returns the *target* encoder (the one the paper evaluates) with ImageNet
normalisation. Nothing is downloaded: a missing file is an error that says where to get it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.base import IMAGENET_MEAN, IMAGENET_STD

BASE_URL = "https://dl.fbaipublicfiles.com/ijepa/"
ENV_DIR = "IMAGEJEPA_CHECKPOINTS"  # a folder searched for the expected file names


@dataclass(frozen=True)
class Release:
    """One released checkpoint: what it holds and the file it comes in."""

    name: str
    arch: str
    patch_size: int
    img_size: int
    epochs: int  # as listed in the official README (the file names count IN-1k-equivalent epochs)
    data: str
    file_name: str
    pred_depth: int
    pred_dim: int = 384
    linear_probe_top1: float | None = None  # the paper's ImageNet-1k linear probe, where given
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Its Hugging Face port, ``hf-hub:`` + this (the context encoder only, as the ports hold
    # it; its preprocessor says 0.5/0.5, the reader applies ImageNet's normalisation above).
    hub: str | None = None

    @property
    def url(self) -> str:
        return BASE_URL + self.file_name

    @property
    def model(self) -> str:
        return f"{self.arch}/{self.patch_size}@{self.img_size}"

    def to_dict(self) -> dict:
        return {**asdict(self), "url": self.url, "model": self.model}


RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release("vit_huge_patch14.in1k", "vit_huge", 14, 224, 300, "ImageNet-1k",
                "IN1K-vit.h.14-300e.pth.tar", pred_depth=12, linear_probe_top1=79.3,
                hub="facebook/ijepa_vith14_1k"),
        Release("vit_huge_patch16_448.in1k", "vit_huge", 16, 448, 300, "ImageNet-1k",
                "IN1K-vit.h.16-448px-300e.pth.tar", pred_depth=12, linear_probe_top1=81.1,
                hub="facebook/ijepa_vith16_1k"),
        Release("vit_huge_patch14.in22k", "vit_huge", 14, 224, 66, "ImageNet-22k",
                "IN22K-vit.h.14-900e.pth.tar", pred_depth=12, hub="facebook/ijepa_vith14_22k"),
        Release("vit_giant_patch16.in22k", "vit_giant", 16, 224, 44, "ImageNet-22k",
                "IN22K-vit.g.16-600e.pth.tar", pred_depth=16, hub="facebook/ijepa_vitg16_22k"),
    )
}


def get_release(name: str) -> Release:
    if name not in RELEASES:
        raise KeyError(f"unknown pretrained checkpoint {name!r}; known: {', '.join(RELEASES)}")
    return RELEASES[name]


def search_dirs() -> list[Path]:
    """Where a registry name is looked for when no path is given, in order."""
    dirs = [Path(os.environ[ENV_DIR])] if os.environ.get(ENV_DIR) else []
    return dirs + [Path.home() / ".cache" / "imagejepa", Path.cwd()]


def locate(release: Release, path: str | Path | None = None) -> Path:
    """The local file of ``release``: ``path`` itself, ``path/<file name>``, or a search-folder hit."""
    how_to_get = (f"download it from {release.url} (no download is attempted here) and pass its "
                  f"path, or put it in one of these folders")
    if path is not None:
        path = Path(path)
        candidate = path / release.file_name if path.is_dir() else path
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(f"{release.name}: {candidate} not found; download it from {release.url}")
    for folder in search_dirs():
        if (folder / release.file_name).is_file():
            return folder / release.file_name
    where = ", ".join(str(d) for d in search_dirs())
    raise FileNotFoundError(f"{release.name}: {release.file_name} not found; {how_to_get} "
                            f"(${ENV_DIR}, then): {where}")


def match_file_name(path: str | Path) -> Release | None:
    """The release whose official file name ``path`` carries, if any."""
    name = Path(path).name
    return next((r for r in RELEASES.values() if r.file_name == name), None)
