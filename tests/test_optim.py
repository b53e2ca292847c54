"""Tests of the optimiser parameter groups and per-step lr / weight-decay setting."""

from __future__ import annotations

import torch

from imagejepa.models import Encoder, Predictor
from imagejepa.train.optim import build_optimizer, param_groups, set_lr_and_wd


def modules():
    torch.manual_seed(0)
    encoder = Encoder("vit_tiny", patch_size=8, img_size=32, in_chans=3, depth=1)
    predictor = Predictor(encoder.embed_dim, encoder.grid, pred_dim=64, depth=1, num_heads=4)
    return encoder, predictor


def test_param_groups_split():
    encoder, predictor = modules()
    decay, no_decay = param_groups(encoder, predictor)
    decay_ids = {id(p) for p in decay["params"]}
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0
    assert decay["apply_weight_decay"] and not no_decay["apply_weight_decay"]

    named = {**{f"enc.{n}": p for n, p in encoder.named_parameters()},
             **{f"pred.{n}": p for n, p in predictor.named_parameters()}}
    for name, p in named.items():
        if name.endswith(".bias") or p.ndim == 1:
            assert id(p) in no_decay_ids, name
        else:
            assert id(p) in decay_ids, name
    # Spot checks by name.
    assert id(predictor.mask_token) in decay_ids
    assert id(encoder.patch_embed.proj.weight) in decay_ids
    assert id(encoder.blocks[0].attn.qkv.weight) in decay_ids
    assert id(encoder.blocks[0].norm1.weight) in no_decay_ids
    assert id(encoder.norm.bias) in no_decay_ids
    assert id(predictor.predictor_proj.bias) in no_decay_ids

    # Every trainable parameter exactly once.
    all_ids = [id(p) for p in decay["params"]] + [id(p) for p in no_decay["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(named)
    assert set(all_ids) == {id(p) for p in named.values()}


def test_frozen_parameters_are_left_out():
    encoder, predictor = modules()
    encoder.norm.requires_grad_(False)
    encoder.patch_embed.requires_grad_(False)
    groups = param_groups(encoder)
    ids = {id(p) for g in groups for p in g["params"]}
    assert id(encoder.norm.weight) not in ids
    assert id(encoder.patch_embed.proj.weight) not in ids
    assert len(ids) == sum(1 for p in encoder.parameters() if p.requires_grad)


def test_set_lr_and_wd_and_decoupled_decay():
    encoder, predictor = modules()
    opt = build_optimizer(encoder, predictor, lr=1e-3, device=torch.device("cpu"))
    set_lr_and_wd(opt, lr=0.01, weight_decay=0.5)
    decay, no_decay = opt.param_groups
    assert decay["lr"] == no_decay["lr"] == 0.01
    assert decay["weight_decay"] == 0.5
    assert no_decay["weight_decay"] == 0.0

    # With zero gradients AdamW's update is pure decoupled decay: decayed weights shrink by
    # (1 - lr * wd), biases and norm parameters do not move.
    before = {id(p): p.detach().clone() for g in opt.param_groups for p in g["params"]}
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    for p in decay["params"]:
        torch.testing.assert_close(p.detach(), before[id(p)] * (1 - 0.01 * 0.5))
    for p in no_decay["params"]:
        assert torch.equal(p.detach(), before[id(p)])

    set_lr_and_wd(opt, lr=0.02, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
