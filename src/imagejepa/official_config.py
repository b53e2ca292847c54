"""Translation of the official I-JEPA YAML files into this project's config schema.

The official files have sections ``meta``, ``data``, ``mask``, ``optimization`` and
``logging``. Each key is mapped explicitly; options this project does not implement
(flips, colour distortion, several context masks, overlapping masks) are refused rather
than silently dropped. The official ``data.batch_size`` is per GPU (the paper: 128 x 16
GPUs = 2048) while ours is the global batch, so the translation multiplies it by the number
of processes the run is launched on (``WORLD_SIZE``; 1 outside torchrun).
"""

from __future__ import annotations

import os
from typing import Any

from .errors import ConfigError

OFFICIAL_SECTIONS = {"meta", "data", "mask", "optimization", "logging"}

# official (section, key) -> ours "section.key"
KEY_MAP = {
    ("meta", "model_name"): "model.arch",
    ("meta", "pred_depth"): "model.pred_depth",
    ("meta", "pred_emb_dim"): "model.pred_dim",
    ("data", "batch_size"): "data.batch_size",
    ("data", "crop_scale"): "data.crop_scale",
    ("data", "crop_size"): "model.img_size",
    ("data", "num_workers"): "data.num_workers",
    ("mask", "patch_size"): "model.patch_size",
    ("mask", "aspect_ratio"): "mask.target_aspect",
    ("mask", "enc_mask_scale"): "mask.context_scale",
    ("mask", "pred_mask_scale"): "mask.target_scale",
    ("mask", "num_pred_masks"): "mask.num_targets",
    ("mask", "min_keep"): "mask.min_keep",
    ("optimization", "ema"): "optim.ema",
    ("optimization", "epochs"): "optim.epochs",
    ("optimization", "final_lr"): "optim.final_lr",
    ("optimization", "final_weight_decay"): "optim.final_weight_decay",
    ("optimization", "ipe_scale"): "optim.ipe_scale",
    ("optimization", "lr"): "optim.lr",
    ("optimization", "start_lr"): "optim.start_lr",
    ("optimization", "warmup"): "optim.warmup_epochs",
    ("optimization", "weight_decay"): "optim.weight_decay",
}

# Keys with no effect on the method here (paths, logging, loader tuning), read and ignored.
IGNORED = {
    ("meta", "copy_data"), ("meta", "load_checkpoint"), ("meta", "read_checkpoint"),
    ("data", "pin_mem"), ("data", "color_jitter_strength"), ("data", "root_path"),
    ("data", "image_folder"), ("logging", "folder"), ("logging", "write_tag"),
}

# Keys whose only supported value is the one given (anything else is refused).
FIXED = {
    ("mask", "num_enc_masks"): 1,
    ("mask", "allow_overlap"): False,
    ("data", "use_horizontal_flip"): False,
    ("data", "use_color_distortion"): False,
    ("data", "use_gaussian_blur"): False,
}


def is_official(data: Any) -> bool:
    return isinstance(data, dict) and {"meta", "mask", "optimization"} <= set(data)


def translate_official(data: dict[str, Any], world_size: int = 1) -> dict[str, Any]:
    """Official nested dict -> our nested dict (not yet validated); the per-process batch
    becomes the global batch of ``world_size`` processes."""
    out: dict[str, dict[str, Any]] = {}
    for section, values in data.items():
        if section not in OFFICIAL_SECTIONS:
            raise ConfigError(f"official config: unknown section {section!r}")
        for key, value in (values or {}).items():
            where = (section, key)
            if where in KEY_MAP:
                ours_section, ours_key = KEY_MAP[where].split(".")
                out.setdefault(ours_section, {})[ours_key] = value
            elif where in FIXED:
                if value != FIXED[where]:
                    raise ConfigError(
                        f"official config: {section}.{key}={value!r} is not supported; "
                        f"only {FIXED[where]!r} (the paper's setting)"
                    )
            elif where == ("meta", "use_bfloat16"):
                out.setdefault("train", {})["precision"] = "bf16" if value else "fp32"
            elif where not in IGNORED:
                raise ConfigError(f"official config: unknown key {section}.{key}")
    if "batch_size" in out.get("data", {}) and isinstance(out["data"]["batch_size"], int):
        out["data"]["batch_size"] *= world_size
    data_section = data.get("data") or {}
    if data_section.get("root_path") is not None and data_section.get("image_folder") is not None:
        train_dir = os.path.join(str(data_section["root_path"]), str(data_section["image_folder"]), "train")
        out.setdefault("data", {})["dataset"] = f"imagefolder:{train_dir}"
    # The official code trains with smooth-L1; keep it for a faithful translation.
    out.setdefault("optim", {})["loss"] = "smooth_l1"
    return out


def batch_note(data: dict[str, Any], world_size: int) -> str | None:
    """How the global batch came from an official file, for the run's start-up line."""
    per_process = (data.get("data") or {}).get("batch_size")
    if not isinstance(per_process, int):
        return None
    processes = "1 process" if world_size == 1 else f"{world_size} processes"
    total = per_process * world_size
    return f"the official file's batch_size {per_process} is per process: x {processes} = {total}"
