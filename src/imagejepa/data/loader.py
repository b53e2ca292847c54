"""The training loader: batches as a pure function of (seed, step).

Step ``s`` of an epoch-``e`` permutation takes the ``s``-th slice of ``randperm(N, seed, e)``
(last partial batch dropped), and each sample's crop is drawn from a generator seeded with
``(seed, e, index)``. So resuming at step ``s`` needs no replay and gives the same batches
an uninterrupted run would, whatever the number of workers.

An image file that cannot be decoded is, with ``on_error="skip"``, replaced by another
sample chosen from ``(seed, epoch, index, attempt)``: which files are broken is a property
of the data, so the substitutes, and a resumed run, stay deterministic. The batch reports
the files it skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..utils.seeds import mix_seed
from ..utils.signals import ignore_stop_signals_in_worker
from .base import BadImageError, DataError

MAX_SUBSTITUTES = 16  # broken files in a row before a batch slot gives up


class _Augmented(Dataset):
    """``dataset[(index, seed)] -> (transformed image, label)``."""

    def __init__(self, raw, transform):
        self.raw, self.transform = raw, transform

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        image, label = self.raw.load(index)
        return self.transform(image, torch.Generator().manual_seed(seed)), label


class _TrainSamples(_Augmented):
    """``dataset[(index, seed)] -> (image, label, skipped)``, ``skipped`` a tuple of
    ``(path, reason)`` for the unreadable files replaced by a substitute."""

    def __init__(self, raw, transform, on_error: str = "skip"):
        super().__init__(raw, transform)
        self.on_error = on_error

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        skipped = []
        for attempt in range(MAX_SUBSTITUTES):
            try:
                image, label = self.raw.load(index)
                break
            except BadImageError as e:
                if self.on_error == "raise":
                    raise
                skipped.append((e.path, e.reason))
                index = mix_seed(seed, attempt, 0x5B1F) % len(self.raw)
        else:
            path, reason = skipped[-1]
            raise DataError(f"{MAX_SUBSTITUTES} unreadable images in a row; the last: {path}: {reason}")
        return self.transform(image, torch.Generator().manual_seed(seed)), label, tuple(skipped)


def _collate(samples):
    """``[(image, label, skipped)]`` -> ``(images (B, C, S, S), labels (B,), [skipped...])``."""
    images, labels = default_collate([(image, label) for image, label, _ in samples])
    return images, labels, [s for *_, skipped in samples for s in skipped]


class _StepBatches(Sampler):
    """Yields, for step = start, start + 1, ..., the batch's ``[(index, sample_seed), ...]``:
    of the global batch of ``batch_size`` samples, the ``rank``-th of ``world_size`` equal parts."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, rank: int = 0,
                 world_size: int = 1):
        self.n, self.batch_size, self.seed, self.start_step = n, batch_size, seed, start_step
        self.steps_per_epoch = n // batch_size
        local = batch_size // world_size
        self.part = slice(rank * local, (rank + 1) * local)

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0xDA7A))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step, epoch, perm = self.start_step, -1, None
        while True:
            e, pos = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            indices = perm[pos * self.batch_size : (pos + 1) * self.batch_size][self.part].tolist()
            yield [(i, mix_seed(self.seed, epoch, i)) for i in indices]
            step += 1


class TrainLoader:
    """Endless iterator of ``(images (b, C, S, S), labels (b,), skipped)`` starting at
    ``start_step``; ``skipped`` lists ``(path, reason)`` of the files replaced in this batch.

    ``batch_size`` is the global batch ``B``; with ``world_size`` processes each gets its
    ``rank``-th part, ``b = B / world_size`` samples, with the crops one process would draw."""

    def __init__(self, raw, transform, batch_size: int, seed: int, num_workers: int = 0,
                 start_step: int = 0, pin_memory: bool = False, on_error: str = "skip",
                 rank: int = 0, world_size: int = 1):
        if len(raw) < batch_size:
            raise ValueError(f"dataset has {len(raw)} images, fewer than one batch of {batch_size}")
        if batch_size % world_size:
            raise ValueError(f"a global batch of {batch_size} does not split over {world_size} processes")
        self.sampler = _StepBatches(len(raw), batch_size, seed, start_step, rank, world_size)
        self.loader = DataLoader(
            _TrainSamples(raw, transform, on_error),
            batch_sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=pin_memory,
            persistent_workers=False,
            worker_init_fn=ignore_stop_signals_in_worker,
        )

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def __iter__(self):
        batches = iter(self.loader)
        try:
            yield from batches
        finally:
            # Stop the workers now, on errors too (a traceback can keep the iterator alive,
            # and workers ignore SIGTERM, so they must be told to exit; see train/preempt.py).
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()


def images_at(raw, indices, transform) -> torch.Tensor:
    """The images at ``indices`` (a sequence of ints) through ``transform``: ``(n, C, H, W)``;
    an in-memory dataset's in one batched call."""
    held = getattr(raw, "images", None)
    if held is not None:
        return transform(held[torch.as_tensor(indices, dtype=torch.long)])
    return torch.stack([transform(raw.load(int(i))[0]) for i in indices])


def eval_batches(raw, transform, batch_size: int = 256, num_workers: int = 0):
    """``(images, labels)`` over a whole dataset in order, deterministic transform."""
    images = getattr(raw, "images", None)
    if images is not None:  # in memory: transform whole batches at once
        for start in range(0, len(raw), batch_size):
            yield transform(images[start : start + batch_size]), raw.labels[start : start + batch_size]
        return
    loader = DataLoader(
        _Augmented(raw, transform),
        batch_size=batch_size,
        sampler=[(i, 0) for i in range(len(raw))],
        num_workers=num_workers,
    )
    yield from loader
