"""Load a trained encoder with the preprocessing it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import checkpoint as ckpt
from .config import from_dict
from .jepa import build_encoder
from .models import Encoder

WHICH = ("target", "context")


@dataclass(frozen=True)
class Preprocess:
    """What the encoder expects: ``(in_chans, size, size)`` images normalised by mean/std."""

    size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def model_config(path: str | Path):
    """The ``ModelConfig`` a checkpoint (run folder or checkpoint folder) was trained with."""
    return from_dict(ckpt.load_meta(ckpt.resolve_checkpoint(path))["config"]).model


def load_encoder(path: str | Path, which: str = "target") -> tuple[Encoder, Preprocess]:
    """Encoder weights from an imagejepa checkpoint (run folder or checkpoint folder).

    ``which="target"`` (default) is the EMA target encoder, the one the paper evaluates;
    ``which="context"`` is the encoder trained by gradient descent.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    folder = ckpt.resolve_checkpoint(path)
    meta = ckpt.load_meta(folder)
    cfg = from_dict(meta["config"])
    encoder = build_encoder(cfg.model)
    prefix = "target_encoder" if which == "target" else "encoder"
    encoder.load_state_dict(ckpt.load_tensors(folder, prefix))
    encoder.eval().requires_grad_(False)
    pre = Preprocess(cfg.model.img_size, cfg.model.in_chans, tuple(meta["mean"]), tuple(meta["std"]))
    return encoder, pre
