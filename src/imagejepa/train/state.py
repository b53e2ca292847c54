"""What a checkpoint of a training run holds, and putting it back.

Weights of the method's networks (``model.networks``), optimiser state, the step, torch's
RNG state and the training time so far; the loader, masks and schedules need nothing else,
being functions of ``(seed, step)``. One process and DDP write it whole (single folder); a
run sharded by FSDP2 or HSDP writes each rank's shards (torch.distributed.checkpoint). Either
kind resumes on any number of processes with any strategy: single-folder state is spread
into shards, sharded state is resharded."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._pytree import tree_map

from .. import checkpoint as ckpt
from ..distributed import is_sharded


def gather_training_state(model, optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, optimiser state)`` of a model held whole (one process, DDP), for a
    single-folder checkpoint (a sharded model writes a sharded one instead)."""
    tensors = {f"{name}.{k}": v for name in model.networks
               for k, v in getattr(model, name).state_dict().items()}
    return tensors, optimizer.state_dict()


def snapshot(tensors: dict[str, torch.Tensor], optimizer_state: dict) -> tuple[dict, dict]:
    """Copies on the CPU of the state to save, which training may change from now on."""
    copy = lambda t: t.detach().to("cpu", copy=True) if isinstance(t, torch.Tensor) else t  # noqa: E731
    return {k: copy(v) for k, v in tensors.items()}, tree_map(copy, optimizer_state)


class BackgroundWriter:
    """Writes one checkpoint at a time in a thread while training goes on: :meth:`submit`
    waits for the previous write first, :meth:`wait` for the current one, and either raises
    the error a write ended with (the checkpoint before it is intact: writes are atomic)."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write: Callable[[], object]) -> None:
        self.wait()

        def run() -> None:
            try:
                write()
            except BaseException as e:  # noqa: BLE001 - raised in the training thread by wait()
                self._error = e

        self._thread = threading.Thread(target=run, name="imagejepa-checkpoint-writer")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def save_sharded_training_state(tmp: Path, step: int, model, optimizer, processes, train_seconds: float,
                                meta: dict, keep_last: int | None, keep_every: int | None,
                                previous: Path | None, background: BackgroundWriter | None = None) -> Path:
    """A sharded checkpoint of ``step``, every rank writing its own shards into ``tmp`` (the
    same temporary folder on every rank); rank 0 completes it. A collective; returns its
    folder. With ``background`` the shards are copied to the CPU now and written, hashed and
    completed by ``background``'s thread on every rank while training goes on."""
    from ..distributed import merged_on_main
    from ..distributed.sharded import checkpoint_group, save_shards, written_shards

    state = {"step": step, "torch_rng": torch.get_rng_state(), "train_seconds": train_seconds}
    final = tmp.parent / ckpt.checkpoint_name(step)

    def complete(future=None) -> None:
        if future is not None:
            future.result()
        mine = ckpt.file_entries(tmp, [str(p.relative_to(tmp)) for p in written_shards(tmp / ckpt.SHARDS)])
        entries = merged_on_main(processes, mine, checkpoint_group() if future is not None else None)
        if not processes.is_main:
            return
        try:
            ckpt.finish_sharded_checkpoint(tmp, step, entries, state, {**meta, "sharded": True},
                                           keep_last, keep_every)
        except OSError as e:
            raise ckpt.CheckpointError(f"could not write the checkpoint of step {step}: {e}; the previous "
                                       f"checkpoint ({previous or 'none'}) is intact") from e

    if background is None:
        save_shards(model, optimizer, tmp / ckpt.SHARDS)
        complete()
    else:
        background.wait()  # one write in flight at most
        future = save_shards(model, optimizer, tmp / ckpt.SHARDS, background=True)
        background.submit(lambda: complete(future))
    return final


def save_training_state(checkpoints_dir: Path, step: int, tensors: dict[str, torch.Tensor],
                        optimizer_state: dict, train_seconds: float, meta: dict, keep_last: int | None,
                        keep_every: int | None, previous: Path | None) -> Path:
    """Write the checkpoint of ``step``; on a write error the previous one (``previous``) is
    intact and :class:`~imagejepa.checkpoint.CheckpointError` says so."""
    state = {
        "step": step,
        "optimizer": optimizer_state,
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


def find_resume_point(run_dir: Path, fallback: bool, warn, verify=ckpt.verify_checkpoint) -> Path:
    """The checkpoint folder ``--resume`` continues from (see ``checkpoint.find_checkpoint``)."""
    try:
        return ckpt.find_checkpoint(run_dir, fallback=fallback, warn=warn, verify=verify)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--resume: {e}") from None
    except ckpt.CheckpointError as e:
        raise ckpt.CheckpointError(
            f"--resume: {e}. Add --fallback to continue from the newest checkpoint that passes"
        ) from None


def load_training_state(folder: Path, model, optimizer) -> tuple[int, float]:
    """Load weights and optimiser state from ``folder``; returns ``(step, train_seconds)``."""
    state = ckpt.load_train_state(folder)
    if ckpt.is_sharded_checkpoint(folder):  # each rank reads the shards it holds now
        from ..distributed.sharded import load_shards

        load_shards(model, optimizer, folder / ckpt.SHARDS)
    elif is_sharded(model):  # every rank reads the whole state and keeps its shards
        from ..distributed.sharded import load_full_model_state, load_full_optimizer_state

        load_full_model_state(model, ckpt.load_tensors(folder))
        load_full_optimizer_state(model, optimizer, state["optimizer"])
    else:
        tensors = ckpt.load_tensors(folder)
        for name in model.networks:
            getattr(model, name).load_state_dict(ckpt.strip_prefix(tensors, name))
        optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), float(state.get("train_seconds", 0.0))
