"""imagejepa: I-JEPA self-supervised pretraining of Vision Transformers.

The public API is small: models, the method, the mask sampler, config and trainer, and
loaders for trained encoders (imagejepa checkpoints, official I-JEPA releases, Hugging Face
and timm weights). Conversion between formats lives in :mod:`imagejepa.interop.convert`.
"""

from .config import Config, ConfigError, load_config
from .interop.loading import Preprocess, load_encoder, load_pretrained
from .jepa import IJEPA, build_encoder, build_ijepa
from .masking import Masks, MaskSettings, MultiBlockMaskSampler
from .models import Encoder, Predictor

__version__ = "0.1.0"

__all__ = [
    "IJEPA", "Config", "ConfigError", "Encoder", "MaskSettings", "Masks", "MultiBlockMaskSampler",
    "Predictor", "Preprocess", "build_encoder", "build_ijepa", "load_config", "load_encoder",
    "load_pretrained",
]
