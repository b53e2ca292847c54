"""Tar shards in the webdataset layout, read with random access.

A corpus of millions of images is better stored as a few hundred tar files than as a file
per image. A shard ``shard-000000.tar`` holds, per sample, ``KEY.png`` (or ``.jpg``, ...) and
``KEY.cls`` (the label as text), in the layout the ``webdataset`` library reads. Training
draws batches as a function of ``(seed, step)``, so the reader needs random access: it lists
each shard's members once (the tar headers: name, offset, size; the data is not read) and
reads an image by seeking to its offset. Resuming at any step therefore stays exact.

Spec: ``webdataset:PATTERN``, where PATTERN is a glob (``/data/shards/*.tar``) or a range in
braces as webdataset writes it (``/data/shards/shard-{000000..000099}.tar``).
"""

from __future__ import annotations

import glob
import io
import json
import re
import tarfile
from pathlib import Path

import torch

from ..errors import ConfigError
from .base import IMAGENET_MEAN, IMAGENET_STD, read_image

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "ppm", "bmp")
META_FILE = "shards.json"  # written by `imagejepa shard`: class names and the normalisation


def expand(pattern: str) -> list[str]:
    """The shard files a pattern names, sorted: ``{a..b}`` ranges (zero-padded as written),
    then glob wildcards."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if match:
        lo, hi = match.groups()
        width = len(lo)
        names = [pattern[: match.start()] + str(i).zfill(width) + pattern[match.end():]
                 for i in range(int(lo), int(hi) + 1)]
        return sorted(f for name in names for f in expand(name))
    if glob.has_magic(pattern):
        return sorted(glob.glob(pattern))
    return [pattern] if Path(pattern).is_file() else []


class ShardDataset:
    """``load(i) -> (uint8 image (C, H, W), label)`` over the samples of tar shards, in shard
    order then member order."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.shards = expand(pattern)
        if not self.shards:
            raise ConfigError(f"data spec webdataset:{pattern}: no shard file matches")
        # (shard number, member name, data offset, size) of each image, and its label.
        self.entries: list[tuple[int, str, int, int]] = []
        labels = []
        for number, path in enumerate(self.shards):
            for entry, label in _index(number, path):
                self.entries.append(entry)
                labels.append(label)
        if not self.entries:
            raise ConfigError(f"data spec webdataset:{pattern}: the shards hold no images")
        self.labels = torch.tensor(labels, dtype=torch.int64)
        meta = _meta(Path(self.shards[0]).parent)
        self.classes = tuple(meta.get("classes", [str(i) for i in range(int(self.labels.max()) + 1)]))
        self.mean = tuple(meta.get("mean", IMAGENET_MEAN))
        self.std = tuple(meta.get("std", IMAGENET_STD))
        self._files: dict[int, object] = {}  # open shard files of this process (a worker each)

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        number, name, offset, size = self.entries[index]
        f = self._files.get(number)
        if f is None:
            f = self._files[number] = open(self.shards[number], "rb")
        f.seek(offset)
        image = read_image(io.BytesIO(f.read(size)), where=f"{self.shards[number]}:{name}")
        return image, int(self.labels[index])

    def __getstate__(self):  # DataLoader workers open their own files
        return {**self.__dict__, "_files": {}}


def _index(number: int, path: str):
    """``((number, member name, data offset, size), label)`` per image of one shard."""
    images, labels = {}, {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                if ext.lower() in IMAGE_EXTENSIONS:
                    images[key] = (number, member.name, member.offset_data, member.size)
                elif ext == "cls":
                    labels[key] = int(tar.extractfile(member).read().decode().strip())
    except (tarfile.TarError, OSError, ValueError) as e:
        raise ConfigError(f"shard {path} cannot be read: {e}") from None
    for key, entry in images.items():
        if key not in labels:
            raise ConfigError(f"shard {path}: image {entry[1]} has no {key}.cls label")
        yield entry, labels[key]


def _meta(folder: Path) -> dict:
    path = folder / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_shards(dataset, out_dir: Path, per_shard: int = 1000, log=print) -> list[Path]:
    """Pack a raw dataset (``load(i) -> (uint8 image, label)``) into ``out_dir/shard-NNNNNN.tar``
    (PNG images, lossless), with ``shards.json`` (classes, mean, std). Each shard is written
    under a temporary name and renamed when complete."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for start in range(0, len(dataset), per_shard):
        path = out_dir / f"shard-{start // per_shard:06d}.tar"
        tmp = path.with_suffix(".tar.tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, min(start + per_shard, len(dataset))):
                image, label = dataset.load(i)
                array = image.permute(1, 2, 0).numpy()  # (H, W, C)
                if array.shape[2] == 1:
                    array = array[:, :, 0]  # grey
                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format="PNG")
                _add(tar, f"{i:09d}.png", buffer.getvalue())
                _add(tar, f"{i:09d}.cls", str(label).encode())
        tmp.replace(path)
        written.append(path)
        log(f"imagejepa: wrote {path} ({min(per_shard, len(dataset) - start)} images)")
    meta = {"classes": list(getattr(dataset, "classes", ())), "mean": list(dataset.mean),
            "std": list(dataset.std)}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    return written


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
