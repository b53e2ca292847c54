"""Atomic checkpoints and safe loading.

A checkpoint is a folder ``checkpoints/step_00000020/`` holding

- ``model.safetensors``: encoder, target encoder and predictor (prefixed ``encoder.``,
  ``target_encoder.``, ``predictor.``), loadable without unpickling anything;
- ``train_state.pt``: optimiser state, step and RNG states; tensors and plain types only,
  read back with ``torch.load(weights_only=True)``;
- ``meta.json``: step, epoch, the resolved config, architecture and normalisation.

The folder is written under a temporary name, flushed to disk and renamed into place;
then the ``latest`` file (the folder's name) is replaced atomically. A crash at any moment
leaves the previous complete checkpoint and a ``latest`` that names a complete one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MODEL_FILE, STATE_FILE, META_FILE, LATEST = "model.safetensors", "train_state.pt", "meta.json", "latest"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(
    checkpoints_dir: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write one checkpoint atomically and point ``latest`` at it; returns its folder."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / checkpoint_name(step)
    tmp = checkpoints_dir / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    replaced = None
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / MODEL_FILE))
        torch.save(train_state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        for name in (MODEL_FILE, STATE_FILE, META_FILE):
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
        if final.exists():  # a re-save of the same step: move the old one aside first
            replaced = checkpoints_dir / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, replaced)
        os.rename(tmp, final)
        _fsync_dir(checkpoints_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if replaced is not None and not final.exists():
            os.rename(replaced, final)
        raise
    pointer_tmp = checkpoints_dir / f".{LATEST}.tmp"
    pointer_tmp.write_text(final.name + "\n")
    _fsync_file(pointer_tmp)
    os.replace(pointer_tmp, checkpoints_dir / LATEST)
    _fsync_dir(checkpoints_dir)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    if keep_last:
        _prune(checkpoints_dir, keep_last, keep=final.name)
    return final


def _prune(checkpoints_dir: Path, keep_last: int, keep: str) -> None:
    complete = sorted(p for p in checkpoints_dir.glob("step_*") if p.is_dir())
    for old in complete[:-keep_last]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_or_checkpoints_dir: Path) -> Path | None:
    """The folder that ``latest`` names, under ``RUN/checkpoints`` or the folder given."""
    d = Path(run_or_checkpoints_dir)
    if (d / "checkpoints").is_dir():
        d = d / "checkpoints"
    pointer = d / LATEST
    if not pointer.is_file():
        return None
    folder = d / pointer.read_text().strip()
    return folder if (folder / MODEL_FILE).is_file() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder, a checkpoints folder or a checkpoint folder -> the checkpoint folder."""
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(
            f"no checkpoint at {path}: expected a checkpoint folder with {MODEL_FILE}, "
            f"or a run folder whose checkpoints/{LATEST} names one"
        )
    return found


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named ``prefix.*``, with ``prefix.`` removed from their names."""
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_tensors(folder: Path, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of ``model.safetensors``; with ``prefix`` only those keys, prefix removed."""
    tensors = load_file(str(Path(folder) / MODEL_FILE))
    return tensors if prefix is None else strip_prefix(tensors, prefix)


def load_train_state(folder: Path) -> dict[str, Any]:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def load_meta(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / META_FILE).read_text())
