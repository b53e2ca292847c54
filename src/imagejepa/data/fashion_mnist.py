"""Fashion-MNIST from its four IDX files; never touches the network.

Looked up, in order: the folder in the data spec (``fashion-mnist:DIR``), ``$IMAGEJEPA_DATA``,
and ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
Plain and gzipped IDX files are both read. ``fashion-mnist:train=N,test=M`` (after the
folder, if any: ``fashion-mnist:DIR,train=N``) keeps the first N training and M test images
(a quick benchmark's subsets).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from .base import TensorImageDataset

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MEAN, STD = (0.2860,), (0.3530,)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (plain or ``.gz``) -> numpy array of its declared shape (uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(*dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def candidate_dirs(explicit: str | None) -> list[Path]:
    if explicit:
        return [Path(explicit)]
    dirs = []
    if os.environ.get("IMAGEJEPA_DATA"):
        dirs.append(Path(os.environ["IMAGEJEPA_DATA"]))
    dirs.append(DEBIAN_DIR)
    return dirs


def locate(explicit: str | None, train: bool) -> tuple[Path, Path] | None:
    for folder in candidate_dirs(explicit):
        found = [_find(folder, stem) for stem in FILES[train]]
        if all(found):
            return found[0], found[1]
    return None


def parse_options(arg: str | None) -> tuple[str | None, dict[str, int]]:
    """``"DIR,train=N,test=M"`` -> ``(DIR or None, {"train": N, "test": M})``; ValueError if bad."""
    folder, sizes = None, {}
    for item in (arg or "").split(","):
        key, eq, value = item.partition("=")
        if not eq:
            if item and folder is not None:
                raise ValueError(f"two folders given: {folder!r} and {item!r}")
            folder = item or folder
            continue
        if key not in ("train", "test") or not value.isdigit() or int(value) < 1:
            raise ValueError(f"option {item!r}: allowed: train=N, test=M (N, M >= 1)")
        sizes[key] = int(value)
    return folder, sizes


def load_fashion_mnist(spec_arg: str | None = None, train: bool = True) -> TensorImageDataset:
    """The train (60k) or test (10k) split as uint8 ``(N, 1, 28, 28)`` images with labels
    (``spec_arg``: the data spec's folder and options, see the module docstring)."""
    folder, sizes = parse_options(spec_arg)
    paths = locate(folder, train)
    if paths is None:  # nothing is downloaded at run time: say where to get the files
        searched = ", ".join(str(d) for d in candidate_dirs(folder))
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files ({', '.join(FILES[train])}[.gz]) not found in {searched}. "
            "Install them with `apt-get install dataset-fashion-mnist`, or put the four files in "
            "a folder and use --data fashion-mnist:DIR or IMAGEJEPA_DATA=DIR"
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    keep = sizes.get("train" if train else "test")
    images = torch.from_numpy(np.array(images[:keep]))[:, None]
    labels = torch.from_numpy(np.array(labels[:keep], dtype=np.int64))
    return TensorImageDataset(images, labels, CLASSES, MEAN, STD)
