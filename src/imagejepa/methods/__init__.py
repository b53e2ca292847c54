"""What the trainer trains, behind one seam (:class:`~imagejepa.methods.base.Method`).

- ``ijepa``: the paper (:mod:`imagejepa.jepa`);
- ``mae``: masked autoencoder, He et al. 2022 (:mod:`.pixels`);
- ``ijepa_pixels``: the paper's ablation, I-JEPA predicting pixels (:mod:`.pixels`);
- ``dino``: self-distillation with multi-crop, Caron et al. 2021 (:mod:`.dino`).

Each says what to build, the views its loader makes, the loss of a batch, the update after
a step and the encoder its probes read; the training loop knows none of them by name.
"""

from __future__ import annotations

import contextlib

import torch

from .base import Method

METHODS = ("ijepa", "mae", "dino", "ijepa_pixels")

__all__ = ["METHODS", "Method", "build_method"]


def build_method(cfg, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Method:
    """The method ``cfg.method.name`` of a :class:`~imagejepa.config.Config`, built on ``device``
    (``"meta"``: shapes only, no memory) in ``dtype``, initialised from the global RNG (the
    trainer draws it again with :meth:`Method.initialise`, the same on any number of ranks)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = _build(cfg)
    return model if dtype is None else model.to(dtype)


def _build(cfg) -> Method:
    name = cfg.method.name
    if name == "ijepa":
        from ..jepa import build_ijepa

        return build_ijepa(cfg)
    if name in ("mae", "ijepa_pixels"):
        from .pixels import build_ijepa_pixels, build_mae

        return build_mae(cfg) if name == "mae" else build_ijepa_pixels(cfg)
    if name == "dino":
        from .dino import build_dino

        return build_dino(cfg)
    raise ValueError(f"method.name: unknown {name!r}; allowed: {', '.join(METHODS)}")
