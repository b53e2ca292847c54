"""imagejepa: I-JEPA self-supervised pretraining of Vision Transformers.

The public API is small: models, the method, the mask sampler, config and trainer, and
loaders for trained encoders (imagejepa checkpoints, official I-JEPA releases, Hugging Face
and timm weights). Conversion between formats lives in :mod:`imagejepa.interop.convert`.

The names are imported on first use, so that ``imagejepa.cli`` starts (and takes charge of
stop signals) before PyTorch is loaded.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Config": "config", "ConfigError": "config", "load_config": "config",
    "Preprocess": "interop.loading", "load_encoder": "interop.loading", "load_pretrained": "interop.loading",
    "IJEPA": "jepa", "build_encoder": "jepa", "build_ijepa": "jepa",
    "Masks": "masking", "MaskSettings": "masking", "MultiBlockMaskSampler": "masking",
    "Encoder": "models", "Predictor": "models",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'imagejepa' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
