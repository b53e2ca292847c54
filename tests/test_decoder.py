"""The stochastic pixel decoder (issue 13, first part): it learns a toy features -> pixels
mapping better than the mean image, its samples differ where the features leave the pixels
uncertain, and its checkpoints round-trip."""

import pytest
import torch

from imagejepa.checkpoint import CheckpointError
from imagejepa.decoder import PixelDecoder
from imagejepa.decoder.store import load_decoder, save_decoder
from imagejepa.models.layers import patchify, unpatchify

GRID, PATCH, DIM = (4, 4), 2, 16
BLOCK = torch.tensor([0, 1, 4, 5])  # a 2 x 2 block of patches, moved around the grid


def toy_batch(n: int, generator: torch.Generator, mix: torch.Tensor, informative: bool):
    """Blocks of 4 patches of 4 random pixels; features a linear mix of each patch's pixels
    (``informative``) or of its mean only (the rest of the pixels unknown)."""
    pixels = torch.randn(n, 4, PATCH * PATCH, generator=generator)  # (B, K, P)
    top = torch.randint(0, 3, (n,), generator=generator)
    left = torch.randint(0, 3, (n,), generator=generator)
    positions = (top * GRID[1] + left)[:, None] + BLOCK[None]
    features = pixels @ mix if informative else pixels.mean(-1, keepdim=True) * mix.sum(0)
    return pixels, features, positions


def trained_decoder(informative: bool, steps: int = 400) -> tuple[PixelDecoder, torch.Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(PATCH * PATCH, DIM, generator=g)
    decoder = PixelDecoder(DIM, PATCH, 1, GRID, width=64, depth=2, num_heads=4)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=2e-3)
    for _ in range(steps):
        loss = decoder.loss(*toy_batch(96, g, mix, informative), generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return decoder, mix


def test_patchify_round_trips_in_the_encoders_token_order():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    tokens = patchify(images, 4)
    assert tokens.shape == (2, 4, 3 * 16)
    assert torch.equal(tokens[0, 1], images[0, :, 0:4, 4:8].reshape(-1))  # patch (0, 1): row-major
    assert torch.equal(unpatchify(tokens, (2, 2), 4, 3), images)


@pytest.mark.slow
def test_decoder_learns_a_toy_mapping_and_samples_show_uncertainty():
    g = torch.Generator().manual_seed(7)
    sharp, mix = trained_decoder(informative=True)
    pixels, features, positions = toy_batch(256, g, mix, informative=True)
    one = sharp.sample(features, positions, generator=torch.Generator().manual_seed(1))
    two = sharp.sample(features, positions, generator=torch.Generator().manual_seed(2))
    mean_image_error = (pixels**2).mean().item()  # the pixels' mean is 0
    assert ((one - pixels) ** 2).mean().item() < 0.4 * mean_image_error
    sharp_spread = ((one - two) ** 2).mean().item()

    vague, mix = trained_decoder(informative=False)
    pixels, features, positions = toy_batch(256, g, mix, informative=False)
    one = vague.sample(features, positions, generator=torch.Generator().manual_seed(1))
    two = vague.sample(features, positions, generator=torch.Generator().manual_seed(2))
    vague_spread = ((one - two) ** 2).mean().item()
    # Where the features do not determine the pixels, samples differ (two independent draws
    # of 3 unknown directions of variance 1: about 1.5), far more than where they do.
    assert vague_spread > 0.8 and vague_spread > 3 * sharp_spread
    # They are draws of pixels, not an average of them: about the data's variance of 1.
    assert 0.6 < one.var().item() < 1.5


def test_decoder_checkpoints_round_trip_and_are_verified(tmp_path):
    torch.manual_seed(0)
    decoder = PixelDecoder(DIM, PATCH, 1, GRID, width=32, depth=1, num_heads=2)
    for p in decoder.parameters():
        p.data.normal_(0, 0.1)  # not the zero-initialised output layer: samples depend on weights
    optimizer = torch.optim.AdamW(decoder.parameters())
    decoder.loss(torch.randn(4, 4, 4), torch.randn(4, 4, DIM), BLOCK.repeat(4, 1)).backward()
    optimizer.step()
    folder = save_decoder(tmp_path / "dec", 12, decoder, optimizer, {"source": "runs/demo"})
    loaded, meta, state = load_decoder(tmp_path / "dec", optimizer_for=True)
    assert meta["step"] == 12 and meta["source"] == "runs/demo" and state["step"] == 12
    assert state["optimizer"]["state"]  # the moments, to resume
    features, positions = torch.randn(3, 4, DIM), BLOCK.repeat(3, 1)
    expected = decoder.eval().sample(features, positions, generator=torch.Generator().manual_seed(5))
    got = loaded.sample(features, positions, generator=torch.Generator().manual_seed(5))
    assert torch.equal(expected, got)
    with open(folder / "model.safetensors", "r+b") as f:  # a damaged file is refused
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(CheckpointError):
        load_decoder(folder)


def _decoder_train(checkpoint, out, steps, *extra):
    from imagejepa.cli import main

    return main(["decoder", "train", "--checkpoint", str(checkpoint), "--data", "synthetic",
                 "--out", str(out), "--steps", str(steps), "--batch-size", "4", "--score-images", "16",
                 *extra])


@pytest.mark.slow
def test_decoder_train_prints_its_scores_and_resumes_exactly(tiny_checkpoint, tmp_path, capsys):
    """`decoder train` on the tiny run's target features: one JSON line with the four pixel
    errors and the spread; stopped at step 6 and continued to 10, it ends with the weights of
    an uninterrupted 10-step run."""
    import json

    from imagejepa.checkpoint import load_tensors, resolve_checkpoint

    assert _decoder_train(tiny_checkpoint, tmp_path / "straight", 10) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["step"] == 10 and line["images"] == 16 and line["blocks"] > 16
    for key in ("error_target_features", "error_predictor", "error_random_init", "error_mean_image",
                "sample_spread"):
        assert line[key] > 0 and line[key] == line[key]
    assert _decoder_train(tiny_checkpoint, tmp_path / "resumed", 6) == 0
    assert _decoder_train(tiny_checkpoint, tmp_path / "resumed", 10) == 0
    assert "continuing" in capsys.readouterr().err
    straight = load_tensors(resolve_checkpoint(tmp_path / "straight"))
    resumed = load_tensors(resolve_checkpoint(tmp_path / "resumed"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6)
    # Other settings in the same folder: refused, naming them.
    assert _decoder_train(tiny_checkpoint, tmp_path / "resumed", 12, "--lr", "0.5") == 2
    assert "lr" in capsys.readouterr().err


def test_viz_predictions_has_the_panels_asked_for(tiny_checkpoint, tmp_path, capsys):
    """Rows of: image with targets, context, decoded targets, then the samples of the decoded
    predictions, which differ from one another."""
    import numpy as np
    from PIL import Image

    from imagejepa.cli import main
    from imagejepa.viz.figure import PANEL_PX

    assert _decoder_train(tiny_checkpoint, tmp_path / "dec", 4) == 0
    out = tmp_path / "predictions.png"
    viz = ["viz", "predictions", "--checkpoint", str(tiny_checkpoint), "--decoder", str(tmp_path / "dec"),
           "--data", "synthetic", "--out", str(out)]
    assert main([*viz, "--images", "2", "--samples", "2"]) == 0
    assert "10 panels" in capsys.readouterr().out
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape == (2 * PANEL_PX, 5 * PANEL_PX, 3)
    first, second = (picture[:, c * PANEL_PX:(c + 1) * PANEL_PX] for c in (3, 4))
    assert np.abs(first.astype(int) - second.astype(int)).sum() > 0  # two draws, two pictures
    assert main([*viz, "--samples", "0"]) == 2
    assert "--samples must be between 1 and 8" in capsys.readouterr().err


def test_decoder_train_reads_an_official_checkpoint(tmp_path, capsys):
    """An official .pth.tar carries a predictor: the decoder trains on it and scores it."""
    import json

    from .helpers import official_save_dict, tiny_ijepa

    src = tmp_path / "in1k-tiny-ep7.pth.tar"
    torch.save(official_save_dict(tiny_ijepa()), src)
    assert _decoder_train(src, tmp_path / "dec", 2) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["source"] == str(src) and line["error_predictor"] > 0
