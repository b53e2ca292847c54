"""Read I-JEPA weights from any supported format: official ``.pth.tar``, imagejepa checkpoints,
Hugging Face ``IJepaModel`` folders and timm state dicts (writers: :mod:`imagejepa.interop.export`).

    official   a file: {"encoder", "predictor", "target_encoder", "opt", "scaler", "epoch", ...},
               keys with DDP's ``module.`` prefix; both encoders and the predictor
    imagejepa  a checkpoint folder (model.safetensors + meta.json) or a run folder
    hf         a folder: config.json (model_type "ijepa") + model.safetensors; or a Hub name,
               hf-hub:ORG/NAME[@REVISION] (:mod:`imagejepa.interop.hub`)
    timm       a folder: config.json ("architecture") + model.safetensors, or a bare state
               dict file (.safetensors / .pth / .bin) in timm ``vit_*_gap`` names

Every file is read with safetensors or ``torch.load(weights_only=True)``
(:mod:`imagejepa.interop.safe_load`). The architecture is inferred from the tensor shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..data.base import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConvertError, KeyMapError, UnreadableFileError
from .bundle import PROVENANCE_FILE, ModelBundle, infer_encoder_spec, infer_predictor_spec
from .keymaps import (
    encoder_from_hf,
    encoder_from_timm,
    is_sincos,
    predictor_from_official,
    strip_module_prefix,
)
from .registry import match_file_name
from .safe_load import load_state_file, load_torch_file

FORMATS = ("imagejepa", "official", "hf", "timm")
HF_DEFAULT_NORM = (0.5, 0.5, 0.5)  # ViTImageProcessor's default, which the hub I-JEPA ports carry
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "pytorch_model.pth")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path} is not valid JSON: {e}") from None


def detect_format(path: str | Path) -> str:
    """Which of :data:`FORMATS` ``path`` is in, from its layout and contents (not its name)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            cfg = _read_json(config)
            if cfg.get("model_type") == "ijepa":
                return "hf"
            if "architecture" in cfg:
                return "timm"
            raise ConvertError(f"{config}: neither a Hugging Face I-JEPA config (model_type 'ijepa') "
                               "nor a timm one ('architecture')")
        try:
            ckpt.resolve_checkpoint(path)
            return "imagejepa"
        except FileNotFoundError:
            raise ConvertError(
                f"{path} is a folder but not a model: expected an imagejepa checkpoint or run folder, "
                "or a Hugging Face / timm folder with config.json"
            ) from None
    if path.suffix == ".safetensors":
        return "timm"
    obj = load_torch_file(path)
    if isinstance(obj, dict) and ("encoder" in obj or "target_encoder" in obj):
        return "official"
    return "timm"


def read_model(path: str | Path, *, num_heads: int | None = None) -> ModelBundle:
    """Weights at ``path`` in any of :data:`FORMATS`, as a :class:`ModelBundle`.

    ``num_heads`` is needed only for widths outside the architecture table when the
    format does not record heads (official, bare timm files).
    """
    from .hub import hub_folder, is_hub_name

    if is_hub_name(path):  # hf-hub:ORG/NAME[@REVISION]: its local snapshot folder
        path = hub_folder(path)
    fmt = detect_format(path)
    try:
        return READERS[fmt](Path(path), num_heads)
    except KeyMapError as e:
        raise ConvertError(f"{path} ({fmt}): {e}") from None


# -- official -----------------------------------------------------------------------------------
def read_official(path: Path, num_heads: int | None = None) -> ModelBundle:
    obj = load_torch_file(path)
    if not isinstance(obj, dict) or not ({"encoder", "target_encoder"} & obj.keys()):
        raise ConvertError(f"{path}: not an official I-JEPA checkpoint (no 'encoder' / 'target_encoder')")
    states, spec = {}, None
    for role in ("target_encoder", "encoder"):
        if role not in obj:
            continue
        state, pos = encoder_from_timm(strip_module_prefix(_tensor_dict(obj[role], f"{path}[{role!r}]")))
        role_spec = infer_encoder_spec(state, pos, num_heads=num_heads)
        if spec is not None and role_spec != spec:
            raise ConvertError(f"{path}: 'encoder' and 'target_encoder' have different shapes")
        spec, states[role] = role_spec, state
    pred_spec = None
    if "predictor" in obj:
        pred = strip_module_prefix(_tensor_dict(obj["predictor"], f"{path}['predictor']"))
        pred_spec = infer_predictor_spec(pred, spec["num_heads"])
        _check_predictor_positions(pred, pred_spec, spec, path)
        states["predictor"] = predictor_from_official(pred)
    release = match_file_name(path)
    source = {"format": "official", "path": str(path), "epoch": obj.get("epoch"),
              "release": release.name if release else None}
    return ModelBundle(spec, states, IMAGENET_MEAN, IMAGENET_STD, pred_spec, source)


def _tensor_dict(obj, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConvertError(f"{what} is not a state dict (a dict of tensors)")
    return obj


def _check_predictor_positions(pred: dict, pred_spec: dict, spec: dict, path: Path) -> None:
    pos = pred.get("predictor_pos_embed")
    if pos is None:
        return
    grid = (spec["img_size"][0] // spec["patch_size"], spec["img_size"][1] // spec["patch_size"])
    if not is_sincos(pos, grid):
        raise ConvertError(f"{path}: the predictor's stored positions are not the sin-cos embedding of the "
                           f"{grid[0]}x{grid[1]} grid; imagejepa's predictor uses fixed sin-cos positions")


# -- imagejepa ----------------------------------------------------------------------------------
def read_imagejepa(path: Path, num_heads: int | None = None) -> ModelBundle:
    from ..config import from_dict

    folder = ckpt.resolve_checkpoint(path)
    meta = ckpt.load_meta(folder)
    tensors = ckpt.load_tensors(folder)
    method = meta.get("config", {}).get("method", {}).get("name", "ijepa")
    # "target" is the encoder the method evaluates (MAE's encoder, DINO's teacher backbone), as
    # the trainer's meta says (earlier runs and exported folders: the EMA target encoder, if
    # held); the predictor is I-JEPA's alone (the others' decoders and heads stay behind).
    roles = {"encoder": "encoder", "target_encoder": meta.get("evaluated", "target_encoder"),
             "predictor": "predictor" if method == "ijepa" else None}
    states = {role: ckpt.strip_prefix(tensors, name) for role, name in roles.items() if name}
    states = {role: s for role, s in states.items() if s}
    if "encoder_spec" in meta:
        spec, pred_spec = meta["encoder_spec"], meta.get("predictor_spec")
    else:  # written by the trainer: the config describes the model
        m = from_dict(meta["config"]).model
        from ..jepa import build_encoder

        with torch.device("meta"):
            spec = build_encoder(m).spec()
        heads = m.pred_heads or spec["num_heads"]
        pred_spec = {"pred_dim": m.pred_dim, "depth": m.pred_depth, "num_heads": heads, "mlp_ratio": 4.0}
    source = {"format": "imagejepa", "path": str(folder), "step": meta.get("step"),
              "epoch": meta.get("epoch"), **({"method": method} if method != "ijepa" else {})}
    source.update({k: v for k, v in meta.get("source", {}).items() if k not in source})
    return ModelBundle(spec, states, tuple(meta["mean"]), tuple(meta["std"]), pred_spec, source)


# -- Hugging Face -------------------------------------------------------------------------------
def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _weights_in(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # sharded: model-00001-of-00002.safetensors ...
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_state_file(folder / shard).items()}
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return load_state_file(folder / name)
    raise ConvertError(f"{folder}: no weights file (expected one of {', '.join(WEIGHT_FILES)})")


def _provenance(folder: Path, default_role: str) -> tuple[str, dict]:
    """Which encoder a one-encoder folder holds: as recorded by an imagejepa export, else the
    context encoder (what the public Hugging Face and timm ports converted)."""
    info = _read_json(folder / PROVENANCE_FILE) if (folder / PROVENANCE_FILE).is_file() else {}
    which = info.get("which")
    role = {"target": "target_encoder", "context": "encoder"}.get(which, default_role)
    return role, info


def read_hf(folder: Path, num_heads: int | None = None) -> ModelBundle:
    cfg = _read_json(folder / "config.json")
    act, qkv_bias = cfg.get("hidden_act", "gelu"), cfg.get("qkv_bias", True)
    if act != "gelu" or not qkv_bias:
        raise ConvertError(f"{folder}: hidden_act={act!r}, qkv_bias={qkv_bias}; imagejepa encoders use "
                           "exact GELU ('gelu') and qkv biases")
    state, pos = encoder_from_hf(_weights_in(folder))
    spec = infer_encoder_spec(state, pos, num_heads=cfg.get("num_attention_heads", num_heads),
                              img_size=_pair(cfg.get("image_size", 224)),
                              norm_eps=float(cfg.get("layer_norm_eps", 1e-12)))
    role, info = _provenance(folder, "encoder")
    mean, std, notes = _hf_normalisation(folder, info)
    source = {"format": "hf", "path": str(folder), "notes": notes,
              **{k: v for k, v in info.items() if k in ("epoch", "release")}}
    return ModelBundle(spec, {role: state}, mean, std, None, source)


def _hf_normalisation(folder: Path, info: dict) -> tuple[tuple, tuple, list[str]]:
    if "mean" in info:
        return tuple(info["mean"]), tuple(info["std"]), []
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        p = _read_json(pre)
        mean, std = tuple(p.get("image_mean", HF_DEFAULT_NORM)), tuple(p.get("image_std", HF_DEFAULT_NORM))
        if (mean, std) != (HF_DEFAULT_NORM, HF_DEFAULT_NORM):
            return mean, std, []
    return IMAGENET_MEAN, IMAGENET_STD, [
        "normalisation: ImageNet mean/std (I-JEPA was trained with them), not the 0.5/0.5 "
        "default of the Hugging Face preprocessor"]


# -- timm ---------------------------------------------------------------------------------------
def read_timm(path: Path, num_heads: int | None = None) -> ModelBundle:
    cfg, info = {}, {}
    role = "encoder"
    if path.is_dir():
        cfg = _read_json(path / "config.json")
        role, info = _provenance(path, "encoder")
        weights = _weights_in(path)
    else:
        try:
            weights = load_state_file(path)
        except UnreadableFileError as e:
            raise ConvertError(f"{e}; expected a timm vit_*_gap state dict") from None
    args = cfg.get("model_args", {})
    pre = cfg.get("pretrained_cfg", {})
    img_size = args.get("img_size") or (pre.get("input_size") or [None, None, None])[1:] or None
    if isinstance(img_size, list) and None in img_size:
        img_size = None
    if args.get("class_token") or args.get("fc_norm"):
        raise ConvertError(f"{path}: class_token / fc_norm set; I-JEPA encoders have neither")
    state, pos = encoder_from_timm(weights)
    spec = infer_encoder_spec(state, pos, num_heads=args.get("num_heads", num_heads), img_size=img_size)
    mean = tuple(info.get("mean") or pre.get("mean") or IMAGENET_MEAN)
    std = tuple(info.get("std") or pre.get("std") or IMAGENET_STD)
    source = {"format": "timm", "path": str(path),
              **{k: v for k, v in info.items() if k in ("epoch", "release")}}
    return ModelBundle(spec, {role: state}, mean, std, None, source)


READERS = {"official": read_official, "imagejepa": read_imagejepa, "hf": read_hf, "timm": read_timm}


def convert(src: str | Path, dst: str | Path, to: str = "imagejepa", which: str = "target",
            num_heads: int | None = None) -> dict:
    """Convert ``src`` (format detected) into ``to`` at ``dst``; returns a summary dict.

    ``which`` picks the encoder for one-encoder formats (hf, timm): the EMA target encoder
    (default, the one the paper evaluates) or the context encoder.
    """
    from .export import WRITERS

    if to not in WRITERS:
        raise ConvertError(f"unknown output format {to!r}; allowed: {', '.join(WRITERS)}")
    if which not in ("target", "context"):
        raise ConvertError(f"which must be 'target' or 'context', got {which!r}")
    bundle = read_model(src, num_heads=num_heads)
    WRITERS[to](bundle, Path(dst), which)
    return {
        "converted": str(src), "from": bundle.source["format"], "to": to, "out": str(dst),
        "model": bundle.describe(), "encoder": which if to in ("hf", "timm") else
        [w for w in ("target", "context") if bundle.has(w)],
        "predictor": "predictor" in bundle.states and to in ("imagejepa", "official"),
        "positions": bundle.encoder_spec["pos_embed"], "mean": list(bundle.mean), "std": list(bundle.std),
        "release": bundle.source.get("release"),
    }


__all__ = ["FORMATS", "ConvertError", "convert", "detect_format", "read_model"]
