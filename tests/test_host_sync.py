"""No value leaves the device during a training step, proven on a CPU.

On a GPU, every read of a device value on the host (``.item()``, ``bool(t)``, indexing by a
0-dim tensor, a Scalar overload given a tensor, boolean masking) makes the host wait for the
device and empties its queue. A CPU has no such wait, so the steps run here under a dispatch
mode that fails on each operation that would read back: what passes here syncs nowhere on a
GPU (``tests/test_gpu.py`` checks the same with CUDA's own sync debug mode). Drawing the masks
is host work (the collator's, on the CPU beside any GPU) and runs outside the mode.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from imagejepa.config import load_config
from imagejepa.train.trainer import Trainer

from .helpers import TINY_OVERRIDES, quiet
from .test_distributed import free_port

aten = torch.ops.aten
# Operations whose result is a host value read from a tensor, or whose output's size depends on
# a tensor's values (the host must read them to allocate it).
READ_BACK = {aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.equal, aten.nonzero,
             aten.masked_select, aten._unique2, aten.unique_consecutive, aten.unique_dim,
             aten.bincount, aten.repeat_interleave, aten.allclose}
STEPS, NAN_STEP = 5, 2


class NoReadBack(TorchDispatchMode):
    """Fails on every operation that reads a value back to the host, except inside
    :meth:`on_host` (work that runs on the host anyway); counts the operations it saw."""

    def __init__(self):
        super().__init__()
        self.host, self.seen = 0, 0

    @contextlib.contextmanager
    def on_host(self):
        self.host += 1
        try:
            yield
        finally:
            self.host -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.seen += 1
        if not self.host and (func.overloadpacket in READ_BACK or _indexes_by_mask(func, args)):
            raise AssertionError(f"{func} reads a value back to the host inside a training step")
        return func(*args, **kwargs)


def _indexes_by_mask(func, args) -> bool:
    """``x[mask]`` with a boolean mask: its size is the mask's count, read back."""
    if func.overloadpacket not in (aten.index, aten.index_put, aten.index_put_):
        return False
    return any(i is not None and i.dtype == torch.bool for i in args[1])


def test_the_mode_catches_each_kind_of_read_back():
    x = torch.arange(4.0)
    reads = [lambda: x.sum().item(), lambda: bool(x.any()), lambda: x[x > 1], lambda: x[torch.tensor(1)],
             lambda: torch._foreach_lerp_([x.clone()], [x], torch.tensor(0.5)), lambda: torch.equal(x, x)]
    for read in reads:
        with NoReadBack(), pytest.raises(AssertionError, match="reads a value back"):
            read()
    with NoReadBack() as mode:  # what the step does instead
        torch._foreach_lerp_([x.clone()], [x], [torch.tensor(0.5)])
        x.gather(0, torch.tensor([1]))
        torch.where(x.sum() > 0, x.argmax(), -1)
    assert mode.seen > 0


def run_steps(trainer: Trainer) -> tuple[list[dict], NoReadBack, dict[int, bool]]:
    """``STEPS`` steps of ``trainer`` under :class:`NoReadBack`; the loss of step ``NAN_STEP``
    is NaN (``train.on_nan=skip_step``: skipped on the device). Returns the metrics read after
    the steps, the mode, and which of the networks the step updates (by the optimiser or the
    EMA) moved at each step."""
    batches = iter(trainer.loader)
    images = [next(batches)[0] for _ in range(STEPS)]  # loading is the loader's host work
    mode = NoReadBack()
    rank_masks = trainer.stepper.rank_masks

    def masks_on_host(*args):
        with mode.on_host():
            return rank_masks(*args)

    trainer.stepper.rank_masks = masks_on_host
    real_forward = trainer.stepper.forward

    def forward(views, masks):
        loss, metrics = real_forward(views, masks)
        return (loss * float("nan") if step == NAN_STEP else loss), metrics

    trainer.stepper.forward = forward
    model = trainer.model
    updated = {name: next(getattr(model, name).parameters())
               for name in (*model.trained, *(follower for follower, _ in model.ema_pairs))}
    results, moved = [], {}
    for step in range(STEPS):
        before = {name: p.detach().clone() for name, p in updated.items()}
        with mode:
            results.append(trainer.train_step(images[step], step))
        moved[step] = sorted(name for name, p in updated.items() if not torch.equal(before[name], p.detach()))
    return trainer.stepper.read(results), mode, moved


def config(*extra: str):
    # Health metrics (RankMe, per-block losses) on every other step: they run in the step too.
    return load_config(None, TINY_OVERRIDES + ["train.on_nan=skip_step", "monitor.every=2", *extra])


def assert_steps_without_read_back(trainer: Trainer, rows: list[dict], mode: NoReadBack,
                                   moved: dict[int, list[str]]) -> None:
    assert mode.seen > 1000  # the whole step ran under the mode
    assert [r["skipped_step"] for r in rows] == [int(s == NAN_STEP) for s in range(STEPS)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for s, r in enumerate(rows) if s != NAN_STEP)
    if trainer.processes.is_main:  # the health metrics are rank 0's
        assert "rankme" in rows[0] and "rankme" not in rows[1]
    # The optimiser and the EMA moved every network on each finite step, and nothing on the
    # skipped one: decided on the device, without reading the decision back.
    model = trainer.model
    everything = sorted({*model.trained, *(follower for follower, _ in model.ema_pairs)})
    assert moved == {s: [] if s == NAN_STEP else everything for s in range(STEPS)}


@pytest.mark.parametrize("method", ["ijepa", "mae", "dino", "ijepa_pixels"])
def test_steps_of_one_process_read_nothing_back(tmp_path, method):
    trainer = Trainer(config(f"method.name={method}"), tmp_path, log=quiet, warn=quiet)
    assert_steps_without_read_back(trainer, *run_steps(trainer))


def _rank(rank: int, world: int, port: int, strategy: str, folder) -> None:
    from imagejepa.distributed import processes_from_env, start_processes, stop_processes

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    processes = start_processes(processes_from_env(), torch.device("cpu"))
    try:
        trainer = Trainer(config(f"dist.strategy={strategy}", "data.batch_size=16"), folder / "run",
                          log=quiet, warn=quiet, processes=processes)
        if strategy == "fsdp":  # each rank holds a shard: check that it is one
            target = trainer.model.target_encoder.blocks[0].mlp.fc1.weight
            assert target.to_local().shape[0] < target.shape[0]
        assert_steps_without_read_back(trainer, *run_steps(trainer))
        (folder / f"rank{rank}.ok").write_text("ok")
    finally:
        stop_processes(processes)
    # As `imagejepa` does after a group (cli.run): FSDP2's gloo threads may still release the
    # last collective's tensors while the interpreter finalises, which aborts the process.
    os._exit(0)


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_steps_of_two_processes_read_nothing_back(tmp_path, strategy):
    torch.multiprocessing.spawn(_rank, args=(2, free_port(), strategy, tmp_path), nprocs=2)
    assert sorted(p.name for p in tmp_path.glob("rank*.ok")) == ["rank0.ok", "rank1.ok"]
