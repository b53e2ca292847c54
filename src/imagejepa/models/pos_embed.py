"""Fixed 2-D sine-cosine position embeddings, computed for any grid.

Layout matches the official I-JEPA code so imported checkpoints line up: the first half of
the channels encodes the column (x) coordinate, the second half the row (y) coordinate;
each half is ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-k / (D/4))``.
Because they are a pure function of the grid, embeddings are recomputed (never
interpolated) when the image size changes.
"""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``(N,)`` positions -> ``(N, dim)`` embedding ``[sin | cos]``; dim must be even."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Embedding of a ``grid_h x grid_w`` patch grid in raster order: ``(grid_h * grid_w, dim)``."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_h), torch.arange(grid_w), indexing="ij"
    )
    emb_x = sincos_1d(dim // 2, cols.reshape(-1))
    emb_y = sincos_1d(dim // 2, rows.reshape(-1))
    return torch.cat([emb_x, emb_y], dim=1).float()


def resample_grid(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resampling of a learned position table to another grid.

    ``table (1, old_h * old_w, D) -> (1, new_h * new_w, D)``, raster order in and out.
    For learned embeddings only (imports from other libraries): sin-cos ones are recomputed.
    Same interpolation as Hugging Face's ``interpolate_pos_encoding`` (bicubic, no corner
    alignment, no antialias), so resampled imports still match the source library.
    """
    (oh, ow), (nh, nw) = tuple(old_grid), tuple(new_grid)
    if table.shape[-2] != oh * ow:
        raise ValueError(f"position table has {table.shape[-2]} rows, grid {oh}x{ow} needs {oh * ow}")
    if (oh, ow) == (nh, nw):
        return table
    dim = table.shape[-1]
    grid = table.reshape(1, oh, ow, dim).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(grid, size=(nh, nw), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, nh * nw, dim).to(table.dtype)
