"""imagejepa: I-JEPA self-supervised pretraining of Vision Transformers.

The names below are the pieces for a training loop of your own (``examples/custom_loop.py``)
or for the library's own :class:`Trainer`:

- models: :class:`Encoder` (the ViT), :class:`Predictor`; :func:`build_encoder` from a config;
- the method: :class:`IJEPA` (``forward(images, masks) -> (loss, metrics)``), :func:`build_ijepa`,
  its loss :func:`prediction_loss`, the base class :class:`Method` and the target encoder's
  update :func:`ema_update`;
- masks: :class:`MultiBlockMaskSampler` (``sampler(batch_size, generator) -> Masks``),
  :class:`MaskSettings`, :class:`Masks` (``masks.to(device)``);
- optimisation: :func:`param_groups` (weights decayed, biases and norms not),
  :func:`build_optimizer`, the schedules :func:`warmup_cosine` (learning rate),
  :func:`cosine_increase` (weight decay) and :class:`Schedules` (all three of a run);
- the trainer: :class:`Config`, :func:`load_config`, :class:`ConfigError`, :class:`Trainer`;
- trained encoders: :func:`load_encoder` (imagejepa checkpoints, official I-JEPA releases,
  Hugging Face and timm weights), :func:`load_pretrained`, :class:`Preprocess`;
- probes on frozen features: :func:`extract_features`, :func:`linear_probe`, :func:`knn_probe`,
  :func:`lowshot_probe`, :func:`attentive_probe`.

Conversion between checkpoint formats lives in :mod:`imagejepa.interop.convert`.

The names are imported on first use, so that ``imagejepa.cli`` starts (and takes charge of
stop signals) before PyTorch is loaded; type checkers and editors read the explicit imports
under ``TYPE_CHECKING`` and see the real classes and functions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # the same names as _PUBLIC (tests/test_api.py checks)
    from .config import Config as Config
    from .config import ConfigError as ConfigError
    from .config import load_config as load_config
    from .eval.attentive import attentive_probe as attentive_probe
    from .eval.features import extract_features as extract_features
    from .eval.knn import knn_probe as knn_probe
    from .eval.linear import linear_probe as linear_probe
    from .eval.lowshot import lowshot_probe as lowshot_probe
    from .interop.loading import Preprocess as Preprocess
    from .interop.loading import load_encoder as load_encoder
    from .interop.loading import load_pretrained as load_pretrained
    from .jepa import IJEPA as IJEPA
    from .jepa import build_encoder as build_encoder
    from .jepa import build_ijepa as build_ijepa
    from .jepa import prediction_loss as prediction_loss
    from .masking import Masks as Masks
    from .masking import MaskSettings as MaskSettings
    from .masking import MultiBlockMaskSampler as MultiBlockMaskSampler
    from .methods.base import Method as Method
    from .methods.base import ema_update as ema_update
    from .models import Encoder as Encoder
    from .models import Predictor as Predictor
    from .train.optim import build_optimizer as build_optimizer
    from .train.optim import param_groups as param_groups
    from .train.schedules import Schedules as Schedules
    from .train.schedules import cosine_increase as cosine_increase
    from .train.schedules import warmup_cosine as warmup_cosine
    from .train.trainer import Trainer as Trainer

# Name -> the module (relative to this package) that defines it; read on first use.
_PUBLIC = {
    "Config": "config", "ConfigError": "config", "load_config": "config",
    "attentive_probe": "eval.attentive", "extract_features": "eval.features", "knn_probe": "eval.knn",
    "linear_probe": "eval.linear", "lowshot_probe": "eval.lowshot",
    "Preprocess": "interop.loading", "load_encoder": "interop.loading", "load_pretrained": "interop.loading",
    "IJEPA": "jepa", "build_encoder": "jepa", "build_ijepa": "jepa", "prediction_loss": "jepa",
    "Masks": "masking", "MaskSettings": "masking", "MultiBlockMaskSampler": "masking",
    "Method": "methods.base", "ema_update": "methods.base",
    "Encoder": "models", "Predictor": "models",
    "build_optimizer": "train.optim", "param_groups": "train.optim",
    "Schedules": "train.schedules", "cosine_increase": "train.schedules", "warmup_cosine": "train.schedules",
    "Trainer": "train.trainer",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'imagejepa' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
