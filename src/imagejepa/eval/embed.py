"""``imagejepa embed``: features of a dataset written to ``.npy`` or ``.safetensors``.

- ``FILE.safetensors`` holds ``features`` and ``labels``; the file names (image folders)
  and what produced the features are in its metadata.
- ``FILE.npy`` holds the features; ``FILE.labels.npy`` the labels, and for image folders
  ``FILE.names.txt`` one file name per line, in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..utils.files import atomic_write
from .features import FeatureExtractor, FeatureRequest


def sample_names(dataset) -> list[str] | None:
    """File names of an image-folder dataset in index order; None for in-memory data."""
    folder = getattr(dataset, "folder", None)
    samples = getattr(folder, "samples", None)
    return None if samples is None else [str(path) for path, _ in samples]


def _save_npy(array: np.ndarray):
    def write(path: Path) -> None:
        with open(path, "wb") as f:  # a file object: np.save would append .npy to a path
            np.save(f, array)
    return write


def embed_to_file(checkpoint, data_spec: str, out: str | Path, split: str = "test",
                  encoder: str = "target", last_layers: int = 1, patch_tokens: bool = False,
                  device=None, progress: bool = True) -> dict:
    """Extract features and write them; returns a summary (files written, shape)."""
    out = Path(out)
    extractor = FeatureExtractor(checkpoint, data_spec, device=device, progress=progress)
    features, labels = extractor(FeatureRequest(encoder, last_layers, patch_tokens), split)
    features = features.float() if not patch_tokens else features
    names = sample_names(extractor.dataset(split))
    about = {"checkpoint": str(extractor.checkpoint), "data": data_spec, "split": split,
             "encoder": encoder, "last_layers": last_layers, "patch_tokens": patch_tokens}
    out.parent.mkdir(parents=True, exist_ok=True)
    files = [out]
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {"about": json.dumps(about)}
        if names is not None:
            meta["names"] = json.dumps(names)
        tensors = {"features": features.contiguous(), "labels": labels.contiguous()}
        atomic_write(out, lambda p: save_file(tensors, str(p), metadata=meta))
    else:
        stem = out.with_suffix("")
        atomic_write(out, _save_npy(features.numpy()))
        labels_path = Path(f"{stem}.labels.npy")
        atomic_write(labels_path, _save_npy(labels.to(torch.int64).numpy()))
        files.append(labels_path)
        if names is not None:
            names_path = Path(f"{stem}.names.txt")
            atomic_write(names_path, lambda p: p.write_text("\n".join(names) + "\n"))
            files.append(names_path)
    return {**about, "files": [str(f) for f in files], "shape": list(features.shape),
            "dtype": str(features.dtype).removeprefix("torch.")}
