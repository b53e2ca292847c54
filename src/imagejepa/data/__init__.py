"""Datasets named by a data spec, transforms, and the deterministic training loader.

Data specs: ``fashion-mnist[:DIR]``, ``imagefolder:PATH``, ``webdataset:PATTERN`` (tar
shards, see shards.py), ``synthetic``, ``scenes:count`` and ``scenes:dist`` (rendered
Clevr-like scenes, see scenes.py). For an image folder the training split is ``PATH``
itself or ``PATH/train`` and the test split ``PATH/val`` or ``PATH/test`` where they exist;
shards are one split, the one named by the pattern.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ..errors import ConfigError
from .base import BadImageError, DataError, ImageFolderDataset, TensorImageDataset, channel_stats
from .loader import TrainLoader, eval_batches, images_at
from .transforms import EvalTransform, TrainTransform

KINDS = ("fashion-mnist", "imagefolder", "webdataset", "synthetic", "scenes")


class DataSpec(NamedTuple):
    kind: str
    arg: str | None


def parse_data_spec(spec: str) -> DataSpec:
    kind, _, arg = spec.partition(":")
    if kind not in KINDS:
        raise ConfigError(
            f"data spec {spec!r}: unknown dataset {kind!r}; allowed: "
            "fashion-mnist[:DIR][,train=N,test=M], imagefolder:PATH, webdataset:PATTERN, synthetic, "
            "scenes:count, scenes:dist"
        )
    if kind == "imagefolder" and not arg:
        raise ConfigError("data spec 'imagefolder' needs a folder: imagefolder:PATH")
    if kind == "webdataset" and not arg:
        raise ConfigError("data spec 'webdataset' needs the shards, e.g. "
                          "webdataset:/data/shard-{000000..000009}.tar")
    if kind in ("scenes", "fashion-mnist"):
        from .fashion_mnist import parse_options as fashion_options
        from .scenes import parse_options as scene_options

        try:
            scene_options(arg or "") if kind == "scenes" else fashion_options(arg)
        except ValueError as e:
            raise ConfigError(f"data spec {spec!r}: {e}") from None
    if kind == "synthetic" and arg:
        raise ConfigError(f"data spec {spec!r}: 'synthetic' takes no argument")
    return DataSpec(kind, arg or None)


def check_data_path(spec: str) -> None:
    """Fail fast (before any model is built) when the spec names a folder that is missing."""
    kind, arg = parse_data_spec(spec)
    if kind == "webdataset":
        from .shards import expand

        if not expand(arg):
            raise ConfigError(f"data.dataset={spec!r}: no shard file matches {arg}")
        return
    if kind == "scenes":
        return
    if kind == "fashion-mnist":
        from .fashion_mnist import parse_options

        arg = parse_options(arg)[0]
    if arg is not None and not Path(arg).is_dir():
        what = "image folder" if kind == "imagefolder" else "Fashion-MNIST folder"
        raise ConfigError(f"data.dataset={spec!r}: {what} not found: {arg}")


def _imagefolder_split(root: Path, train: bool) -> Path:
    names = ("train",) if train else ("val", "test")
    for name in names:
        if (root / name).is_dir():
            return root / name
    if train:
        return root
    raise FileNotFoundError(f"image folder {root} has no 'val' or 'test' subfolder for evaluation")


def build_dataset(spec: str, train: bool = True):
    """The raw dataset of a spec (uint8 images + labels) for the train or test split."""
    kind, arg = parse_data_spec(spec)
    if kind == "fashion-mnist":
        from .fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(arg, train=train)
    if kind == "webdataset":
        from .shards import ShardDataset

        return ShardDataset(arg)
    if kind == "scenes":
        from .scenes import load_scenes

        return load_scenes(arg, train=train)
    if kind == "synthetic":
        from .synthetic import make_synthetic

        return make_synthetic(num_images=2000 if train else 500, seed=0 if train else 1)
    root = Path(arg)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return ImageFolderDataset(str(_imagefolder_split(root, train)))


__all__ = [
    "BadImageError", "DataError", "DataSpec", "check_data_path",
    "EvalTransform", "ImageFolderDataset", "TensorImageDataset", "TrainLoader",
    "TrainTransform", "build_dataset", "channel_stats", "eval_batches", "images_at", "parse_data_spec",
]
