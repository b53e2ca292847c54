"""Device and precision: which device to run on and whether bf16 autocast pays off there."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

from .config import ConfigError
from .models.softmax_attention import plain_attention
from .utils import cpu
from .utils.files import cache_root


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


def attention_kernel(device: torch.device, precision: str):
    """The softmax attention that trains fastest on ``device`` in ``precision`` (see
    :func:`imagejepa.models.layers.use_attention_kernel`): the written-out form on CPU in bf16,
    where PyTorch's flash kernel runs forward + backward 1.6x to 5x slower at ViT lengths
    (``benchmarks/attention.py``); ``F.scaled_dot_product_attention`` everywhere else."""
    if device.type == "cpu" and precision == "bf16":
        return plain_attention
    return F.scaled_dot_product_attention


def compile_pays(setting: bool | str, device: torch.device) -> bool:
    """Whether ``train.compile`` (``true``, ``false`` or ``auto``) compiles the training step.

    ``auto`` compiles on CUDA only. On CPUs it did not pay (``benchmarks/README.md``, "The
    plain model and the compiler"): two thirds of the demo's step are GEMMs the compiler calls
    as they are, the rest it fuses only in part; compiled steps ran at 0.85x (fp32) to 1.19x
    (bf16) of eager ones after 20-200 s of compiling, not enough in a 9-minute budget."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def keep_compiled_graphs() -> None:
    """Keep torch.compile's graph caches under imagejepa's cache folder (``IMAGEJEPA_CACHE``,
    else ``~/.cache/imagejepa``) rather than ``/tmp``, so a later run reuses them: compiling the
    demo took 55 s on a 2-core CPU cold, 18 s warm. A ``TORCHINDUCTOR_CACHE_DIR`` set by the
    user is left as it is."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
