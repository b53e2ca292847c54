"""Multi-block masking (I-JEPA, Sec. 3): one context block and several target blocks.

For a batch on an ``H x W`` patch grid:

1. one target block size ``(h, w)`` and one context block size are drawn for the whole
   batch (so every sample has the same number of target patches: no padding);
2. each sample gets its own positions: ``T`` target blocks and one context block;
3. every target patch is removed from the context;
4. context lists are cut to the shortest in the batch by dropping patches uniformly at
   random (the official code keeps the first ones in raster order, which systematically
   drops the bottom/right of the context).

Everything is tensor code over the batch and a pure function of a ``torch.Generator``.
``official_compat=True`` reproduces the official sampler's distribution instead: scale and
aspect ratio from one shared draw, block origins with an exclusive upper bound (the last
row and column are never covered), blocks strictly smaller than the grid, raster-order
truncation, and a context that must keep *more than* ``min_keep`` patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .errors import MaskError

MAX_REJECTION_ROUNDS = 200


@dataclass(frozen=True)
class MaskSettings:
    """The paper's settings are the defaults (ranges are ``(low, high)``)."""

    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect: tuple[float, float] = (1.0, 1.0)
    min_keep: int = 10
    official_compat: bool = False


class Masks(NamedTuple):
    """Patch indices in raster order (``row * W + col``) on the patch grid."""

    context: torch.Tensor  # (B, Kc) long, sorted
    targets: torch.Tensor  # (B, T, Kt) long

    def to(self, device, non_blocking: bool = False) -> Masks:
        """Both index tensors on ``device`` (``non_blocking``: from pinned memory, overlapping
        the device's work)."""
        return Masks(self.context.to(device, non_blocking=non_blocking),
                     self.targets.to(device, non_blocking=non_blocking))

    def rows(self, part: slice) -> Masks:
        """The masks of the samples ``part`` of the batch."""
        return Masks(self.context[part], self.targets[part])


class RandomMaskSampler:
    """MAE's masking: ``sampler(batch_size, generator) -> Masks`` with ``context`` the
    ``round(N (1 - ratio))`` visible patches of each sample, drawn uniformly, and ``targets``
    ``(B, 1, N - Kc)`` the masked ones (one "block"), both sorted. A pure function of the
    generator, like the multi-block sampler."""

    def __init__(self, grid: tuple[int, int], ratio: float = 0.75):
        if not 0 < ratio < 1:
            raise MaskError(f"the mask ratio must be within (0, 1), got {ratio}")
        self.grid, self.ratio = tuple(grid), ratio
        n = grid[0] * grid[1]
        self.visible = min(n - 1, max(1, round(n * (1 - ratio))))

    def __call__(self, batch_size: int, generator: torch.Generator) -> Masks:
        n = self.grid[0] * self.grid[1]
        order = torch.rand(batch_size, n, generator=generator).argsort(dim=1)
        context = order[:, : self.visible].sort(dim=1).values
        targets = order[:, self.visible:].sort(dim=1).values[:, None]
        return Masks(context, targets)


class MultiBlockMaskSampler:
    """``sampler(batch_size, generator) -> Masks``; see the module docstring."""

    def __init__(self, grid: tuple[int, int], settings: MaskSettings = MaskSettings()):
        self.H, self.W = grid
        self.s = settings
        self._check_ranges()
        self._check_feasible()

    # -- block sizes ---------------------------------------------------------------------
    def block_size(
        self, scale: tuple[float, float], aspect: tuple[float, float], generator: torch.Generator
    ) -> tuple[int, int]:
        """One ``(h, w)`` for the whole batch, from a scale (fraction of the grid) and aspect h/w."""
        if self.s.official_compat:
            u_scale = u_aspect = torch.rand(1, generator=generator).item()
        else:
            u_scale, u_aspect = torch.rand(2, generator=generator).tolist()
        return self._size_from_uniforms(scale, aspect, u_scale, u_aspect)

    def _size_from_uniforms(self, scale, aspect, u_scale: float, u_aspect: float):
        area = int(self.H * self.W * (scale[0] + u_scale * (scale[1] - scale[0])))
        ratio = aspect[0] + u_aspect * (aspect[1] - aspect[0])
        h = int(round(math.sqrt(area * ratio)))
        w = int(round(math.sqrt(area / ratio)))
        # The official sampler keeps blocks strictly inside the grid; we allow the full grid.
        h_max, w_max = (self.H - 1, self.W - 1) if self.s.official_compat else (self.H, self.W)
        return max(1, min(h, h_max)), max(1, min(w, w_max))

    # -- positions -----------------------------------------------------------------------
    def _origins(self, h: int, w: int, count: tuple[int, ...], g: torch.Generator):
        """Top-left corners ``(count)`` of ``h x w`` blocks, uniform over valid placements."""
        # Official: randint(0, H - h), an exclusive bound that never reaches the last row.
        extra = 0 if self.s.official_compat else 1
        top = torch.randint(0, self.H - h + extra, count, generator=g)
        left = torch.randint(0, self.W - w + extra, count, generator=g)
        return top, left

    def _block_indices(self, top, left, h: int, w: int) -> torch.Tensor:
        """Origins ``(*S)`` -> raster indices of the blocks ``(*S, h * w)``."""
        rows = top[..., None] + torch.arange(h)
        cols = left[..., None] + torch.arange(w)
        return (rows[..., :, None] * self.W + cols[..., None, :]).flatten(-2)

    def _block_mask(self, top, left, h: int, w: int) -> torch.Tensor:
        """Origins ``(B,)`` -> boolean grid masks ``(B, H * W)`` of the blocks."""
        r, c = torch.arange(self.H), torch.arange(self.W)
        in_rows = (r >= top[:, None]) & (r < top[:, None] + h)
        in_cols = (c >= left[:, None]) & (c < left[:, None] + w)
        return (in_rows[:, :, None] & in_cols[:, None, :]).flatten(1)

    def _context_is_valid(self, counts: torch.Tensor) -> torch.Tensor:
        if self.s.official_compat:
            return counts > self.s.min_keep
        return counts >= self.s.min_keep

    def __call__(self, batch_size: int, generator: torch.Generator) -> Masks:
        s, B, g = self.s, batch_size, generator
        th, tw = self.block_size(s.target_scale, s.target_aspect, g)
        ch, cw = self.block_size(s.context_scale, s.context_aspect, g)

        t_top, t_left = self._origins(th, tw, (B, s.num_targets), g)
        c_top, c_left = self._origins(ch, cw, (B,), g)
        targets = self._block_indices(t_top, t_left, th, tw)  # (B, T, Kt)
        context = self._context_without(targets, c_top, c_left, ch, cw)

        # Rejection: redraw positions of samples whose context fell below min_keep.
        # (The official sampler redraws only the context block; so does compat mode.)
        for _ in range(MAX_REJECTION_ROUNDS):
            bad = ~self._context_is_valid(context.sum(1))
            n_bad = int(bad.sum())
            if n_bad == 0:
                break
            if not s.official_compat:
                tt, tl = self._origins(th, tw, (n_bad, s.num_targets), g)
                targets[bad] = self._block_indices(tt, tl, th, tw)
            ct, cl = self._origins(ch, cw, (n_bad,), g)
            context[bad] = self._context_without(targets[bad], ct, cl, ch, cw)
        if not self._context_is_valid(context.sum(1)).all():
            raise MaskError(
                f"could not place a context of at least {s.min_keep} patches after "
                f"{MAX_REJECTION_ROUNDS} rounds (grid {self.H}x{self.W}, target block "
                f"{th}x{tw} x{s.num_targets}, context block {ch}x{cw})"
            )
        return Masks(self._truncate(context, g), targets)

    def _context_without(self, targets, top, left, h, w) -> torch.Tensor:
        """Context block mask ``(B, N)`` with every target patch ``(B, T, Kt)`` removed."""
        context = self._block_mask(top, left, h, w)
        return context.scatter_(1, targets.flatten(1), False)

    def _truncate(self, context: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Boolean ``(B, N)`` -> indices ``(B, Kc)``, Kc the smallest count in the batch."""
        B = context.shape[0]
        keep = int(context.sum(1).min())
        if self.s.official_compat:  # the first `keep` indices in raster order
            chosen = context & (context.cumsum(1) <= keep)
            return chosen.nonzero()[:, 1].view(B, keep)
        # A uniformly random subset of each context: the `keep` smallest random keys.
        never = torch.iinfo(torch.int32).max
        keys = torch.randint(0, never, context.shape, generator=g, dtype=torch.int32)
        keys.masked_fill_(context.logical_not(), never)
        chosen = keys.topk(keep, dim=1, largest=False).indices
        return chosen.sort(dim=1).values

    # -- validation ----------------------------------------------------------------------
    def _check_ranges(self) -> None:
        s = self.s
        if self.H < 1 or self.W < 1:
            raise MaskError(f"patch grid must be at least 1x1, got {self.H}x{self.W}")
        if s.official_compat and (self.H < 2 or self.W < 2):
            raise MaskError("mask.official_compat needs a patch grid of at least 2x2")
        if s.num_targets < 1:
            raise MaskError(f"mask.num_targets must be >= 1, got {s.num_targets}")
        if s.min_keep < 1:
            raise MaskError(f"mask.min_keep must be >= 1, got {s.min_keep}")
        for name in ("target_scale", "context_scale", "target_aspect", "context_aspect"):
            lo, hi = getattr(s, name)
            if not 0 < lo <= hi:
                raise MaskError(f"mask.{name} must satisfy 0 < low <= high, got ({lo}, {hi})")
            if name.endswith("scale") and hi > 1:
                raise MaskError(f"mask.{name} is a fraction of the grid, must be <= 1, got {hi}")

    def _check_feasible(self, draws: int = 4096) -> None:
        """Fail before training when the context would (almost) never keep min_keep patches."""
        s = self.s
        if s.official_compat:
            # The official sampler loops forever on target blocks of <= min_keep patches.
            smallest = min(
                h * w
                for u in torch.linspace(0, 1, 101).tolist()
                for h, w in [self._size_from_uniforms(s.target_scale, s.target_aspect, u, u)]
            )
            if smallest <= s.min_keep:
                raise MaskError(
                    f"with mask.official_compat every target block must exceed mask.min_keep="
                    f"{s.min_keep} patches, but blocks of {smallest} patches are possible on a "
                    f"{self.H}x{self.W} grid"
                )
        g = torch.Generator().manual_seed(0)
        valid = 0
        for _ in range(draws // 64):
            th, tw = self.block_size(s.target_scale, s.target_aspect, g)
            ch, cw = self.block_size(s.context_scale, s.context_aspect, g)
            t_top, t_left = self._origins(th, tw, (64, s.num_targets), g)
            c_top, c_left = self._origins(ch, cw, (64,), g)
            targets = self._block_indices(t_top, t_left, th, tw)
            counts = self._context_without(targets, c_top, c_left, ch, cw).sum(1)
            valid += int(self._context_is_valid(counts).sum())
        if valid < 0.05 * draws:
            raise MaskError(
                f"mask settings leave the context below mask.min_keep={s.min_keep} patches in "
                f"{100 * (1 - valid / draws):.1f}% of draws on a {self.H}x{self.W} patch grid; "
                "lower mask.min_keep, mask.num_targets or mask.target_scale, raise "
                "mask.context_scale, or use a finer grid (smaller model.patch_size)"
            )
