"""Pictures of a run as plain tensors: images back in their colours, the multi-block masks
drawn over them, patch features as PCA colours, and tiles of panels.

Torch only (no plotting library): the trainer sends these to TensorBoard or W&B as they are,
and ``imagejepa viz`` lays the same tensors out with matplotlib, so both show the same
drawing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..masking import Masks

# Outside the context a patch keeps this fraction of its brightness: still readable,
# clearly not seen by the context encoder.
CONTEXT_DIM = 0.35
# One colour per target block (uint8 RGB), repeated when there are more blocks.
TARGET_COLOURS = (
    (255, 64, 64), (64, 220, 64), (64, 128, 255), (255, 220, 0),
    (255, 0, 255), (0, 230, 230), (255, 140, 0), (255, 255, 255),
)


def to_uint8_rgb(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised float ``(N, C, H, W)`` (C = 1 or 3) -> uint8 ``(N, 3, H, W)`` in the
    original colours: the normalisation undone, grey repeated to three channels."""
    c = images.shape[1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    if mean_t.shape[1] not in (1, c) or std_t.shape[1] not in (1, c):
        raise ValueError(f"mean/std have {mean_t.shape[1]}/{std_t.shape[1]} values for {c} channels")
    pixels = images.detach().float().cpu() * std_t + mean_t
    out = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    return out.expand(-1, 3, -1, -1).contiguous() if c == 1 else out


def patch_mask(indices: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch indices ``(N, K)`` (raster order) -> boolean grid ``(N, h, w)``."""
    h, w = grid
    mask = torch.zeros(indices.shape[0], h * w, dtype=torch.bool)
    mask.scatter_(1, indices.long().cpu(), True)
    return mask.view(-1, h, w)


def outline(region: torch.Tensor, width: int) -> torch.Tensor:
    """Boolean ``(N, H, W)`` -> the pixels of ``region`` within ``width`` of its edge
    (the image border counts as an edge, so a block touching it is closed)."""
    outside = F.pad((~region).float()[:, None], (width,) * 4, value=1.0)
    near_outside = F.max_pool2d(outside, 2 * width + 1, stride=1)[:, 0] > 0
    return region & near_outside


def draw_masks(images_rgb: torch.Tensor, masks: Masks, grid: tuple[int, int],
               patch_size: int) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` + ``Masks`` (context ``(N, Kc)``, targets ``(N, T, Kt)``) ->
    uint8 ``(N, 3, H, W)``: patches outside the context darkened, each target block
    outlined in its own colour (``TARGET_COLOURS[t]``). ``H, W = grid * patch_size``."""
    n, _, height, width = images_rgb.shape
    if (height, width) != (grid[0] * patch_size, grid[1] * patch_size):
        raise ValueError(f"images of {height}x{width} pixels are not a {grid[0]}x{grid[1]} grid "
                         f"of {patch_size}-pixel patches")
    p = patch_size

    def to_pixels(patches):  # (N, h, w) -> (N, H, W)
        return patches.repeat_interleave(p, 1).repeat_interleave(p, 2)

    out = images_rgb.cpu().float()
    in_context = to_pixels(patch_mask(masks.context, grid))[:, None]  # (N, 1, H, W)
    out = torch.where(in_context, out, out * CONTEXT_DIM)
    line = max(1, p // 8)  # thin on small patches, still visible on 16-pixel ones
    for t in range(masks.targets.shape[1]):
        edge = outline(to_pixels(patch_mask(masks.targets[:, t], grid)), line)[:, None]
        colour = torch.tensor(TARGET_COLOURS[t % len(TARGET_COLOURS)], dtype=torch.float32)
        out = torch.where(edge, colour.view(1, 3, 1, 1), out)
    return out.round().to(torch.uint8)


def pca_rgb(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens ``(N, T, D)`` (``T = h * w``) -> float ``(N, 3, h, w)`` in [0, 1]: the
    first three principal components, fitted jointly over all ``N * T`` tokens (so colours
    mean the same in every image), each min-max scaled over all tokens."""
    n, t, d = tokens.shape
    h, w = grid
    if t != h * w:
        raise ValueError(f"{t} tokens are not a {h}x{w} grid")
    x = tokens.detach().reshape(n * t, d).double().cpu()
    x = x - x.mean(0)
    # Eigenvectors of the (D, D) covariance: exact and deterministic (pca_lowrank is random).
    _, vectors = torch.linalg.eigh(x.T @ x)
    components = vectors.flip(1)[:, :3]  # (D, <=3), largest variance first
    # An eigenvector's sign is arbitrary: point each one at its largest loading, so the
    # same features give the same colours.
    biggest = components.abs().argmax(0)
    components = components * components.gather(0, biggest[None]).sign()
    projected = x @ components  # (N*T, <=3)
    if projected.shape[1] < 3:  # fewer than three feature dimensions
        projected = F.pad(projected, (0, 3 - projected.shape[1]))
    low, high = projected.min(0).values, projected.max(0).values
    scaled = (projected - low) / (high - low).clamp_min(1e-12)
    return scaled.float().reshape(n, h, w, 3).permute(0, 3, 1, 2).contiguous()


def tile(images: torch.Tensor, columns: int, padding: int = 2) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> one uint8 ``(3, rows * (H + pad) + pad, columns * (W + pad) + pad)``
    grid, row-major, on a black background (empty cells stay black)."""
    n, c, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    step_h, step_w = h + padding, w + padding
    out = torch.zeros(c, rows * step_h + padding, columns * step_w + padding, dtype=images.dtype)
    for i in range(n):
        top, left = padding + (i // columns) * step_h, padding + (i % columns) * step_w
        out[:, top : top + h, left : left + w] = images[i]
    return out
