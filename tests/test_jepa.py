"""Tests of the I-JEPA objective and the EMA target encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from imagejepa.config import from_dict
from imagejepa.jepa import IJEPA, build_ijepa
from imagejepa.masking import Masks, MaskSettings, MultiBlockMaskSampler
from imagejepa.models import Encoder, Predictor


def make_model(loss: str = "smooth_l1") -> IJEPA:
    torch.manual_seed(0)
    encoder = Encoder("vit_tiny", patch_size=8, img_size=32, in_chans=3, depth=1)
    predictor = Predictor(encoder.embed_dim, encoder.grid, pred_dim=64, depth=1, num_heads=4)
    return IJEPA(encoder, predictor, loss=loss)


@pytest.fixture
def batch():
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32)
    masks = Masks(
        context=torch.tensor([[0, 1, 2, 4, 5, 6, 8, 9], [2, 3, 6, 7, 10, 11, 14, 15]]),
        targets=torch.tensor([[[10, 11, 14, 15], [3, 7, 11, 15]], [[0, 1, 4, 5], [8, 9, 12, 13]]]),
    )
    return images, masks


def params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_forward_returns_finite_scalar_and_metrics(batch):
    model = make_model()
    loss, metrics = model(*batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    assert metrics["context_patches"] == 8 and metrics["target_patches"] == 4
    assert metrics["target_std"] > 0 and metrics["pred_std"] > 0


def test_works_with_sampled_masks():
    model = make_model()
    sampler = MultiBlockMaskSampler((4, 4), MaskSettings(num_targets=2, min_keep=2))
    masks = sampler(3, torch.Generator().manual_seed(0))
    loss, _ = model(torch.randn(3, 3, 32, 32), masks)
    assert torch.isfinite(loss)


def test_target_encoder_is_frozen(batch):
    model = make_model()
    assert all(not p.requires_grad for p in model.target_encoder.parameters())
    assert all(p.requires_grad for p in model.encoder.parameters())
    loss, _ = model(*batch)
    loss.backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    for name, p in [*model.encoder.named_parameters(), *model.predictor.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # The target starts as an exact copy of the encoder, in separate storage.
    for a, b in zip(model.encoder.parameters(), model.target_encoder.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_losses_match_manual_computation(batch):
    images, masks = batch
    model = make_model(loss="l2")
    # Make the target differ from the encoder so the loss is not trivial.
    model.update_target(0.0)
    with torch.no_grad():
        for p in model.target_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    l2, _ = model(images, masks)
    predicted = model.predictor(model.encoder(images, keep=masks.context), masks.context,
                                masks.targets)
    target = model.targets(images, masks.targets)
    assert predicted.shape == target.shape == (2, 2, 4, 192)
    torch.testing.assert_close(l2, ((predicted - target) ** 2).mean())

    model.loss_name = "smooth_l1"
    smooth, _ = model(images, masks)
    torch.testing.assert_close(smooth, F.smooth_l1_loss(predicted, target, beta=1.0))
    assert torch.isfinite(smooth) and torch.isfinite(l2)
    assert abs(smooth.item() - l2.item()) > 1e-4


def test_unknown_loss_raises():
    encoder = Encoder("vit_tiny", 8, 32, 3, depth=1)
    predictor = Predictor(192, encoder.grid, pred_dim=64, depth=1, num_heads=4)
    with pytest.raises(ValueError, match="smooth_l1"):
        IJEPA(encoder, predictor, loss="l1")


def test_targets_are_layer_normed(batch):
    images, _ = batch
    model = make_model()
    # Move the target encoder's final norm away from (1, 0) so its output is not normalised.
    with torch.no_grad():
        model.target_encoder.norm.weight.uniform_(1.5, 3.0)
        model.target_encoder.norm.bias.uniform_(0.5, 2.0)
    raw = model.target_encoder(images)
    assert raw.mean(-1).min() > 0.5 and raw.var(-1).min() > 1.5  # not normalised before
    all_idx = torch.arange(16).expand(2, 1, 16)
    target = model.targets(images, all_idx)
    assert target.shape == (2, 1, 16, 192)
    assert not target.requires_grad
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 1, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        target.var(-1, unbiased=False), torch.ones(2, 1, 16), atol=1e-3, rtol=0
    )
    # And the gather picks the right tokens.
    idx = torch.tensor([[[5, 2]], [[15, 0]]])
    picked = model.targets(images, idx)
    torch.testing.assert_close(picked[0, 0, 0], target[0, 0, 5])
    torch.testing.assert_close(picked[1, 0, 1], target[1, 0, 0])


def perturbed_model() -> IJEPA:
    model = make_model()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    return model


def test_update_target_momentum_one_keeps_target():
    model = perturbed_model()
    before = params(model.target_encoder)
    model.update_target(1.0)
    for a, b in zip(before, model.target_encoder.parameters(), strict=True):
        assert torch.equal(a, b)


def test_update_target_momentum_zero_copies_encoder():
    model = perturbed_model()
    model.update_target(0.0)
    for a, b in zip(model.encoder.parameters(), model.target_encoder.parameters(), strict=True):
        assert torch.equal(a, b)


def test_update_target_half_is_average():
    model = perturbed_model()
    target_before = params(model.target_encoder)
    online = params(model.encoder)
    model.update_target(0.5)
    for t, o, new in zip(target_before, online, model.target_encoder.parameters(), strict=True):
        torch.testing.assert_close(new, 0.5 * t + 0.5 * o)
    model.update_target(0.9)  # general momentum
    expected = [0.9 * (0.5 * t + 0.5 * o) + 0.1 * o
                for t, o in zip(target_before, online, strict=True)]
    for e, new in zip(expected, model.target_encoder.parameters(), strict=True):
        torch.testing.assert_close(new, e)


def test_target_changes_only_through_update_target(batch):
    model = make_model()
    opt = torch.optim.SGD([*model.encoder.parameters(), *model.predictor.parameters()], lr=0.1)
    target_before = params(model.target_encoder)
    encoder_before = params(model.encoder)
    loss, _ = model(*batch)
    loss.backward()
    opt.step()
    encoder_after = list(model.encoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(encoder_before, encoder_after, strict=True))
    for a, b in zip(target_before, model.target_encoder.parameters(), strict=True):
        assert torch.equal(a, b)
    model.update_target(0.996)
    target_after = list(model.target_encoder.parameters())
    for t, o, new in zip(target_before, model.encoder.parameters(), target_after, strict=True):
        torch.testing.assert_close(new, 0.996 * t + 0.004 * o.detach())
    assert any(not torch.equal(a, b) for a, b in zip(target_before, target_after, strict=True))


def test_build_ijepa_from_config():
    cfg = from_dict({
        "model": {"arch": "vit_tiny", "patch_size": 8, "img_size": 32, "depth": 1,
                  "pred_depth": 1, "pred_dim": 48, "pred_heads": 4},
        "mask": {"num_targets": 2, "min_keep": 2},
        "data": {"dataset": "synthetic"},
        "optim": {"loss": "l2"},
    })
    model = build_ijepa(cfg)
    assert model.loss_name == "l2"
    assert len(model.encoder.blocks) == 1 and model.encoder.embed_dim == 192
    assert len(model.predictor.predictor_blocks) == 1 and model.predictor.pred_dim == 48
    assert model.predictor.predictor_blocks[0].attn.num_heads == 4
    assert model.predictor.grid == (4, 4)


@pytest.mark.slow
def test_compiled_step_makes_one_graph_whatever_the_block_lengths(tmp_path, monkeypatch):
    """Compiled with dynamic shapes, the forward and backward on a 14x14 grid meet several
    context and target lengths in one graph (the loss over 4-D features once made the
    backward's compiler specialise on the target length: a graph per new length, and after
    dynamo's limit of 8, eager without a word), with the eager model's losses and gradients."""
    import torch._dynamo

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.manual_seed(0)
    encoder = Encoder("vit_tiny", patch_size=4, img_size=56, in_chans=1, depth=1)
    predictor = Predictor(encoder.embed_dim, encoder.grid, pred_dim=32, depth=1, num_heads=2)
    model = IJEPA(encoder, predictor)
    sampler = MultiBlockMaskSampler(encoder.grid)
    g = torch.Generator().manual_seed(0)
    masks = [sampler(2, g) for _ in range(5)]
    assert len({m.targets.shape[2] for m in masks}) >= 3 and len({m.context.shape[1] for m in masks}) >= 3
    images = torch.randn(2, 1, 56, 56)
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=True)
    for m in masks:
        got, _ = compiled(images, m)
        got.backward()
        got_grads = [p.grad.clone() for p in model.encoder.parameters()]
        model.zero_grad()
        want, _ = model(images, m)
        want.backward()
        assert float(got) == pytest.approx(float(want), rel=1e-4)
        for a, b in zip(got_grads, (p.grad for p in model.encoder.parameters())):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        model.zero_grad()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
