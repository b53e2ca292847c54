"""A model read from any supported format, held in imagejepa names, plus what it needs to run.

:class:`ModelBundle` is what every importer produces and every exporter consumes: the
state dicts of the encoders and predictor it has (some formats carry only one encoder),
the encoder's full specification (:meth:`Encoder.spec`), the predictor's, the
normalisation the weights were trained with, and where they came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..models import ARCHS, Encoder, Predictor
from ..models.layers import LAYER_NORM_EPS
from ..models.pos_embed import resample_grid, sincos_2d
from .keymaps import KeyMapError, block_count, check_against, is_sincos

ROLES = {"target": "target_encoder", "context": "encoder"}
PROVENANCE_FILE = "imagejepa.json"  # beside HF / timm exports: which encoder, normalisation


@dataclass(frozen=True)
class Preprocess:
    """What the encoder expects: ``(in_chans, H, W)`` images (``size`` is ``H`` when square,
    else ``(H, W)``) with values in [0, 1] normalised by ``mean`` and ``std`` per channel."""

    size: int | tuple[int, int]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class ModelBundle:
    """Weights in imagejepa names. ``states`` maps ``encoder`` (context), ``target_encoder``
    and ``predictor`` to state dicts; any may be absent."""

    encoder_spec: dict
    states: dict[str, dict[str, torch.Tensor]]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    predictor_spec: dict | None = None
    source: dict = field(default_factory=dict)  # format, path, epoch, notes

    def has(self, which: str) -> bool:
        return ROLES[which] in self.states

    def build_encoder(self, which: str = "target") -> Encoder:
        """The ``which`` ("target" or "context") encoder with its weights, in eval mode."""
        if which not in ROLES:
            raise ValueError(f"which must be 'target' or 'context', got {which!r}")
        role = ROLES[which]
        if role not in self.states:
            held = ", ".join(r for r in ("target", "context") if ROLES[r] in self.states) or "none"
            raise KeyError(
                f"{self.source.get('path', 'this model')} has no {which} encoder (it holds: {held}). "
                "The public Hugging Face and timm ports carry only the context encoder; the official "
                ".pth.tar has both"
            )
        encoder = Encoder.from_spec(self.encoder_spec)
        check_against(encoder, self.states[role], f"{which} encoder")
        encoder.load_state_dict(self.states[role])
        return encoder.eval().requires_grad_(False)

    def new_predictor(self) -> Predictor:
        """The predictor's architecture, freshly initialised (no weights loaded)."""
        if self.predictor_spec is None:
            raise KeyError(f"{self.source.get('path', 'this model')} has no predictor")
        s = self.predictor_spec
        return Predictor(self.encoder_spec["embed_dim"], self.grid(), pred_dim=s["pred_dim"],
                         depth=s["depth"], num_heads=s["num_heads"], mlp_ratio=s["mlp_ratio"])

    def build_predictor(self) -> Predictor:
        if self.predictor_spec is None or "predictor" not in self.states:
            raise KeyError(f"{self.source.get('path', 'this model')} has no predictor")
        predictor = self.new_predictor()
        check_against(predictor, self.states["predictor"], "predictor")
        predictor.load_state_dict(self.states["predictor"])
        return predictor.eval().requires_grad_(False)

    def grid(self) -> tuple[int, int]:
        h, w = self.encoder_spec["img_size"]
        p = self.encoder_spec["patch_size"]
        return h // p, w // p

    def positions(self, role: str) -> torch.Tensor:
        """The ``(1, N, D)`` positions of ``role``'s encoder at its image size (for export)."""
        s = self.encoder_spec
        if s["pos_embed"] == "sincos":
            return sincos_2d(s["embed_dim"], *self.grid())[None]
        return resample_grid(self.states[role]["pos_embed"], tuple(s["pos_grid"]), self.grid())

    def preprocess(self) -> Preprocess:
        h, w = self.encoder_spec["img_size"]
        return Preprocess(h if h == w else (h, w), self.encoder_spec["in_chans"],
                          tuple(self.mean), tuple(self.std))

    def describe(self) -> str:
        s = self.encoder_spec
        h, w = s["img_size"]
        size = h if h == w else f"{h}x{w}"
        return f"{s['arch']}/{s['patch_size']}@{size}"


def _grid_for(n_pos: int, patch: int, img_size) -> tuple[int, int]:
    if img_size is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if h % patch or w % patch or (h // patch) * (w // patch) != n_pos:
            raise KeyMapError(f"image size {h}x{w} with patch {patch} does not fit {n_pos} position rows")
        return h // patch, w // patch
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise KeyMapError(f"{n_pos} position rows is not a square grid; give the image size")
    return side, side


def infer_encoder_spec(
    state: dict[str, torch.Tensor], pos: torch.Tensor, *, num_heads: int | None = None,
    img_size=None, norm_eps: float = LAYER_NORM_EPS,
) -> dict:
    """The :meth:`Encoder.spec` that fits a state dict's shapes (imagejepa names).

    Width, depth, patch, channels and MLP width come from the shapes; the heads (which no
    shape shows) from ``num_heads`` or the architecture table by width. ``pos`` ``(1, N, D)``
    decides the grid (square unless ``img_size`` says otherwise) and whether the positions
    are I-JEPA's sin-cos ones (recomputed at any size) or learned (kept and resampled):
    for learned ones ``state["pos_embed"]`` is set to ``pos``.
    """
    if "patch_embed.proj.weight" not in state:
        raise KeyMapError("no patch embedding ('patch_embed.proj.weight') in the encoder state dict")
    dim, in_chans, ph, pw = state["patch_embed.proj.weight"].shape
    if ph != pw:
        raise KeyMapError(f"patch {ph}x{pw} is not square; imagejepa encoders use square patches")
    depth = block_count(state, r"blocks\.(\d+)\.")
    if depth == 0:
        raise KeyMapError("no transformer blocks ('blocks.N.*') in the encoder state dict")
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    same_width = [name for name, a in ARCHS.items() if a.embed_dim == dim]
    if num_heads is None:
        if not same_width:
            raise KeyMapError(f"width {dim} is not in the architecture table "
                              f"({', '.join(f'{n}={a.embed_dim}' for n, a in ARCHS.items())}); "
                              "give the number of heads")
        num_heads = ARCHS[same_width[0]].num_heads
    if dim % num_heads:
        raise KeyMapError(f"width {dim} is not divisible by {num_heads} heads")
    # The architecture name is a label; every size is given explicitly in the spec.
    arch = same_width[0] if same_width else min(ARCHS, key=lambda n: abs(ARCHS[n].embed_dim - dim))
    grid = _grid_for(pos.shape[-2], ph, img_size)
    if pos.shape[-1] != dim:
        raise KeyMapError(f"position embedding width {pos.shape[-1]} differs from the encoder's {dim}")
    spec = {
        "arch": arch, "patch_size": int(ph), "img_size": [grid[0] * ph, grid[1] * ph],
        "in_chans": int(in_chans), "embed_dim": int(dim), "depth": depth, "num_heads": int(num_heads),
        "mlp_hidden_dim": int(hidden), "norm_eps": float(norm_eps), "pos_embed": "sincos",
    }
    if not is_sincos(pos, grid):
        spec.update(pos_embed="learned", pos_grid=list(grid))
        state["pos_embed"] = pos.reshape(1, -1, dim)
    return spec


def infer_predictor_spec(state: dict[str, torch.Tensor], num_heads: int) -> dict:
    """Predictor width, depth and MLP ratio from shapes (imagejepa / official names); heads
    are the encoder's, as in the official code."""
    if "predictor_embed.weight" not in state:
        raise KeyMapError("no 'predictor_embed.weight' in the predictor state dict")
    pred_dim = state["predictor_embed.weight"].shape[0]
    depth = block_count(state, r"predictor_blocks\.(\d+)\.")
    if depth == 0:
        raise KeyMapError("no 'predictor_blocks.N.*' in the predictor state dict")
    hidden = state["predictor_blocks.0.mlp.fc1.weight"].shape[0]
    return {"pred_dim": int(pred_dim), "depth": depth, "num_heads": int(num_heads),
            "mlp_ratio": hidden / pred_dim}
