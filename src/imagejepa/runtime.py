"""Device and precision: which device to run on and whether bf16 autocast pays off there."""

from __future__ import annotations

import contextlib

import torch

from .config import ConfigError
from .utils import cpu


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> the GPU of this process (``cuda:LOCAL_RANK``) when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available; use cpu or auto")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA with bf16 and on CPUs with bf16 matrix units, else ``fp32``."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu.has_bf16_matmul_units() else "fp32"


def autocast(device: torch.device, precision: str):
    """bf16 autocast (fp32 master weights, no grad scaler needed), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def without_autocast(device_type: str):
    """A region computed in the precision of its inputs (fp32 statistics, losses) under any
    autocast; nothing on 'meta', which has no autocast (FLOPs counted on shapes alone)."""
    if device_type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)
