"""Shared settings for tests: a tiny, fast, deterministic run on synthetic data, and the
helpers of the tests that start training in subprocesses."""

import csv
import os
import signal
from pathlib import Path

ROOT = Path(__file__).parents[1]

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


def tiny_ijepa(seed: int = 0):
    """A tiny I-JEPA model (vit_tiny width, 4x4 grid) whose target encoder differs from its
    encoder, as after some training."""
    import torch

    from imagejepa.config import load_config
    from imagejepa.jepa import build_ijepa

    torch.manual_seed(seed)
    model = build_ijepa(load_config(None, TINY_OVERRIDES + ["model.depth=2", "model.pred_depth=2"]))
    with torch.no_grad():
        for p in model.target_encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def official_save_dict(model, epoch: int = 7) -> dict:
    """What the official I-JEPA training loop saves: three DDP-wrapped state dicts (``module.``
    prefixes, stored sin-cos positions), optimiser and scaler state, epoch and a few numbers."""
    import torch

    from imagejepa.models.pos_embed import sincos_2d

    grid = model.encoder.grid

    def wrapped(state, pos_name, width):
        out = {f"module.{pos_name}": sincos_2d(width, *grid)[None]}
        out.update({f"module.{k}": v.clone() for k, v in state.items()})
        return out

    params = list(model.encoder.parameters()) + list(model.predictor.parameters())
    opt = torch.optim.AdamW(params, lr=0.0)  # real optimiser state; lr 0 leaves the weights as they are
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.zeros_like(p)
    opt.step()
    return {
        "encoder": wrapped(model.encoder.state_dict(), "pos_embed", model.encoder.embed_dim),
        "predictor": wrapped(model.predictor.state_dict(), "predictor_pos_embed", model.predictor.pred_dim),
        "target_encoder": wrapped(model.target_encoder.state_dict(), "pos_embed", model.encoder.embed_dim),
        "opt": opt.state_dict(),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                   "growth_interval": 2000, "_growth_tracker": 0},
        "epoch": epoch,
        "loss": 0.123,
        "batch_size": 128,
        "world_size": 16,
        "lr": 0.001,
    }


def child_env() -> dict[str, str]:
    """The environment of a training subprocess: this checkout's ``src`` first, one thread, and
    this interpreter's ``bin`` first on ``PATH`` (``imagejepa`` and ``torchrun``, for the scripts)."""
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def metric_rows(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler installed for ``sig`` (Linux: /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def quiet(*_):
    """A ``log``/``warn`` that says nothing."""


def losses(run_dir: Path) -> list[float]:
    return [float(r["loss"]) for r in metric_rows(run_dir)]


def final_tensors(run_dir: Path) -> dict:
    """The tensors of a run's newest checkpoint."""
    from imagejepa import checkpoint as ckpt

    return ckpt.load_tensors(ckpt.find_checkpoint(run_dir))
