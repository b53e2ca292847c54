"""Tests of the vectorised multi-block mask sampler (``imagejepa.masking``)."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from imagejepa.bench.masks import loop_masks
from imagejepa.masking import MaskError, Masks, MaskSettings, MultiBlockMaskSampler

GRID = (14, 14)
N = GRID[0] * GRID[1]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_invariants(masks: Masks, batch: int, settings: MaskSettings, n: int = N) -> None:
    """Shapes, ranges, sorted unique context, no context/target overlap, min_keep."""
    context, targets = masks
    assert context.dtype == targets.dtype == torch.long
    assert context.ndim == 2 and context.shape[0] == batch
    assert targets.ndim == 3 and targets.shape[:2] == (batch, settings.num_targets)
    kc = context.shape[1]
    assert kc >= settings.min_keep
    assert context.min() >= 0 and context.max() < n
    assert targets.min() >= 0 and targets.max() < n
    # Sorted strictly increasing = sorted and unique.
    assert (context[:, 1:] > context[:, :-1]).all()
    for b in range(batch):
        ctx = set(context[b].tolist())
        for t in range(settings.num_targets):
            block = targets[b, t].tolist()
            assert len(set(block)) == len(block)
            assert not ctx & set(block), f"sample {b} target {t} overlaps the context"


def block_shape(indices: torch.Tensor, W: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a rectangular block given by raster indices; asserts it is one."""
    rows, cols = indices // W, indices % W
    top, left = int(rows.min()), int(cols.min())
    h, w = int(rows.max()) - top + 1, int(cols.max()) - left + 1
    assert len(indices) == h * w
    expected = {(top + i) * W + left + j for i in range(h) for j in range(w)}
    assert set(indices.tolist()) == expected
    return top, left, h, w


def test_shapes_and_invariants_default():
    s = MaskSettings()
    sampler = MultiBlockMaskSampler(GRID, s)
    g = gen(0)
    for _ in range(20):
        masks = sampler(64, g)
        check_invariants(masks, 64, s)
        # All target blocks of the batch are rectangles of one size (no padding).
        shapes = {block_shape(blk, GRID[1])[2:] for blk in masks.targets.flatten(0, 1)}
        assert len(shapes) == 1


def test_shapes_and_invariants_compat():
    s = MaskSettings(official_compat=True)
    sampler = MultiBlockMaskSampler(GRID, s)
    g = gen(1)
    for _ in range(10):
        masks = sampler(32, g)
        check_invariants(masks, 32, s)
        # compat: a context must keep *more than* min_keep patches.
        assert masks.context.shape[1] > s.min_keep


def test_target_sizes_follow_scale_and_aspect():
    s = MaskSettings()
    sampler = MultiBlockMaskSampler(GRID, s)
    g = gen(3)
    for _ in range(50):
        h, w = sampler.block_size(s.target_scale, s.target_aspect, g)
        # Areas int(196 * [0.15, 0.2]) = 29..39 and ratios 0.75..1.5, up to rounding of h, w.
        assert 29 * 0.75 <= h * w <= 40 * 1.3
        assert 0.75 * 0.75 <= h / w <= 1.5 * 1.25
        ch, cw = sampler.block_size(s.context_scale, s.context_aspect, g)
        assert ch == cw and 13 <= ch <= 14  # square, sqrt(196 * [0.85, 1]) = 12.9..14


def test_coverage_default_mode():
    """Over many draws every patch is covered by some target and by some context."""
    sampler = MultiBlockMaskSampler(GRID)
    g = gen(4)
    target_hits = torch.zeros(N, dtype=torch.long)
    context_hits = torch.zeros(N, dtype=torch.long)
    for _ in range(300):
        context, targets = sampler(16, g)
        target_hits += torch.bincount(targets.flatten(), minlength=N)
        context_hits += torch.bincount(context.flatten(), minlength=N)
    assert (target_hits > 0).all()
    assert (context_hits > 0).all()


def test_compat_never_covers_last_row_and_column():
    s = MaskSettings(official_compat=True)
    sampler = MultiBlockMaskSampler(GRID, s)
    g = gen(5)
    H, W = GRID
    target_hits = torch.zeros(N, dtype=torch.long)
    for _ in range(300):
        masks = sampler(16, g)
        target_hits += torch.bincount(masks.targets.flatten(), minlength=N)
        rows, cols = masks.targets // W, masks.targets % W
        assert rows.max() < H - 1 and cols.max() < W - 1
        assert (masks.context // W).max() < H - 1 and (masks.context % W).max() < W - 1
        _, _, h, w = block_shape(masks.targets[0, 0], W)
        assert h < H and w < W
    hits = target_hits.reshape(H, W)
    assert hits[-1].sum() == 0 and hits[:, -1].sum() == 0
    assert (hits[:-1, :-1] > 0).all()  # everything else is reachable
    for _ in range(100):
        ch, cw = sampler.block_size(s.context_scale, s.context_aspect, g)
        assert ch < H and cw < W


def test_pure_function_of_generator():
    sampler = MultiBlockMaskSampler(GRID)
    a, b, c = sampler(8, gen(7)), sampler(8, gen(7)), sampler(8, gen(8))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    different = a.context.shape != c.context.shape or not torch.equal(a.context, c.context)
    different |= a.targets.shape != c.targets.shape or not torch.equal(a.targets, c.targets)
    assert different
    # The global RNG plays no part.
    torch.manual_seed(0)
    d = sampler(8, gen(7))
    torch.manual_seed(123)
    e = sampler(8, gen(7))
    assert torch.equal(d.context, e.context) and torch.equal(d.targets, e.targets)


def test_compat_scale_and_aspect_come_from_one_draw():
    s_compat = MaskSettings(official_compat=True)
    compat = MultiBlockMaskSampler(GRID, s_compat)
    default = MultiBlockMaskSampler(GRID, MaskSettings())
    scale, aspect = s_compat.target_scale, s_compat.target_aspect

    # compat consumes one uniform per block size and uses it for both scale and aspect.
    for seed in range(20):
        u = torch.rand(1, generator=gen(seed)).item()
        assert compat.block_size(scale, aspect, gen(seed)) == compat._size_from_uniforms(
            scale, aspect, u, u
        )
        u1, u2 = torch.rand(2, generator=gen(seed)).tolist()
        assert default.block_size(scale, aspect, gen(seed)) == default._size_from_uniforms(
            scale, aspect, u1, u2
        )

    def sizes(sampler, seed):
        g = gen(seed)
        return {sampler.block_size(scale, aspect, g) for _ in range(2000)}

    def monotone(pairs) -> bool:
        """A larger aspect h/w never comes with a smaller h: one curve, not a 2-D region."""
        ordered = sorted(pairs, key=lambda hw: (hw[0] / hw[1], hw[0]))
        return all(a[0] <= b[0] for a, b in pairwise(ordered))

    compat_sizes, default_sizes = sizes(compat, 0), sizes(default, 0)
    assert monotone(compat_sizes)
    assert not monotone(default_sizes)
    assert len(default_sizes) > len(compat_sizes)


def record_truncation(sampler):
    """Wrap ``_truncate`` to record the boolean contexts it receives and the indices it keeps."""
    seen = []
    original = sampler._truncate

    def spy(context, g):
        kept = original(context, g)
        seen.append((context.clone(), kept))
        return kept

    sampler._truncate = spy
    return seen


def test_truncation_random_subset_default_vs_raster_compat():
    default = MultiBlockMaskSampler(GRID)
    compat = MultiBlockMaskSampler(GRID, MaskSettings(official_compat=True))
    seen_default, seen_compat = record_truncation(default), record_truncation(compat)
    g1, g2 = gen(9), gen(9)
    for _ in range(200):
        default(16, g1)
        compat(16, g2)

    def index_means(seen):
        kept_sum = kept_n = avail_sum = avail_n = 0.0
        dropped_any = False
        for available, kept in seen:
            idx = torch.arange(N, dtype=torch.float64)
            avail_sum += (available * idx).sum().item()
            avail_n += available.sum().item()
            kept_sum += kept.double().sum().item()
            kept_n += kept.numel()
            dropped_any |= bool((available.sum(1) > kept.shape[1]).any())
            # Kept indices are a subset of what was available.
            assert available.gather(1, kept).all()
        assert dropped_any  # truncation did happen
        return kept_sum / kept_n, avail_sum / avail_n

    kept_mean, avail_mean = index_means(seen_default)
    assert abs(kept_mean - avail_mean) < 1.0  # no bias towards low indices
    kept_mean_c, avail_mean_c = index_means(seen_compat)
    assert avail_mean_c - kept_mean_c > 2.0  # raster order drops the bottom/right

    # compat keeps exactly the first indices in raster order; default does not.
    not_first = False
    for (available, kept), mode in [(x, "compat") for x in seen_compat] + [
        (x, "default") for x in seen_default
    ]:
        k = kept.shape[1]
        for b in range(available.shape[0]):
            first = torch.nonzero(available[b]).squeeze(1)[:k]
            if mode == "compat":
                assert torch.equal(kept[b], first)
            elif not torch.equal(kept[b], first):
                not_first = True
    assert not_first


@pytest.mark.parametrize(
    "grid,settings",
    [
        ((4, 4), MaskSettings(min_keep=20)),
        ((8, 8), MaskSettings(num_targets=10, target_scale=(0.5, 0.6), min_keep=10)),
        # compat: targets must exceed min_keep patches (the official sampler would hang).
        ((14, 14), MaskSettings(min_keep=40, official_compat=True)),
    ],
)
def test_impossible_settings_raise(grid, settings):
    with pytest.raises(MaskError, match="min_keep"):
        MultiBlockMaskSampler(grid, settings)


def test_hard_but_feasible_settings_use_rejection():
    """8 targets of 40-50% of an 8x8 grid leave >= 10 context patches in ~16% of draws:
    accepted, and rejection sampling still returns valid masks."""
    s = MaskSettings(num_targets=8, target_scale=(0.4, 0.5), min_keep=10)
    sampler = MultiBlockMaskSampler((8, 8), s)
    g = gen(13)
    for _ in range(5):
        check_invariants(sampler(16, g), 16, s, n=64)


@pytest.mark.parametrize(
    "settings,key",
    [
        (MaskSettings(target_scale=(0.3, 0.2)), "target_scale"),
        (MaskSettings(context_scale=(0.5, 1.5)), "context_scale"),
        (MaskSettings(target_aspect=(0.0, 1.0)), "target_aspect"),
        (MaskSettings(num_targets=0), "num_targets"),
        (MaskSettings(min_keep=0), "min_keep"),
    ],
)
def test_bad_ranges_raise(settings, key):
    with pytest.raises(MaskError, match=key):
        MultiBlockMaskSampler(GRID, settings)


def test_mask_error_is_value_error():
    assert issubclass(MaskError, ValueError)


def test_loop_reference_same_shapes_and_invariants():
    s = MaskSettings()
    sampler = MultiBlockMaskSampler(GRID, s)
    for seed in range(5):
        fast = sampler(16, gen(seed))
        slow = loop_masks(16, GRID, s, gen(seed))
        check_invariants(slow, 16, s)
        # Both draw the block sizes first from the same generator: same target size.
        assert slow.targets.shape == fast.targets.shape
        for blk in slow.targets.flatten(0, 1):
            block_shape(blk, GRID[1])


def test_loop_reference_similar_context_sizes():
    """The vectorised sampler and the loop reference give contexts of similar sizes."""
    s = MaskSettings()
    sampler = MultiBlockMaskSampler(GRID, s)
    g1, g2 = gen(11), gen(12)
    fast = [sampler(16, g1).context.shape[1] for _ in range(40)]
    slow = [loop_masks(16, GRID, s, g2).context.shape[1] for _ in range(40)]
    mean_fast, mean_slow = sum(fast) / len(fast), sum(slow) / len(slow)
    assert abs(mean_fast - mean_slow) < 0.15 * mean_slow
