"""Tests of the fixed 2-D sine-cosine position embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagejepa.models.pos_embed import sincos_1d, sincos_2d


def reference_sincos_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """Written from the module docstring: first half encodes the column (x), second the row
    (y); each half is [sin(pos * w_k), cos(pos * w_k)], w_k = 1 / 10000^(k / (D/4))."""
    quarter = dim // 4
    out = np.zeros((grid_h * grid_w, dim))
    for r in range(grid_h):
        for c in range(grid_w):
            i = r * grid_w + c
            for k in range(quarter):
                w_k = 1.0 / 10000 ** (k / quarter)
                out[i, k] = np.sin(c * w_k)
                out[i, quarter + k] = np.cos(c * w_k)
                out[i, 2 * quarter + k] = np.sin(r * w_k)
                out[i, 3 * quarter + k] = np.cos(r * w_k)
    return out


@pytest.mark.parametrize("dim,h,w", [(16, 3, 3), (32, 4, 7), (8, 5, 2), (64, 1, 6)])
def test_matches_reference(dim, h, w):
    emb = sincos_2d(dim, h, w)
    assert emb.shape == (h * w, dim)
    assert emb.dtype == torch.float32
    np.testing.assert_allclose(emb.numpy(), reference_sincos_2d(dim, h, w), atol=1e-6)


def test_bounded_and_not_constant():
    emb = sincos_2d(64, 6, 5)
    assert emb.abs().max() <= 1.0
    assert emb.std() > 0.3
    # Different patches get different embeddings.
    assert torch.cdist(emb, emb).add(torch.eye(30) * 10).min() > 1e-3


def test_halves_depend_on_column_and_row_only():
    D, H, W = 32, 4, 6
    grid = sincos_2d(D, H, W).reshape(H, W, D)
    x_half, y_half = grid[..., : D // 2], grid[..., D // 2 :]
    # First half: identical down each column (same x), different across columns.
    assert torch.equal(x_half, x_half[:1].expand(H, W, D // 2))
    assert not torch.allclose(x_half[:, 0], x_half[:, 1])
    # Second half: identical along each row (same y), different across rows.
    assert torch.equal(y_half, y_half[:, :1].expand(H, W, D // 2))
    assert not torch.allclose(y_half[0], y_half[1])
    # Both halves are the same 1-D embedding of their coordinate.
    torch.testing.assert_close(x_half[0], sincos_1d(D // 2, torch.arange(W)).float())
    torch.testing.assert_close(y_half[:, 0], sincos_1d(D // 2, torch.arange(H)).float())


def test_non_square_grid_is_transpose_consistent():
    """Swapping grid height and width swaps the halves (x <-> y) and transposes raster order."""
    D, H, W = 16, 3, 5
    a = sincos_2d(D, H, W).reshape(H, W, D)
    b = sincos_2d(D, W, H).reshape(W, H, D)
    swapped = torch.cat([b[..., D // 2 :], b[..., : D // 2]], dim=-1).transpose(0, 1)
    torch.testing.assert_close(a, swapped)


@pytest.mark.parametrize("dim", [6, 10, 3])
def test_dim_not_divisible_by_4_raises(dim):
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(dim, 2, 2)


def test_sincos_1d_rejects_odd_width():
    with pytest.raises(ValueError, match="even"):
        sincos_1d(7, torch.arange(3))
