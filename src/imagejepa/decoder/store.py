"""Decoder checkpoints: the same atomic, verified folders as pretraining's
(:mod:`imagejepa.checkpoint`), under ``DIR/checkpoints/step_N``: the decoder's weights
(safetensors), its optimiser and step (tensors only), and in ``meta.json`` its
architecture (``decoder``) and what it decodes (the source checkpoint, normalisation)."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .model import PixelDecoder

KEEP_LAST = 2


def save_decoder(out_dir: str | Path, step: int, decoder: PixelDecoder,
                 optimizer: torch.optim.Optimizer | None = None, about: dict | None = None) -> Path:
    """Write the decoder at ``step`` (and its optimiser, to resume); returns the folder."""
    state = {"step": step, "optimizer": optimizer.state_dict() if optimizer is not None else {}}
    meta = {"step": step, "decoder": decoder.spec, **(about or {})}
    return ckpt.save_checkpoint(Path(out_dir) / "checkpoints", step, decoder.state_dict(), state, meta,
                                keep_last=KEEP_LAST)


def load_decoder(path: str | Path, optimizer_for: bool = False
                 ) -> tuple[PixelDecoder, dict, dict | None]:
    """``(decoder in eval mode, meta, train state or None)`` from a decoder folder or one of
    its checkpoints, verified against its manifest first."""
    folder = ckpt.resolve_checkpoint(path)
    meta = ckpt.load_meta(folder)
    if "decoder" not in meta:
        raise ckpt.CheckpointError(f"{folder} is not a decoder checkpoint (its meta.json has no 'decoder')")
    decoder = PixelDecoder.from_spec(meta["decoder"])
    decoder.load_state_dict(ckpt.load_tensors(folder))
    state = ckpt.load_train_state(folder) if optimizer_for else None
    return decoder.eval(), meta, state
