"""``imagejepa bench data``: how many images per second one loader worker decodes and crops.

A GPU consumes images at its training rate; divided by what one worker delivers, that is
the number of loader workers (``data.num_workers``) it needs, per GPU. One worker's rate is
measured in this process (what each worker process does: read, decode, RandomResizedCrop,
normalise); with ``workers``, the whole loader is timed with that many worker processes too,
to see how it scales on this machine.
"""

from __future__ import annotations

import math
import time

import torch

from ..data import TrainLoader, TrainTransform, build_dataset, channel_stats
from .roofline import machine_report


def _images_per_s(dataset, transform, batch_size: int, batches: int, workers: int) -> float:
    loader = TrainLoader(dataset, transform, batch_size=batch_size, seed=0, num_workers=workers)
    stream = iter(loader)
    next(stream)  # start-up (worker processes, file handles) is not counted
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    seconds = time.perf_counter() - start
    stream.close()
    return batch_size * batches / seconds


def bench_data(spec: str, img_size: int = 224, in_chans: int = 3, batch_size: int = 32,
               batches: int = 8, workers: tuple[int, ...] = ()) -> dict:
    dataset = build_dataset(spec, train=True)
    if len(dataset) < batch_size:
        batch_size = len(dataset)
    transform = TrainTransform(img_size, in_chans, channel_stats(dataset.mean, in_chans),
                               channel_stats(dataset.std, in_chans), (0.3, 1.0))
    one = _images_per_s(dataset, transform, batch_size, batches, 0)
    scaling = {str(w): round(_images_per_s(dataset, transform, batch_size, batches, w), 1) for w in workers}
    return {
        "bench": "data",
        **machine_report(torch.device("cpu")),
        "data": spec,
        "images": len(dataset),
        "img_size": img_size,
        "images_per_s_one_worker": round(one, 1),
        "workers_per_1000_images_per_s": math.ceil(1000 / one),
        "images_per_s_by_workers": scaling,
        "note": "decode + RandomResizedCrop + normalise, per loader worker; a GPU training at R "
                "images/s needs about R / images_per_s_one_worker workers (data.num_workers)",
    }
