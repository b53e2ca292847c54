"""I-JEPA: predict, from a context block, the target encoder's representations of target blocks.

    targets  = LayerNorm(target_encoder(image))[target blocks]        (no gradient)
    context  = encoder(image[context block])
    predicted = predictor(context, positions of the target blocks)
    loss     = smooth_l1(predicted, targets)   (or L2, as written in the paper)
             + optionally a term against collapse on the context features (anti_collapse.py)

The target encoder is an exponential moving average of the encoder, updated after each
optimiser step with ``momentum`` from the schedule.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F

from .anti_collapse import KINDS as ANTI_COLLAPSE_KINDS
from .anti_collapse import variance_covariance
from .config import mask_settings
from .masking import Masks, MultiBlockMaskSampler
from .methods.base import Method
from .models import Encoder, Predictor, gather_tokens


def per_dim_std(features: torch.Tensor) -> torch.Tensor:
    """``(..., D)`` -> ``(D,)``: std of each dimension over all the leading axes (near 0 for
    every dimension when the representation collapses)."""
    return features.reshape(-1, features.shape[-1]).float().std(dim=0)


PREDICTION_LOSSES = ("smooth_l1", "l2")


def prediction_loss(predicted: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1",
                    reduction: str = "mean") -> torch.Tensor:
    """I-JEPA's loss between ``predicted`` and ``target`` features ``(B, T, K, D)``:
    ``"smooth_l1"`` (the official code's, beta 1) or ``"l2"`` (squared error, as the paper
    writes it); averaged, or per element with ``reduction="none"``."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(predicted, target, beta=1.0, reduction=reduction)
    if kind == "l2":
        return F.mse_loss(predicted, target, reduction=reduction)
    raise ValueError(f"loss must be one of {PREDICTION_LOSSES}, got {kind!r}")


COVARIANCE_SHARE = 0.04  # VICReg's ratio of its covariance and variance coefficients (1 : 25)


class IJEPA(Method):
    """``forward(images (B, C, H, W), masks) -> (loss, metrics)``; ``metrics`` holds the
    scalars ``target_std``, ``pred_std``, ``pred_loss`` (the prediction term alone; with a term
    against collapse, ``anti_collapse``, its unweighted value, too), the patch
    counts. The ``predicted`` and ``target`` features ``(B, T, Kt, D)`` go to ``self.tap``
    for the monitor (``model.tap.take()`` after a forward).

    ``anti_collapse="vc"`` adds ``anti_collapse_weight`` x the variance-covariance term of
    the context features (:mod:`imagejepa.anti_collapse`) to the loss."""

    name = "ijepa"
    networks = ("encoder", "target_encoder", "predictor")
    trained = ("encoder", "predictor")
    ema_pairs = (("target_encoder", "encoder"),)
    evaluated = "target_encoder"

    def __init__(self, encoder: Encoder, predictor: Predictor, loss: str = "smooth_l1",
                 anti_collapse: str = "none", anti_collapse_weight: float = 0.0,
                 masks: MultiBlockMaskSampler | None = None):
        super().__init__()
        if loss not in PREDICTION_LOSSES:
            raise ValueError(f"loss must be one of {PREDICTION_LOSSES}, got {loss!r}")
        if anti_collapse not in ANTI_COLLAPSE_KINDS:
            raise ValueError(f"anti_collapse must be one of {ANTI_COLLAPSE_KINDS}, got {anti_collapse!r}")
        self.encoder = encoder
        self.predictor = predictor
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.loss_name = loss
        self.anti_collapse, self.anti_collapse_weight = anti_collapse, anti_collapse_weight
        self._masks = masks or MultiBlockMaskSampler(encoder.grid)
        self.blocks = self._masks.s.num_targets

    def mask_sampler(self) -> MultiBlockMaskSampler:
        return self._masks

    @torch.no_grad()
    def targets(self, images: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """Layer-normed target-encoder features of the target blocks: ``(B, T, Kt, D)``."""
        h = self.target_encoder(images)
        h = F.layer_norm(h, h.shape[-1:])
        return gather_tokens(h, target_idx)

    def forward(self, images: torch.Tensor, masks: Masks) -> tuple[torch.Tensor, dict]:
        target = self.targets(images, masks.targets)
        context = self.encoder(images, keep=masks.context)
        predicted = self.predictor(context, masks.context, masks.targets)
        predicted, target = predicted.float(), target.float()
        # The mean over (B, T * Kt, D), the same number: compiled, a loss over the 4-D
        # (B, T, Kt, D) made the backward's compiler specialise on the target length (a
        # channels-last stride check), one more graph for each new length.
        loss = prediction_loss(predicted.flatten(1, 2), target.flatten(1, 2), self.loss_name)
        pred_loss = loss.detach()
        if self.anti_collapse == "vc":
            variance, covariance = variance_covariance(context)
            term = variance + COVARIANCE_SHARE * covariance
            loss = loss + self.anti_collapse_weight * term
        with torch.no_grad():
            metrics = {
                "pred_loss": pred_loss,
                **({"anti_collapse": term.detach()} if self.anti_collapse != "none" else {}),
                # Std over the batch of each feature, averaged: near 0 means collapse.
                "target_std": per_dim_std(target).mean(),
                "pred_std": per_dim_std(predicted.detach()).mean(),
                "context_patches": masks.context.shape[1],
                "target_patches": masks.targets.shape[2],
            }
        self.tap.keep(predicted, target)  # for the monitor's health metrics
        return loss, metrics


def build_encoder(model_cfg, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> Encoder:
    """The encoder described by a :class:`~imagejepa.config.ModelConfig`, on ``device`` in ``dtype``."""
    m = model_cfg
    with torch.device(device) if device is not None else contextlib.nullcontext():
        encoder = Encoder(m.arch, m.patch_size, m.img_size, m.in_chans, depth=m.depth)
    return encoder if dtype is None else encoder.to(dtype)


def build_ijepa(cfg) -> IJEPA:
    """Encoder, predictor and target encoder of a :class:`~imagejepa.config.Config`."""
    encoder = build_encoder(cfg.model)
    predictor = Predictor(
        encoder.embed_dim,
        encoder.grid,
        pred_dim=cfg.model.pred_dim,
        depth=cfg.model.pred_depth,
        num_heads=cfg.model.pred_heads or encoder.num_heads,
    )
    return IJEPA(encoder, predictor, loss=cfg.optim.loss, anti_collapse=cfg.optim.anti_collapse,
                 anti_collapse_weight=cfg.optim.anti_collapse_weight,
                 masks=MultiBlockMaskSampler(encoder.grid, mask_settings(cfg)))
