"""What a checkpoint of a training run holds, and putting it back.

Weights of the three networks, optimiser state, the step, torch's RNG state and the training
time so far; the loader, masks and schedules need nothing else, being functions of
``(seed, step)``. None of it depends on the number of processes, so a run saved by N
processes resumes on M."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint as ckpt

NETWORKS = ("encoder", "target_encoder", "predictor")


def save_training_state(checkpoints_dir: Path, step: int, model, optimizer, train_seconds: float,
                        meta: dict, keep_last: int | None, keep_every: int | None,
                        previous: Path | None) -> Path:
    """Write the checkpoint of ``step``; on a write error the previous one (``previous``) is
    intact and :class:`~imagejepa.checkpoint.CheckpointError` says so."""
    tensors = {f"{name}.{k}": v for name in NETWORKS for k, v in getattr(model, name).state_dict().items()}
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "train_seconds": train_seconds,
    }
    try:
        return ckpt.save_checkpoint(checkpoints_dir, step, tensors, state, meta,
                                    keep_last=keep_last, keep_every=keep_every)
    except OSError as e:  # disk full, quota, permissions: stop, losing nothing saved so far
        raise ckpt.CheckpointError(
            f"could not write the checkpoint of step {step}: {e}; the previous "
            f"checkpoint ({previous or 'none'}) is intact"
        ) from e


def find_resume_point(run_dir: Path, fallback: bool, warn) -> Path:
    """The checkpoint folder ``--resume`` continues from (see ``checkpoint.find_checkpoint``)."""
    try:
        return ckpt.find_checkpoint(run_dir, fallback=fallback, warn=warn)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--resume: {e}") from None
    except ckpt.CheckpointError as e:
        raise ckpt.CheckpointError(
            f"--resume: {e}. Add --fallback to continue from the newest checkpoint that passes"
        ) from None


def load_training_state(folder: Path, model, optimizer) -> tuple[int, float]:
    """Load weights and optimiser state from ``folder``; returns ``(step, train_seconds)``."""
    tensors = ckpt.load_tensors(folder)
    for name in NETWORKS:
        getattr(model, name).load_state_dict(ckpt.strip_prefix(tensors, name))
    state = ckpt.load_train_state(folder)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), float(state.get("train_seconds", 0.0))
