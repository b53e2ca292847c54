"""Predictor visualisation: a stochastic decoder from patch features to pixels (model.py)."""

from .model import PixelDecoder

__all__ = ["PixelDecoder"]
