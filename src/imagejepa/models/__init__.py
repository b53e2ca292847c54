"""Model definitions only: no optimiser, no distributed code, no device placement."""

from .predictor import Predictor
from .vit import ARCHS, Arch, Encoder, gather_tokens, get_arch

__all__ = ["ARCHS", "Arch", "Encoder", "Predictor", "gather_tokens", "get_arch"]
