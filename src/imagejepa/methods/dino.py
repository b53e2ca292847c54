"""DINO (Caron et al. 2021): self-distillation with no labels.

A student (encoder + projection head) is trained to match, on every view of an image, the
output distribution of an EMA teacher on the *other* global views:

    teacher  = softmax((head_t(encoder_t(global view)) - centre) / teacher temperature)
    student  = log_softmax(head(encoder(any view)) / student temperature)
    loss     = mean over pairs (teacher view i, student view j != i) of -sum(teacher_i * student_j)

Centring (subtracting a running mean of the teacher's outputs, over every rank's batch) and
sharpening (a teacher temperature lower than the student's, warmed up from
``warmup_teacher_temp`` over the learning-rate warm-up) are what keep it from collapsing.
The head is an MLP to a bottleneck, l2-normalised, then a last layer whose rows are
normalised (DINO's weight-normalised layer with its norm fixed at 1). The encoder has no
class token: the head reads the average-pooled patch tokens, as every probe here does. The
teacher's backbone is the encoder evaluated.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..anti_collapse import sum_over_ranks
from ..data.multicrop import MultiCropTransform
from ..jepa import build_encoder, per_dim_std
from ..models import Encoder
from ..models.layers import init_weights
from ..runtime import without_autocast
from .base import Method


class DINOHead(nn.Module):
    """``(..., D) -> (..., out)``: MLP to a bottleneck, l2-normalised, then a layer with unit rows."""

    def __init__(self, in_dim: int, hidden: int = 512, bottleneck: int = 128, out: int = 1024):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last_layer = nn.Parameter(torch.empty(out, bottleneck))
        self.apply(init_weights)
        nn.init.trunc_normal_(self.last_layer, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_layer, dim=-1))


def standardise(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(N, D)``: each dimension centred and scaled by its mean and variance over the whole
    global batch (every rank's rows; gradients flow through the statistics), in fp32."""
    with without_autocast(features.device.type):
        return _standardise(features.float(), eps)


def _standardise(x: torch.Tensor, eps: float) -> torch.Tensor:
    count = x.new_full((1,), x.shape[0])  # filled on the device: no copy from the host
    moments = sum_over_ranks(torch.cat([count, x.sum(0), x.pow(2).sum(0)]))
    n, dim = moments[0], x.shape[1]
    mean = moments[1 : dim + 1] / n
    var = (moments[dim + 1 :] / n - mean.pow(2)).clamp(min=0)
    return (x - mean) * torch.rsqrt(var + eps)


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
              student_temp: float, teacher_temp: torch.Tensor | float) -> torch.Tensor:
    """``student (B, V, K)`` logits of V views (the G global ones first), ``teacher (B, G, K)``
    logits, ``center (K,)``: the cross-entropy of each student view against each teacher view
    of the same image but another view, averaged over pairs and images."""
    with without_autocast(student.device.type):
        return _dino_loss(student.float(), teacher.float(), center, student_temp, teacher_temp)


def _dino_loss(student, teacher, center, student_temp, teacher_temp) -> torch.Tensor:
    B, G, V = teacher.shape[0], teacher.shape[1], student.shape[1]
    targets = F.softmax((teacher - center) / teacher_temp, dim=-1)
    log_probs = F.log_softmax(student / student_temp, dim=-1)
    cross = -torch.einsum("bgk,bvk->bgv", targets, log_probs)  # (B, G, V)
    # Pairs of different views: a weighted sum, not a boolean index (which reads back the mask).
    different = 1 - torch.eye(G, V, dtype=cross.dtype, device=cross.device)
    return (cross * different).sum() / (B * (G * V - min(G, V)))


class DINO(Method):
    """``forward((globals (B, 2, C, S, S), locals (B, L, C, s, s)), masks=None) -> (loss, metrics)``."""

    name = "dino"
    networks = ("encoder", "head", "target_encoder", "target_head")
    trained = ("encoder", "head")
    ema_pairs = (("target_encoder", "encoder"), ("target_head", "head"))
    evaluated = "target_encoder"
    blocks = 2  # the monitor compares student and teacher features of the two global views
    loss_name = "l2"

    def __init__(self, encoder: Encoder, head: DINOHead, settings):
        super().__init__()
        self.encoder, self.head = encoder, head
        if settings.standardise_head_input:
            # Standardised per dimension over the batch, the pooled features no longer depend
            # on the final norm's scale and shift: their gradient is rounding noise, which AdamW
            # would turn into a random walk. They stay at (1, 0).
            encoder.norm.requires_grad_(False)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_head = copy.deepcopy(head).requires_grad_(False)
        self.settings = settings
        out = head.last_layer.shape[0]
        # The centre belongs to the teacher (saved with it); the teacher outputs' sum over this
        # step's chunks waits in ``_pending`` until the update after the step.
        self.target_head.register_buffer("center", torch.zeros(out))
        self.register_buffer("teacher_temp", torch.tensor(settings.warmup_teacher_temp), persistent=False)
        self.register_buffer("_pending", torch.zeros(out + 1), persistent=False)

    def views(self, size, in_chans, mean, std, crop_scale=None) -> MultiCropTransform:
        s = self.settings
        return MultiCropTransform(size, self.encoder.patch_size, in_chans, mean, std, s.local_crops,
                                  s.global_scale, s.local_scale)

    def begin_step(self, warmup_progress: float) -> None:
        s = self.settings
        t = min(1.0, max(0.0, warmup_progress))
        self.teacher_temp.fill_(s.warmup_teacher_temp + t * (s.teacher_temp - s.warmup_teacher_temp))

    def forward(self, views, masks=None):
        global_views, local_views = views
        B, G = global_views.shape[:2]
        flat = global_views.flatten(0, 1)  # (B * G, C, S, S), image-major
        with torch.no_grad():
            teacher_features = self.target_encoder(flat).mean(dim=1)
            teacher = self.target_head(self._head_input(teacher_features)).reshape(B, G, -1)
        student_features = self.encoder(flat).mean(dim=1)
        student = [self.head(self._head_input(student_features)).reshape(B, G, -1)]
        if local_views.shape[1]:
            small = self.encoder(local_views.flatten(0, 1), any_size=True).mean(dim=1)
            student.append(self.head(self._head_input(small)).reshape(B, local_views.shape[1], -1))
        student = torch.cat(student, dim=1)
        center = self.target_head.center
        loss = dino_loss(student, teacher, center, self.settings.student_temp, self.teacher_temp)
        with torch.no_grad():
            teacher = teacher.float()
            self._pending += torch.cat([teacher.sum(dim=(0, 1)), teacher.new_full((1,), B * G)])
            predicted = student_features.detach().float().reshape(B, G, 1, -1)
            target = teacher_features.float().reshape(B, G, 1, -1)
            metrics = {"pred_loss": loss.detach(), "target_std": per_dim_std(target).mean(),
                       "pred_std": per_dim_std(predicted).mean()}
        self.tap.keep(predicted, target)
        return loss, metrics

    def _head_input(self, features: torch.Tensor) -> torch.Tensor:
        return standardise(features) if self.settings.standardise_head_input else features

    @torch.no_grad()
    def update_target(self, momentum: float, moving: torch.Tensor | None = None) -> None:
        """The EMA of encoder and head, then the centre: ``c = m c + (1 - m) mean(teacher outputs)``
        over every rank's batch of this step (nothing moves on a skipped step)."""
        super().update_target(momentum, moving)
        pending = sum_over_ranks(self._pending)
        batch_mean = pending[:-1] / pending[-1].clamp(min=1)
        m = self.settings.center_momentum
        weight = (1 - m) if moving is None else moving.float() * (1 - m)
        self.target_head.center.lerp_(batch_mean, weight)
        self._pending.zero_()


def build_dino(cfg) -> DINO:
    encoder = build_encoder(cfg.model)
    me = cfg.method
    return DINO(encoder, DINOHead(encoder.embed_dim, me.head_hidden, me.head_bottleneck, me.head_out), me)
