"""AdamW with two parameter groups: weights are decayed; biases and norm parameters are not."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(*modules: nn.Module) -> list[dict]:
    """``[{params: weights}, {params: biases and 1-D params, weight_decay: 0}]``.

    The decayed group's weight decay is set every step by the schedule; the other stays 0.
    """
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [
        {"params": decay, "apply_weight_decay": True},
        {"params": no_decay, "apply_weight_decay": False, "weight_decay": 0.0},
    ]


def build_optimizer(*modules: nn.Module, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``modules`` with the fused kernel (one pass over each parameter) on CUDA and
    CPU; foreach kernels on other devices."""
    kwargs = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(param_groups(*modules), lr=lr, betas=(0.9, 0.999), **kwargs)


def set_lr_and_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group["apply_weight_decay"]:
            group["weight_decay"] = weight_decay
