"""Frozen-encoder inference, faster: opt-in, outside the model.

:func:`optimize` returns a twin of an :class:`~imagejepa.models.Encoder` for feature extraction
(``eval``, ``embed``, the decoder, ``bench embed``): the same parameters (shared, not copied)
under the same state-dict names, each block swapped for an :class:`InferenceBlock` that gives
the same values with less work where no gradient is needed. The model code itself stays plain.
"""

from __future__ import annotations

import torch

from ..models import Encoder
from .block import InferenceBlock

__all__ = ["InferenceBlock", "optimize"]


def optimize(encoder: Encoder) -> Encoder:
    """A twin of ``encoder`` for inference: its parameters shared, its blocks
    :class:`InferenceBlock`, in eval mode without gradients. ``encoder`` itself is left as it
    is, and ``optimize(e).state_dict()`` holds the same names and tensors as ``e.state_dict()``.

    Features are those of ``encoder`` (to bf16 rounding under bf16 autocast, where the blocks
    run oneDNN's packed matmuls on CPUs that have them)."""
    with torch.device("meta"):
        twin = Encoder.from_spec(encoder.spec())
    twin.load_state_dict(encoder.state_dict(), assign=True)  # the same storage, no copy
    twin.set_img_size(encoder.img_size)  # the sin-cos table, recomputed beside the weights
    twin.blocks = torch.nn.ModuleList(InferenceBlock(block) for block in twin.blocks)
    return twin.eval().requires_grad_(False)
