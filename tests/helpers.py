"""Shared settings for tests: a tiny, fast, deterministic run on synthetic data."""

TINY_OVERRIDES = [
    "data.dataset=synthetic",
    "data.batch_size=8",
    "model.arch=vit_tiny",
    "model.img_size=32",
    "model.patch_size=8",
    "model.in_chans=3",
    "model.depth=1",
    "eval.last_layers=1",
    "model.pred_depth=1",
    "model.pred_dim=48",
    "mask.min_keep=2",
    "optim.epochs=2",
    "optim.warmup_epochs=0.1",
    "train.precision=fp32",
    "train.checkpoint_every_steps=2",
    "train.checkpoint_every_minutes=null",
    "train.log_every=1",
]
