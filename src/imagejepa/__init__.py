"""imagejepa: I-JEPA self-supervised pretraining of Vision Transformers.

The public API is small: models, the method, the mask sampler, config and trainer, and a
loader for trained encoders.
"""

from .config import Config, ConfigError, load_config
from .jepa import IJEPA, build_encoder, build_ijepa
from .loading import Preprocess, load_encoder
from .masking import Masks, MaskSettings, MultiBlockMaskSampler
from .models import Encoder, Predictor

__version__ = "0.1.0"

__all__ = [
    "IJEPA", "Config", "ConfigError", "Encoder", "MaskSettings", "Masks", "MultiBlockMaskSampler",
    "Predictor", "Preprocess", "build_encoder", "build_ijepa", "load_config", "load_encoder",
]
