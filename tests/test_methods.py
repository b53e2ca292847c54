"""The baselines behind the method seam (``method.name``): MAE, DINO and I-JEPA predicting
pixels. Each trains and resumes exactly, and its checkpoint is read by eval, embed and convert
as its evaluated encoder; the parts that make each method what it is are checked on
constructed cases."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from imagejepa import checkpoint as ckpt
from imagejepa.cli import main
from imagejepa.config import load_config
from imagejepa.interop.loading import load_encoder
from imagejepa.masking import RandomMaskSampler
from imagejepa.methods import build_method
from imagejepa.methods.dino import dino_loss, standardise
from imagejepa.methods.pixels import patch_pixels
from imagejepa.models import gather_tokens
from imagejepa.train.trainer import Trainer

from .helpers import TINY_OVERRIDES, final_tensors, losses, quiet

BASELINES = ("mae", "dino", "ijepa_pixels")
# Small enough to be quick: DINO with two local crops and a narrow head.
METHOD_SETTINGS = ["method.decoder_dim=32", "method.decoder_heads=2", "method.local_crops=2",
                   "method.head_hidden=64", "method.head_bottleneck=32", "method.head_out=128",
                   "method.warmup_teacher_temp=0.03", "optim.warmup_epochs=0.2",
                   "monitor.knn_every=0", "train.checkpoint_every_steps=null"]


def method_config(name: str, *extra: str):
    return load_config(None, TINY_OVERRIDES + METHOD_SETTINGS + [f"method.name={name}", *extra])


@pytest.mark.parametrize("name", BASELINES)
def test_each_method_resumes_exactly_and_its_checkpoint_is_read_by_eval_embed_and_convert(
        tmp_path, capsys, name):
    """6 steps, then 4 more after --resume, equal 10 steps straight (losses and every
    network's weights, fp32, 1e-6). The probes, embed and convert read the checkpoint's
    evaluated encoder (MAE's encoder, DINO's teacher backbone, the ablation's EMA encoder)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    Trainer(method_config(name, "train.max_steps=10"), straight, log=quiet).fit()
    Trainer(method_config(name, "train.max_steps=6"), split, log=quiet).fit()
    resumed = Trainer(method_config(name, "train.max_steps=10"), split, resume=True, log=quiet)
    assert resumed.step == 6
    resumed.fit()
    a, b = losses(straight), losses(split)
    assert len(a) == len(b) == 10 and all(x == x for x in a)
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-6
    wa, wb = final_tensors(straight), final_tensors(split)
    assert {k.split(".")[0] for k in wa} == set(resumed.model.networks)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
    # the networks trained (or followed their EMA): none is left at its initial weights
    fresh = build_method(method_config(name))
    for network in resumed.model.networks:
        before = dict(getattr(fresh, network).named_parameters())
        assert any(not torch.equal(wa[f"{network}.{k}"], before[k]) for k in before), network
    check_read_by_eval_embed_and_convert(tmp_path, capsys, name, straight)


def test_mae_masks_three_quarters_at_random():
    masks = RandomMaskSampler((4, 4), 0.75)(64, torch.Generator().manual_seed(0))
    assert masks.context.shape == (64, 4) and masks.targets.shape == (64, 1, 12)
    both = torch.cat([masks.context, masks.targets[:, 0]], dim=1).sort(dim=1).values
    assert torch.equal(both, torch.arange(16).expand(64, -1))  # visible and masked partition the grid
    counts = torch.bincount(masks.context.flatten(), minlength=16).float()
    assert counts.min() > 0  # every position is visible in some sample


def test_mae_loss_reads_only_the_masked_patches_pixels():
    """Replacing the visible patches of the target image by noise leaves the loss as it is;
    changing one masked patch changes it. The encoder sees the visible patches only."""
    torch.manual_seed(0)
    model = build_method(method_config("mae")).eval()
    images = torch.randn(2, 3, 32, 32)
    masks = model.mask_sampler()(2, torch.Generator().manual_seed(1))
    loss, metrics = model(images, masks)
    assert model.tap.take()[0].shape == (2, 1, 12, 8 * 8 * 3)
    noisy = images.clone().reshape(2, 3, 4, 8, 4, 8)
    masked_row_col = None
    for b in range(2):
        for index in masks.context[b].tolist():
            r, c = divmod(index, 4)
            noisy[b, :, r, :, c, :] = torch.randn(3, 8, 8) * 5
        masked_row_col = divmod(masks.targets[b, 0, 0].item(), 4)
    noisy = noisy.reshape(2, 3, 32, 32)
    same, _ = model(images, masks, pixels=noisy)
    assert torch.equal(same, loss)
    changed = images.clone().reshape(2, 3, 4, 8, 4, 8)
    r, c = masked_row_col
    changed[1, :, r, :, c, :] = torch.randn(3, 8, 8)
    other, _ = model(images, masks, pixels=changed.reshape(2, 3, 32, 32))
    assert not torch.isclose(other, loss)
    # the visible patches alone go through the encoder: changing a masked one leaves it as it is
    visible = model.encoder(images, keep=masks.context)
    torch.testing.assert_close(model.encoder(changed.reshape(2, 3, 32, 32), keep=masks.context), visible)


def test_patch_pixels_normalises_each_patch():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    pixels = patch_pixels(images, 4)
    assert pixels.shape == (2, 4, 4 * 4 * 3)
    torch.testing.assert_close(pixels.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels.var(-1), torch.ones(2, 4), atol=1e-4, rtol=0)
    # the first patch holds the top-left 4x4 of every channel, (row, col, channel) inside
    raw = images[0, :, :4, :4].permute(1, 2, 0).reshape(-1)
    torch.testing.assert_close(pixels[0, 0], (raw - raw.mean()) / (raw.var() + 1e-6).sqrt())


def test_ijepa_pixels_predicts_the_target_blocks_pixels():
    """The ablation's predictor outputs a patch's pixels; its targets are the normalised
    pixels of the target blocks, not the target encoder's features (which it never runs)."""
    torch.manual_seed(0)
    model = build_method(method_config("ijepa_pixels", "optim.loss=l2"))
    images = torch.randn(2, 3, 32, 32)
    masks = model.mask_sampler()(2, torch.Generator().manual_seed(1))
    model.target_encoder.forward = None  # any call to it would fail
    loss, _ = model(images, masks)
    predicted, target = model.tap.take()
    T, K = masks.targets.shape[1:]
    assert predicted.shape == (2, T, K, 8 * 8 * 3)
    torch.testing.assert_close(target, gather_tokens(patch_pixels(images, 8), masks.targets))
    torch.testing.assert_close(loss, F.mse_loss(predicted, target))


def test_dino_loss_centres_and_sharpens():
    """A constructed case: teacher logits for 2 global views, student logits for 3 views."""
    teacher = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])  # (B=1, G=2, K=3)
    student = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # (1, V=3, 3)
    center = torch.tensor([1.0, 0.0, 0.0])
    t = F.softmax((teacher - center) / 0.05, dim=-1)
    s = F.log_softmax(student / 0.1, dim=-1)
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]  # never a view against itself
    want = -sum((t[0, i] * s[0, j]).sum() for i, j in pairs) / len(pairs)
    got = dino_loss(student, teacher, center, 0.1, 0.05)
    torch.testing.assert_close(got, want)
    # centring: the first teacher view's favourite class is pulled down by the centre
    assert t[0, 0].argmax() == 0 and F.softmax(teacher[0, 0] - torch.tensor([3.0, 0, 0]), -1).argmax() != 0
    # sharpening: a lower teacher temperature gives a more peaked target
    sharp, soft = F.softmax(teacher[0, 0] / 0.04, -1), F.softmax(teacher[0, 0] / 1.0, -1)
    assert sharp.max() > soft.max()


def test_dino_head_input_is_standardised_over_the_batch():
    x = torch.randn(64, 8) * torch.arange(1, 9) + 5.0
    z = standardise(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.pow(2).mean(0), torch.ones(8), atol=1e-3, rtol=0)


def test_dino_centre_is_the_running_mean_of_the_teachers_outputs():
    torch.manual_seed(0)
    model = build_method(method_config("dino"))
    views = (torch.randn(4, 2, 3, 32, 32), torch.randn(4, 2, 3, 16, 16))
    model.begin_step(0.0)
    assert float(model.teacher_temp) == pytest.approx(0.03)  # warm-up start
    model.begin_step(1.0)
    assert float(model.teacher_temp) == pytest.approx(0.04)
    loss, _ = model(views)
    with torch.no_grad():
        teacher = model.target_head(standardise(model.target_encoder(views[0].flatten(0, 1)).mean(1)))
    model.update_target(0.99, moving=torch.tensor(True))
    torch.testing.assert_close(model.target_head.center, 0.1 * teacher.mean(0), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0  # local crops, too: any size
    before = model.target_head.center.clone()
    model(views)
    model.update_target(0.99, moving=torch.tensor(False))  # a skipped step moves nothing
    torch.testing.assert_close(model.target_head.center, before)


def check_read_by_eval_embed_and_convert(tmp_path, capsys, name, run):
    evaluated = {"mae": "encoder", "dino": "target_encoder", "ijepa_pixels": "target_encoder"}[name]
    tensors = final_tensors(run)
    encoder, _ = load_encoder(run)
    for k, v in encoder.state_dict().items():
        torch.testing.assert_close(v, tensors[f"{evaluated}.{k}"], rtol=0, atol=0)
    assert main(["eval", "knn", "--checkpoint", str(run), "--data", "synthetic", "--k", "5",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= report["results"]["target"]["k=5"]["top1"] <= 1
    out = tmp_path / "feats.npy"
    assert main(["embed", "--checkpoint", str(run), "--data", "synthetic", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["shape"] == [500, 192]
    assert main(["convert", str(run), str(tmp_path / "hf"), "--to", "hf"]) == 0
    back, _ = load_encoder(tmp_path / "hf")
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, tensors[f"{evaluated}.{k}"])
    assert ckpt.load_meta(ckpt.find_checkpoint(run))["method"] == name
