"""Quality benchmark: what I-JEPA learns on Fashion-MNIST in a fixed wall-clock budget.

    python benchmarks/quality_fmnist.py [--minutes 9] [--run-dir runs/quality]

Pretrains the demo config (``configs/fmnist_vit_tiny.yaml``) with its whole schedule fitted
to ``--minutes`` of training on this machine (``train.budget_minutes``; a hard stop one
minute later), then runs the linear, kNN and 10-shot probes on the test split for the
target encoder and, in the same run, the two baselines: raw pixels and the same
architecture at random initialisation. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from imagejepa.config import load_config
from imagejepa.eval.features import FeatureCache
from imagejepa.eval.report import format_table
from imagejepa.eval.run import evaluate
from imagejepa.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
PROBES = {  # protocol -> (settings, the summary column reported)
    "linear": ({}, "top-1"),
    "knn": ({"ks": (10, 20, 100)}, "k=20 top-1"),
    "lowshot": ({"shots": ("10",), "seeds": 3}, "10-shot"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=9.0, help="pretraining budget (train.budget_minutes)")
    p.add_argument("--config", default=str(ROOT / "configs" / "fmnist_vit_tiny.yaml"))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--run-dir", default="runs/quality")
    p.add_argument("--last-layers", type=int, default=None,
                   help="pooled layers for the probes (default: the config's eval_last_layers)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()

    cfg = load_config(args.config, [*args.set, f"data.dataset={args.data}",
                                     f"train.budget_minutes={args.minutes}",
                                     f"train.max_minutes={args.minutes + 1}"])
    run_dir = Path(args.run_dir)
    if (run_dir / "checkpoints").exists():
        sys.exit(f"{run_dir} already holds a run; remove it or pass another --run-dir")
    start = time.perf_counter()
    trainer = Trainer(cfg, run_dir)
    trainer.fit()
    pretrain_s = time.perf_counter() - start
    last_layers = args.last_layers or cfg.eval.last_layers

    cache = FeatureCache(run_dir / "feature-cache")
    results = {}
    for protocol, (settings, column) in PROBES.items():
        report = evaluate(protocol, run_dir, args.data, baselines=True, last_layers=last_layers,
                          cache=cache, progress=False, **settings)
        print(format_table(report), flush=True)
        results[protocol] = {src: _value(metrics[column]) for src, metrics in report["summary"].items()}
    linear = results["linear"]
    summary = {
        "benchmark": "quality_fmnist",
        "config": args.config,
        "pretrain_minutes_budget": args.minutes,
        "pretrain_s": round(pretrain_s, 1),
        "steps": trainer.step,
        "epochs": round(trainer.step / trainer.steps_per_epoch, 2),
        "last_layers": last_layers,
        "linear_top1": linear,
        "knn_k20_top1": results["knn"],
        "lowshot_10_top1": results["lowshot"],
        "target_minus_pixels_linear": round(linear["target encoder"] - linear["raw pixels"], 4),
        "target_minus_random_linear": round(linear["target encoder"] - linear["random init"], 4),
        "device": str(trainer.device),
        "precision": trainer.precision,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(summary), flush=True)


def _value(v):
    return round(v[0], 4) if isinstance(v, tuple) else round(v, 4)


if __name__ == "__main__":
    main()
