"""Explicit name maps between imagejepa state dicts and the official code, Hugging Face and timm.

imagejepa's own names follow the official I-JEPA code and timm (``patch_embed.proj``,
``blocks.N.attn.qkv``, ``norm``; ``predictor_embed``, ``predictor_blocks.N`` ...), so those
maps are mostly renames of the surroundings: DDP's ``module.`` prefix and the stored
position embedding (``pos_embed``, ``predictor_pos_embed``), which imagejepa recomputes.

Hugging Face ``IJepaModel`` splits ``qkv`` into query/key/value and renames every layer.
Two layouts exist: the published one (``encoder.layer.N.attention.attention.query``, used by
the ``facebook/ijepa_*`` checkpoints and transformers 4.x) and transformers 5's
(``layers.N.attention.q_proj``). Export writes the published layout, which both load;
import reads either.

Every function here works on plain ``{name: tensor}`` dicts and checks what it consumes:
unknown or missing names are errors that list them.
"""

from __future__ import annotations

import re

import torch

from ..errors import KeyMapError
from ..models.pos_embed import sincos_2d

# Per-block parameters: (imagejepa / official / timm suffix, HF published, HF transformers 5).
HF_BLOCK_NAMES = (
    ("norm1", "layernorm_before", "layernorm_before"),
    ("attn.proj", "attention.output.dense", "attention.o_proj"),
    ("norm2", "layernorm_after", "layernorm_after"),
    ("mlp.fc1", "intermediate.dense", "mlp.fc1"),
    ("mlp.fc2", "output.dense", "mlp.fc2"),
)
HF_QKV_NAMES = {  # the fused qkv projection, split in three
    "published": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
    "current": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
}
HF_LAYER_PREFIX = {"published": "encoder.layer", "current": "layers"}
HF_STEM_NAMES = (  # (imagejepa, HF): the same in both HF layouts
    ("patch_embed.proj", "embeddings.patch_embeddings.projection"),
    ("norm", "layernorm"),
)
HF_POS = "embeddings.position_embeddings"
HF_IGNORED = ("pooler.dense.weight", "pooler.dense.bias")  # a tanh pooler I-JEPA never had
TIMM_IGNORED = ("head.weight", "head.bias")  # a classifier head, not part of the encoder



def _listing(names, limit: int = 6) -> str:
    names = sorted(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP's ``module.`` prefix (from all keys or none; a mix is an error)."""
    prefixed = [k for k in state if k.startswith("module.")]
    if not prefixed:
        return dict(state)
    if len(prefixed) != len(state):
        raise KeyMapError("some keys have DDP's 'module.' prefix and some do not: "
                          f"{_listing(k for k in state if not k.startswith('module.'))}")
    return {k[len("module."):]: v for k, v in state.items()}


def block_count(state: dict[str, torch.Tensor], pattern: str) -> int:
    """Number of transformer blocks: the highest N in keys matching ``pattern`` (with ``(\\d+)``) + 1."""
    found = [int(m.group(1)) for k in state if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


def is_sincos(table: torch.Tensor, grid: tuple[int, int], atol: float = 1e-4) -> bool:
    """Whether a stored ``(1, N, D)`` position table is I-JEPA's fixed sin-cos one for ``grid``."""
    dim = table.shape[-1]
    if dim % 4 or table.shape[-2] != grid[0] * grid[1]:
        return False
    return torch.allclose(table.reshape(-1, dim).float(), sincos_2d(dim, *grid), atol=atol, rtol=0)


# -- encoder: HF <-> imagejepa -------------------------------------------------------------------
def hf_layout(state: dict[str, torch.Tensor]) -> str:
    """``"published"`` or ``"current"``: which Hugging Face naming a state dict uses."""
    if any(k.startswith("encoder.layer.") for k in state):
        return "published"
    if any(k.startswith("layers.") for k in state):
        return "current"
    raise KeyMapError("not a Hugging Face IJepaModel state dict: no 'encoder.layer.N.' or "
                      f"'layers.N.' keys (found {_listing(state)})")


def encoder_from_hf(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """HF IJepaModel names -> (imagejepa encoder state dict without positions, ``(1, N, D)`` positions).

    Accepts either HF layout and an ``ijepa.`` prefix (IJepaForImageClassification).
    """
    if all(k.startswith("ijepa.") for k in state if not k.startswith("classifier.")):
        state = {k[len("ijepa."):]: v for k, v in state.items() if not k.startswith("classifier.")}
    layout = hf_layout(state)
    src = dict(state)
    out: dict[str, torch.Tensor] = {}

    def take(hf_name: str) -> torch.Tensor:
        if hf_name not in src:
            raise KeyMapError(f"Hugging Face state dict has no {hf_name!r}")
        return src.pop(hf_name)

    for ours, hf in HF_STEM_NAMES:
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = take(f"{hf}.{p}")
    pos = take(HF_POS)
    prefix = HF_LAYER_PREFIX[layout]
    for i in range(block_count(src, rf"{re.escape(prefix)}\.(\d+)\.")):
        for ours, published, current in HF_BLOCK_NAMES:
            hf = published if layout == "published" else current
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{p}"] = take(f"{prefix}.{i}.{hf}.{p}")
        for p in ("weight", "bias"):
            q, k, v = (take(f"{prefix}.{i}.{name}.{p}") for name in HF_QKV_NAMES[layout])
            out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat([q, k, v], dim=0)
    for name in HF_IGNORED:
        src.pop(name, None)
    if src:
        raise KeyMapError(f"Hugging Face state dict has names imagejepa does not map: {_listing(src)}")
    return out, pos


def encoder_to_hf(
    state: dict[str, torch.Tensor], pos: torch.Tensor, layout: str = "published"
) -> dict[str, torch.Tensor]:
    """imagejepa encoder state dict + ``(1, N, D)`` positions -> HF names (``layout``:
    ``"published"``, what files carry, or ``"current"``, transformers 5's module names)."""
    src = {k: v for k, v in state.items() if k != "pos_embed"}
    prefix = HF_LAYER_PREFIX[layout]
    out: dict[str, torch.Tensor] = {HF_POS: pos.reshape(1, -1, pos.shape[-1])}
    for ours, hf in HF_STEM_NAMES:
        for p in ("weight", "bias"):
            out[f"{hf}.{p}"] = src.pop(f"{ours}.{p}")
    for i in range(block_count(src, r"blocks\.(\d+)\.")):
        for ours, published, current in HF_BLOCK_NAMES:
            hf = published if layout == "published" else current
            for p in ("weight", "bias"):
                out[f"{prefix}.{i}.{hf}.{p}"] = src.pop(f"blocks.{i}.{ours}.{p}")
        for p in ("weight", "bias"):
            q, k, v = src.pop(f"blocks.{i}.attn.qkv.{p}").chunk(3, dim=0)
            for name, t in zip(HF_QKV_NAMES[layout], (q, k, v)):
                out[f"{prefix}.{i}.{name}.{p}"] = t
    if src:
        raise KeyMapError(f"encoder state dict has names the HF map does not cover: {_listing(src)}")
    return {k: v.contiguous() for k, v in out.items()}


# -- encoder: official / timm <-> imagejepa ------------------------------------------------------
def encoder_from_timm(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Official (``module.`` stripped) or timm ``vit_*_gap`` names -> (encoder state, positions).

    The names are imagejepa's already; what changes is the stored ``pos_embed`` (returned
    apart) and a classifier head, which is dropped.
    """
    src = {k: v for k, v in state.items() if k not in TIMM_IGNORED}
    if "pos_embed" not in src:
        raise KeyMapError(f"no 'pos_embed' in the encoder state dict (found {_listing(src)})")
    if "cls_token" in src:
        raise KeyMapError("this ViT has a class token; I-JEPA encoders have none (timm class_token=False)")
    pos = src.pop("pos_embed")
    return src, pos


def encoder_to_timm(state: dict[str, torch.Tensor], pos: torch.Tensor) -> dict[str, torch.Tensor]:
    """imagejepa encoder state + positions -> official / timm names (``pos_embed`` ``(1, N, D)``)."""
    out = {k: v for k, v in state.items() if k != "pos_embed"}
    out["pos_embed"] = pos.reshape(1, -1, pos.shape[-1]).contiguous()
    return out


# -- predictor: official <-> imagejepa -----------------------------------------------------------
def predictor_from_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official predictor names (``module.`` stripped) -> imagejepa's: the same, minus the
    stored ``predictor_pos_embed`` (recomputed; checked to be sin-cos by the caller)."""
    return {k: v for k, v in state.items() if k != "predictor_pos_embed"}


def predictor_to_official(state: dict[str, torch.Tensor], pos: torch.Tensor) -> dict[str, torch.Tensor]:
    out = dict(state)
    out["predictor_pos_embed"] = pos.reshape(1, -1, pos.shape[-1]).contiguous()
    return out


def add_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in state.items()}


def check_against(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Every name and shape of ``module.state_dict()`` present in ``state``, nothing extra."""
    expected = module.state_dict()
    missing = expected.keys() - state.keys()
    extra = state.keys() - expected.keys()
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_listing(missing)}")
        if extra:
            parts.append(f"unexpected {_listing(extra)}")
        raise KeyMapError(f"{what}: {'; '.join(parts)}")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise KeyMapError(f"{what}: wrong shapes: {_listing(wrong, 4)}")
