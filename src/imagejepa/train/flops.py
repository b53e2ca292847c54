"""Training FLOPs counted, not timed: ``torch.utils.flop_counter`` on a 'meta' copy of the
model (shapes alone, no memory, no time), so a budget in FLOPs gives the same number of
steps on any machine, busy or idle, and on any number of processes."""

from __future__ import annotations

import copy

import torch
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

from ..masking import Masks
from ..utils.seeds import mix_seed
from .step import MASK_STREAM

FLOP_SAMPLES = 8  # the steps whose masks are counted: I-JEPA's context length varies by step


def count_train_flops(model, batch_shapes, masks: Masks | None, precision: str = "fp32") -> int:
    """FLOPs of one forward and backward of ``model`` on a batch of ``batch_shapes`` (a shape,
    or a tuple of shapes for methods that take several views) with ``masks``."""
    meta_model = copy.deepcopy(model).to("meta")
    batch = _meta_batch(batch_shapes)
    if masks is not None:
        masks = masks.to("meta")
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = meta_model(batch, masks)
        loss.backward()
    return counter.get_total_flops()


def _meta_batch(shapes):
    """A shape -> a meta tensor; a tuple of shapes -> a tuple of them."""
    if all(isinstance(n, int) for n in shapes):
        return torch.empty(tuple(shapes), device="meta")
    return tuple(_meta_batch(s) for s in shapes)


def step_flops(model, view, batch_size: int, seed: int, mask_stream: int) -> float:
    """Mean training FLOPs of one optimiser step over the global batch of ``batch_size``:
    ``view`` is one sample as the loader makes it (a tensor or a tuple of tensors); the masks
    are those of the run's first :data:`FLOP_SAMPLES` steps (a function of ``seed``)."""
    shapes = tree_map(lambda t: (batch_size, *t.shape), view)
    sampler = model.mask_sampler()
    if sampler is None:
        return float(count_train_flops(model, shapes, None))
    total = 0
    for step in range(FLOP_SAMPLES):
        g = torch.Generator().manual_seed(mix_seed(seed, step, mask_stream))
        total += count_train_flops(model, shapes, sampler(batch_size, g))
    return total / FLOP_SAMPLES


def config_step_flops(cfg, model, dataset, views) -> float:
    """:func:`step_flops` of a run: its global batch, its seed's masks, and the views ``views``
    makes of the dataset's first image."""
    image, _ = dataset.load(0)
    view = views(image, torch.Generator().manual_seed(0))
    return step_flops(model, view, cfg.data.batch_size, cfg.train.seed, MASK_STREAM)
