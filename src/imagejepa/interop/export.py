"""Write a :class:`~imagejepa.interop.bundle.ModelBundle` as an imagejepa checkpoint, a Hugging Face
``IJepaModel`` folder, a timm folder, or an official-layout ``.pth.tar``.

- imagejepa: ``DST/model.safetensors`` (``encoder.``, ``target_encoder.``, ``predictor.``)
  + ``DST/meta.json``: a checkpoint folder that :func:`imagejepa.load_encoder` reads.
- hf: ``config.json`` + ``model.safetensors`` (published layout) + ``preprocessor_config.json``
  with the model's real normalisation; ``IJepaModel.from_pretrained(DST)`` loads it.
- timm: ``config.json`` + ``model.safetensors``; ``timm.create_model("local-dir:DST",
  pretrained=True)`` loads it, and the safetensors file is a plain ``vit_*_gap`` state dict.
- official: one ``torch.save`` file with ``encoder``, ``target_encoder``, ``predictor``
  (``module.`` prefixes, stored positions) and ``epoch``, as the official code saves them.

HF and timm hold one encoder: ``which`` picks it. An ``imagejepa.json`` beside them records
which one and the normalisation, so importing the folder back is exact.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import checkpoint as ckpt
from ..errors import ExportError
from ..models.pos_embed import sincos_2d
from .bundle import PROVENANCE_FILE, ROLES, ModelBundle
from .keymaps import add_prefix, encoder_to_hf, encoder_to_timm, predictor_to_official


def _atomic_folder(dst: Path, write) -> None:
    """Build the folder under a temporary name, then rename it to ``dst`` (which must not exist)."""
    if dst.exists():
        raise ExportError(f"{dst} already exists; choose a new output path")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".tmp-{dst.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def _json(obj: dict, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _role(bundle: ModelBundle, which: str) -> str:
    role = ROLES[which]
    if role not in bundle.states:
        held = [w for w in ROLES if bundle.has(w)]
        raise ExportError(f"the source has no {which} encoder (it holds: {', '.join(held)}); "
                          f"pass which={held[0]!r}" if held else "the source holds no encoder")
    return role


def _provenance(bundle: ModelBundle, which: str) -> dict:
    return {"which": which, "mean": list(bundle.mean), "std": list(bundle.std),
            "epoch": bundle.source.get("epoch"), "release": bundle.source.get("release"),
            "source_format": bundle.source.get("format")}


# -- imagejepa ----------------------------------------------------------------------------------
def write_imagejepa(bundle: ModelBundle, dst: Path, which: str = "target") -> None:
    tensors = {f"{role}.{k}": v for role, state in bundle.states.items() for k, v in state.items()}
    meta = {
        "step": bundle.source.get("step", 0), "epoch": bundle.source.get("epoch"),
        "encoder_spec": bundle.encoder_spec, "predictor_spec": bundle.predictor_spec,
        "arch": bundle.encoder_spec["arch"], "img_size": bundle.encoder_spec["img_size"],
        "patch_size": bundle.encoder_spec["patch_size"], "in_chans": bundle.encoder_spec["in_chans"],
        "mean": list(bundle.mean), "std": list(bundle.std),
        "source": {k: v for k, v in bundle.source.items() if k not in ("step", "epoch")},
    }

    def write(folder: Path) -> None:
        _save(tensors, folder / ckpt.MODEL_FILE)
        _json(meta, folder / ckpt.META_FILE)
        ckpt.write_manifest(folder, meta["step"] or 0, (ckpt.MODEL_FILE, ckpt.META_FILE))

    _atomic_folder(dst, write)


# -- Hugging Face -------------------------------------------------------------------------------
def hf_config(bundle: ModelBundle) -> dict:
    s = bundle.encoder_spec
    h, w = s["img_size"]
    return {
        "architectures": ["IJepaModel"], "model_type": "ijepa",
        "hidden_size": s["embed_dim"], "num_hidden_layers": s["depth"],
        "num_attention_heads": s["num_heads"], "intermediate_size": s["mlp_hidden_dim"],
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02, "layer_norm_eps": s["norm_eps"],
        "image_size": h if h == w else [h, w], "patch_size": s["patch_size"],
        "num_channels": s["in_chans"], "qkv_bias": True, "torch_dtype": "float32",
    }


def write_hf(bundle: ModelBundle, dst: Path, which: str = "target") -> None:
    role = _role(bundle, which)
    state = encoder_to_hf(bundle.states[role], bundle.positions(role))
    h, w = bundle.encoder_spec["img_size"]
    processor = {  # the model's real normalisation, not ViTImageProcessor's 0.5 default
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": h, "width": w},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(bundle.mean), "image_std": list(bundle.std),
    }

    def write(folder: Path) -> None:
        _save(state, folder / "model.safetensors")
        _json(hf_config(bundle), folder / "config.json")
        _json(processor, folder / "preprocessor_config.json")
        _json(_provenance(bundle, which), folder / PROVENANCE_FILE)

    _atomic_folder(dst, write)


# -- timm ---------------------------------------------------------------------------------------
# timm's registered I-JEPA architectures; other sizes use the closest name with explicit model_args.
TIMM_NAMES = {
    ("vit_huge", 14, 224): "vit_huge_patch14_gap_224",
    ("vit_huge", 16, 448): "vit_huge_patch16_gap_448",
    ("vit_giant", 16, 224): "vit_giant_patch16_gap_224",
}


def timm_model_args(bundle: ModelBundle) -> dict:
    """Keyword arguments that make timm's VisionTransformer this encoder."""
    s = bundle.encoder_spec
    if abs(s["norm_eps"] - 1e-6) > 1e-12:
        raise ExportError(f"timm's ViT uses LayerNorm eps 1e-6; this encoder uses {s['norm_eps']}")
    h, w = s["img_size"]
    return {
        "img_size": h if h == w else [h, w], "patch_size": s["patch_size"], "in_chans": s["in_chans"],
        "embed_dim": s["embed_dim"], "depth": s["depth"], "num_heads": s["num_heads"],
        "mlp_ratio": s["mlp_hidden_dim"] / s["embed_dim"], "class_token": False,
        "global_pool": "avg", "fc_norm": False, "num_classes": 0,
    }


def write_timm(bundle: ModelBundle, dst: Path, which: str = "target") -> None:
    role = _role(bundle, which)
    s = bundle.encoder_spec
    args = timm_model_args(bundle)
    if int(s["embed_dim"] * args["mlp_ratio"]) != s["mlp_hidden_dim"]:
        raise ExportError(f"MLP width {s['mlp_hidden_dim']} is not expressible as timm's int(dim * ratio)")
    h, w = s["img_size"]
    name = TIMM_NAMES.get((s["arch"], s["patch_size"], h), "vit_base_patch16_gap_224")
    config = {
        "architecture": name, "num_classes": 0, "num_features": s["embed_dim"], "model_args": args,
        "pretrained_cfg": {"input_size": [s["in_chans"], h, w], "mean": list(bundle.mean),
                           "std": list(bundle.std), "interpolation": "bicubic", "crop_pct": 1.0,
                           "num_classes": 0},
    }
    state = encoder_to_timm(bundle.states[role], bundle.positions(role))

    def write(folder: Path) -> None:
        _save(state, folder / "model.safetensors")
        _json(config, folder / "config.json")
        _json(_provenance(bundle, which), folder / PROVENANCE_FILE)

    _atomic_folder(dst, write)


# -- official -----------------------------------------------------------------------------------
def write_official(bundle: ModelBundle, dst: Path, which: str = "target") -> None:
    names = {"encoder": "context encoder", "target_encoder": "target encoder", "predictor": "predictor"}
    missing = [name for role, name in names.items() if role not in bundle.states]
    if missing:
        raise ExportError(f"the official layout needs both encoders and the predictor; the source lacks "
                          f"the {' and the '.join(missing)}")
    if dst.exists():
        raise ExportError(f"{dst} already exists; choose a new output path")
    grid = bundle.grid()
    pred_pos = sincos_2d(bundle.predictor_spec["pred_dim"], *grid)[None]
    obj = {role: add_prefix(encoder_to_timm(bundle.states[role], bundle.positions(role)), "module.")
           for role in ("encoder", "target_encoder")}
    obj["predictor"] = add_prefix(predictor_to_official(bundle.states["predictor"], pred_pos), "module.")
    obj["epoch"] = bundle.source.get("epoch") or 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".tmp-{dst.name}-{uuid.uuid4().hex[:8]}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


WRITERS = {"imagejepa": write_imagejepa, "hf": write_hf, "timm": write_timm, "official": write_official}
