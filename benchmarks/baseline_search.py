"""The baselines' short recipe search for `bench claims` (benchmarks/README.md).

    python benchmarks/baseline_search.py [NAME ...] [--out runs/baseline_search]

Each variant pretrains on Fashion-MNIST for the low budget of `bench claims` (a third of the
demo's FLOPs) and is judged by the online kNN of the monitor: 20-NN of 500 held-out training
images against a bank of 2,000 (the test split is never looked at). Prints one JSON line per
variant.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from imagejepa.bench.claims import BUDGETS, demo_flops
from imagejepa.config import load_config
from imagejepa.train.trainer import Trainer

VARIANTS = {
    "mae_r75": ["method.name=mae", "method.mask_ratio=0.75"],
    "mae_r50": ["method.name=mae", "method.mask_ratio=0.5"],
    "dino_plain_l6": ["method.name=dino", "method.local_crops=6", "method.standardise_head_input=false"],
    "dino_l6": ["method.name=dino", "method.local_crops=6"],
    "dino_l2": ["method.name=dino", "method.local_crops=2"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help=f"variants (default: all): {', '.join(VARIANTS)}")
    p.add_argument("--out", default="runs/baseline_search")
    args = p.parse_args()
    unknown = set(args.names) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; allowed: {', '.join(VARIANTS)}")
    budget = BUDGETS["low"] * demo_flops()
    for name in args.names or VARIANTS:
        run = Path(args.out) / name
        cfg = load_config(None, ["recipe=auto", "data.dataset=fashion-mnist", f"train.budget_flops={budget}",
                                 "monitor.knn_every=250", *VARIANTS[name]])
        start = time.perf_counter()
        trainer = Trainer(cfg, run, log=lambda *a: None, warn=lambda *a: None)
        trainer.fit()
        with open(run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        knn = [(int(r["step"]), round(float(r["knn_top1"]), 1)) for r in rows if r.get("knn_top1")]
        print(json.dumps({"variant": name, "steps": trainer.step, "online_knn": knn,
                          "minutes": round((time.perf_counter() - start) / 60, 2)}), flush=True)


if __name__ == "__main__":
    main()
