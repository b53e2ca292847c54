"""Methods whose targets are pixels: MAE, and the paper's ablation of I-JEPA.

Both predict, for some patches, the patch's pixels normalised by the patch's own mean and
variance (MAE's ``norm_pix_loss``), from an encoder that saw only the other patches:

- ``mae`` (He et al. 2022): 75% of the patches masked uniformly at random; the encoder sees
  the visible quarter; a narrow decoder takes the visible tokens and a mask token at every
  masked position and regresses the masked patches' pixels (mean squared error over them
  only). The encoder itself is evaluated.
- ``ijepa_pixels`` (Assran et al. 2023, Table 7): I-JEPA unchanged (multi-block masks, its
  predictor, its loss, the EMA encoder evaluated) except that the predictor's targets are
  the target blocks' pixels instead of the target encoder's features.

The decoder is :class:`~imagejepa.models.Predictor` with ``out_dim`` = a patch's pixels: the
sequence it runs (context tokens, then a mask token per masked position, with sin-cos
positions) is MAE's decoder sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import mask_settings
from ..jepa import IJEPA, build_encoder, per_dim_std
from ..masking import Masks, MultiBlockMaskSampler, RandomMaskSampler
from ..models import Encoder, Predictor, gather_tokens
from .base import Method

PIXEL_EPS = 1e-6  # MAE's: keeps a flat patch's normalised pixels finite


def patch_pixels(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, N, p*p*C)``: each patch's pixels (raster order of patches,
    ``(row, col, channel)`` inside one), normalised by that patch's mean and variance."""
    B, C, H, W = images.shape
    x = images.float().reshape(B, C, H // patch, patch, W // patch, patch)
    x = x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)
    mean, var = x.mean(dim=-1, keepdim=True), x.var(dim=-1, keepdim=True)
    return (x - mean) / (var + PIXEL_EPS).sqrt()


def _std_metrics(predicted: torch.Tensor, target: torch.Tensor) -> dict:
    return {"target_std": per_dim_std(target).mean(), "pred_std": per_dim_std(predicted).mean()}


class MAE(Method):
    """``forward(images (B, C, H, W), masks, pixels=None) -> (loss, metrics)``; ``masks`` from
    :class:`~imagejepa.masking.RandomMaskSampler` (visible patches as the context, the masked
    ones as one target block). ``pixels`` (default ``images``) is the image the targets are
    read from: only its masked patches count."""

    name = "mae"
    networks = trained = ("encoder", "decoder")
    evaluated = "encoder"
    loss_name = "l2"

    def __init__(self, encoder: Encoder, decoder: Predictor, mask_ratio: float = 0.75):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self._masks = RandomMaskSampler(encoder.grid, mask_ratio)

    def mask_sampler(self) -> RandomMaskSampler:
        return self._masks

    def forward(self, images: torch.Tensor, masks: Masks, pixels: torch.Tensor | None = None):
        target = gather_tokens(patch_pixels(images if pixels is None else pixels, self.encoder.patch_size),
                               masks.targets)  # (B, 1, Km, p*p*C)
        visible = self.encoder(images, keep=masks.context)
        predicted = self.decoder(visible, masks.context, masks.targets).float()
        loss = F.mse_loss(predicted, target)
        with torch.no_grad():
            metrics = {"pred_loss": loss.detach(), **_std_metrics(predicted, target),
                       "context_patches": masks.context.shape[1], "target_patches": masks.targets.shape[2]}
        self.tap.keep(predicted, target)
        return loss, metrics


def _pixel_predictor(cfg, encoder: Encoder, dim: int, depth: int, heads: int) -> Predictor:
    out = encoder.patch_size ** 2 * encoder.in_chans
    return Predictor(encoder.embed_dim, encoder.grid, pred_dim=dim, depth=depth, num_heads=heads, out_dim=out)


def build_mae(cfg) -> MAE:
    encoder = build_encoder(cfg.model)
    me = cfg.method
    return MAE(encoder, _pixel_predictor(cfg, encoder, me.decoder_dim, me.decoder_depth, me.decoder_heads),
               me.mask_ratio)


class IJEPAPixels(IJEPA):
    """I-JEPA whose predictor regresses the target blocks' normalised pixels (its EMA target
    encoder is kept, and evaluated, as I-JEPA's is; the loss no longer reads it)."""

    name = "ijepa_pixels"

    @torch.no_grad()
    def targets(self, images: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """The target blocks' normalised pixels: ``(B, T, Kt, p*p*C)``."""
        return gather_tokens(patch_pixels(images, self.encoder.patch_size), target_idx)


def build_ijepa_pixels(cfg) -> IJEPAPixels:
    encoder = build_encoder(cfg.model)
    m = cfg.model
    predictor = _pixel_predictor(cfg, encoder, m.pred_dim, m.pred_depth, m.pred_heads or encoder.num_heads)
    return IJEPAPixels(encoder, predictor, loss=cfg.optim.loss, anti_collapse=cfg.optim.anti_collapse,
                       anti_collapse_weight=cfg.optim.anti_collapse_weight,
                       masks=MultiBlockMaskSampler(encoder.grid, mask_settings(cfg)))
