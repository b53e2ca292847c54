"""``imagejepa viz``: the picture primitives (monitor/pictures.py) and the four commands."""

import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from imagejepa.cli import main
from imagejepa.masking import Masks
from imagejepa.monitor.pictures import CONTEXT_DIM, TARGET_COLOURS, draw_masks, pca_rgb, tile, to_uint8_rgb
from imagejepa.viz.curves import curves_figure, reduce_points, run_labels
from imagejepa.viz.figure import PANEL_PX, PLOT_PX

P = PANEL_PX


def png_pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


# -- pictures (tensor only) ------------------------------------------------------------------

def test_to_uint8_rgb_undoes_the_normalisation_and_repeats_grey():
    pixels = torch.tensor([0, 64, 255], dtype=torch.float32).view(1, 1, 1, 3) / 255
    normalised = (pixels - 0.5) / 0.25
    out = to_uint8_rgb(normalised, [0.5], [0.25])
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 1, 3)
    for c in range(3):
        assert out[0, c, 0].tolist() == [0, 64, 255]
    colour = to_uint8_rgb(torch.full((2, 3, 4, 4), 10.0), [0.5] * 3, [0.25] * 3)
    assert (colour == 255).all()  # out of range is clipped, not wrapped


def test_draw_masks_darkens_outside_the_context_and_outlines_each_target():
    # A 4x4 grid of 4-pixel patches; context = the top-left 2x2 patches; target 0 = the
    # bottom-right 2x2 patches, target 1 = the top-right ones.
    images = torch.full((1, 3, 16, 16), 200, dtype=torch.uint8)
    targets = torch.tensor([[[10, 11, 14, 15], [2, 3, 6, 7]]])
    masks = Masks(context=torch.tensor([[0, 1, 4, 5]]), targets=targets)
    out = draw_masks(images, masks, (4, 4), 4)
    assert out.shape == images.shape and out.dtype == torch.uint8
    dim = round(200 * CONTEXT_DIM)
    assert out[0, :, 2, 2].tolist() == [200] * 3  # inside the context: untouched
    assert out[0, :, 9, 2].tolist() == [dim] * 3  # outside context and targets: darkened
    assert out[0, :, 12, 12].tolist() == [dim] * 3  # inside a target, off its outline
    assert out[0, :, 8, 8].tolist() == list(TARGET_COLOURS[0])  # target 0's corner
    assert out[0, :, 0, 15].tolist() == list(TARGET_COLOURS[1])  # target 1, at the image border
    # Target 0's outline is the 1-pixel frame of its 8x8 square: 28 pixels, nothing else.
    is_colour0 = (out[0] == torch.tensor(TARGET_COLOURS[0]).view(3, 1, 1)).all(0)
    assert int(is_colour0.sum()) == 28
    assert is_colour0[8:16, 8:16].sum() == 28


def test_draw_masks_rejects_images_that_are_not_the_grid():
    masks = Masks(torch.tensor([[0]]), torch.tensor([[[1]]]))
    with pytest.raises(ValueError, match="not a 4x4 grid"):
        draw_masks(torch.zeros(1, 3, 15, 16, dtype=torch.uint8), masks, (4, 4), 4)


def test_pca_rgb_gives_two_token_groups_distinct_colours():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    group = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 0]])  # (N=2, T=4) on a 2x2 grid
    tokens = torch.where(group[..., None].bool(), b, a) + 0.01 * torch.randn(2, 4, 16, generator=g)
    colours = pca_rgb(tokens, (2, 2))
    assert colours.shape == (2, 3, 2, 2)
    assert colours.min() >= 0 and colours.max() <= 1
    flat = colours.permute(0, 2, 3, 1).reshape(8, 3)
    in_a, in_b = flat[group.flatten() == 0], flat[group.flatten() == 1]
    assert torch.cdist(in_a, in_b).min() > 0.5  # the groups are far apart in colour
    # The first component (red) is the direction between the groups: one at each end.
    assert {round(float(in_a[:, 0].mean())), round(float(in_b[:, 0].mean()))} == {0, 1}
    assert (in_a[:, 0] - in_a[:, 0].mean()).abs().max() < 0.05
    assert pca_rgb(tokens[..., :2], (2, 2)).shape == (2, 3, 2, 2)  # fewer than 3 feature dims


def test_tile_lays_images_out_row_major():
    images = torch.stack([torch.full((3, 2, 2), i, dtype=torch.uint8) for i in range(1, 4)])
    grid = tile(images, columns=2, padding=1)
    assert grid.shape == (3, 2 * 3 + 1, 2 * 3 + 1)
    assert grid[0, 1, 1] == 1 and grid[0, 1, 4] == 2 and grid[0, 4, 1] == 3
    assert grid[0, 4, 4] == 0  # the empty cell


# -- the commands ----------------------------------------------------------------------------

def test_viz_masks_draws_the_configured_masks(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "masks.png"
    assert main(["viz", "masks", "--config", str(tiny_checkpoint / "config.yaml"), "--out", str(out),
                 "--images", "3", "--seed", "1"]) == 0
    assert png_size(out) == (3 * P, P)
    assert str(out) in capsys.readouterr().out
    pixels = png_pixels(out).reshape(-1, 3)
    for colour in TARGET_COLOURS[:4]:  # the tiny config's 4 target blocks, each outlined
        assert (pixels == colour).all(1).any(), colour

    wrapped = tmp_path / "wrapped.png"
    assert main(["viz", "masks", "--config", str(tiny_checkpoint / "config.yaml"), "--out", str(wrapped),
                 "--images", "10"]) == 0
    assert png_size(wrapped) == (8 * P, 2 * P)  # at most 8 a row


def test_viz_masks_with_the_official_sampler(tiny_checkpoint, tmp_path):
    cfg = yaml.safe_load((tiny_checkpoint / "config.yaml").read_text())
    cfg["mask"]["official_compat"] = True
    cfg["model"]["patch_size"] = 4  # an 8x8 grid: the official sampler's blocks exceed min_keep
    config = tmp_path / "official.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "masks.png"
    assert main(["viz", "masks", "--config", str(config), "--data", "synthetic", "--out", str(out),
                 "--images", "2"]) == 0
    assert png_size(out) == (2 * P, P)


def test_viz_features_shows_images_over_their_pca(tiny_checkpoint, tmp_path):
    out = tmp_path / "features.png"
    assert main(["viz", "features", "--checkpoint", str(tiny_checkpoint), "--data", "synthetic",
                 "--out", str(out), "--images", "3"]) == 0
    assert png_size(out) == (3 * P, 2 * P)
    pixels = png_pixels(out)
    # The PCA row is drawn from a 4x4 grid: flat colour blocks, unlike the noisy images.
    assert not np.array_equal(pixels[: P], pixels[P:])


def write_metrics(run, rows, columns=("step", "loss", "lr", "ema", "target_std")):
    run.mkdir(parents=True)
    lines = [",".join(columns)] + [",".join(str(v) for v in row) for row in rows]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_viz_curves_of_two_runs_one_without_the_newer_columns(tiny_checkpoint, tmp_path):
    old = tmp_path / "old" / "run"  # the same folder name as the tiny run: told apart by parent
    write_metrics(old, [(s, 1.0 / (s + 1), 1e-4, 0.996, 0.5) for s in range(3000)])
    out = tmp_path / "curves.png"
    assert main(["viz", "curves", str(tiny_checkpoint), str(old), "--out", str(out)]) == 0
    assert png_size(out) == (3 * PLOT_PX[0], 2 * PLOT_PX[1])

    fig = curves_figure([tiny_checkpoint, old])
    loss_ax, rankme_ax = fig.axes[0], fig.axes[3]
    names = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert names == run_labels([tiny_checkpoint, old])
    assert names == [f"{tiny_checkpoint.parent.name}/run", "old/run"]
    assert len(loss_ax.get_lines()) == 2 and len(rankme_ax.get_lines()) == 1  # only the new run
    fig = curves_figure([old])
    texts = [t.get_text() for t in fig.axes[3].texts]  # the RankMe panel
    assert texts == ["not recorded"]
    assert len(fig.axes[0].get_lines()[0].get_xdata()) <= 2000  # 3000 rows, reduced


def test_reduce_points_keeps_spikes():
    x = np.arange(100_000, dtype=float)
    y = np.ones_like(x)
    y[54_321] = 50.0
    rx, ry = reduce_points(x, y, max_points=1000)
    assert len(rx) <= 1000 and ry.max() == 50.0 and np.all(np.diff(rx) > 0)


def test_viz_neighbors_rows_of_query_and_k(tiny_checkpoint, tmp_path):
    out = tmp_path / "neighbors.png"
    assert main(["viz", "neighbors", "--checkpoint", str(tiny_checkpoint), "--data", "synthetic",
                 "--out", str(out), "--queries", "2", "--k", "3", "--bank", "200"]) == 0
    assert png_size(out) == ((1 + 3) * P, 2 * P)


def test_viz_errors_are_one_line_and_exit_2(tiny_checkpoint, tmp_path, capsys):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    assert main(["viz", "curves", str(not_a_run), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert str(not_a_run) in err and "metrics.csv" in err and len(err.strip().splitlines()) == 1

    config = str(tiny_checkpoint / "config.yaml")
    assert main(["viz", "masks", "--config", config, "--out", str(tmp_path / "m.png"), "--images", "0"]) == 2
    assert "--images must be between 1 and 64, got 0" in capsys.readouterr().err
    assert main(["viz", "masks", "--config", config, "--out", str(tmp_path / "m.jpg")]) == 2
    assert "--out must end in .png" in capsys.readouterr().err
    assert main(["viz", "neighbors", "--checkpoint", str(tiny_checkpoint), "--data", "synthetic",
                 "--out", str(tmp_path / "n.png"), "--k", "0"]) == 2
    assert "--k must be between 1 and 16, got 0" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_viz_curves_needs_a_step_column(tmp_path, capsys):
    run = tmp_path / "run"
    write_metrics(run, [(1.0,)], columns=("loss",))
    assert main(["viz", "curves", str(run), "--out", str(tmp_path / "c.png")]) == 2
    assert "no 'step' column" in capsys.readouterr().err
    shutil.rmtree(run)
