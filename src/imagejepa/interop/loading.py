"""Load an encoder, with the preprocessing it was trained with, from any supported source.

``load_encoder(path_or_name, which="target")`` accepts an imagejepa run or checkpoint
folder, an official I-JEPA ``.pth.tar``, a Hugging Face ``IJepaModel`` folder, a timm
folder or state dict, or the name of a released checkpoint (``vit_huge_patch14.in1k``,
see :mod:`imagejepa.interop.registry`).
"""

from __future__ import annotations

from pathlib import Path

from ..models import Encoder
from .bundle import Preprocess

__all__ = ["Preprocess", "load_encoder", "load_pretrained"]
from .registry import RELEASES, get_release, locate

WHICH = ("target", "context")


def load_encoder(
    path_or_name: str | Path, which: str = "target", *, path: str | Path | None = None
) -> tuple[Encoder, Preprocess]:
    """``(encoder in eval mode, preprocessing)`` from a path or a registry name.

    ``which="target"`` (default) is the EMA target encoder, the one the paper evaluates;
    ``which="context"`` is the encoder trained by gradient descent. For a registry name,
    ``path`` is the downloaded file (or its folder); nothing is downloaded.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if str(path_or_name) in RELEASES:
        return load_pretrained(str(path_or_name), path=path, which=which)
    from .convert import read_model

    bundle = read_model(path_or_name)
    return bundle.build_encoder(which), bundle.preprocess()


def load_pretrained(
    name: str, path: str | Path | None = None, which: str = "target"
) -> tuple[Encoder, Preprocess]:
    """A released checkpoint by name (e.g. ``vit_huge_patch14.in1k``) from a local file.

    The file is found at ``path`` (a file or a folder holding the official file name) or in
    the search folders of :func:`imagejepa.interop.registry.search_dirs`; a missing file raises
    ``FileNotFoundError`` naming the download URL. The architecture read from the file must
    be the one the name stands for.
    """
    from .convert import read_official

    release = get_release(name)
    bundle = read_official(locate(release, path))
    expected = f"{release.arch}/{release.patch_size}@{release.img_size}"
    if bundle.describe() != expected:
        raise ValueError(f"{name} is {expected}, but the file holds {bundle.describe()}")
    return bundle.build_encoder(which), bundle.preprocess()
