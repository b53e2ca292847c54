"""Recipe sweep: pretrain several variants of a config, probe each, print one JSON line each.

    python benchmarks/recipe_sweep.py VARIANTS.yaml --config configs/fmnist_vit_tiny.yaml \
        --out runs/sweep --parallel 4

``VARIANTS.yaml`` maps a name to ``{set: [key=value, ...]}``. To compare recipes at the
CPU demo's wall-clock budget on a faster machine, give each variant the number of epochs
the CPU would reach in that budget (``optim.epochs``), measured from its CPU img/s.

Each run is probed on the data's test split with the linear probe: target encoder (last
layer and last 4 layers) and, with ``--context``, the context encoder (last layer). Used to
choose the demo recipe; the ablation is recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml


def probe_run(run_dir: str, data: str, encoders=("target",)) -> dict:
    """Linear probes of one finished run (runs in its own process)."""
    import torch

    from imagejepa.data import EvalTransform, build_dataset
    from imagejepa.eval.features import extract_features
    from imagejepa.eval.linear import linear_probe
    from imagejepa.interop.loading import load_encoder
    from imagejepa.runtime import resolve_device, resolve_precision

    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    train, test = build_dataset(data, train=True), build_dataset(data, train=False)
    out = {}
    for which in encoders:
        encoder, pre = load_encoder(run_dir, which=which)
        transform = EvalTransform(pre.size, pre.in_chans, pre.mean, pre.std)
        kw = dict(device=device, precision=precision, last_layers=4, progress=False)
        (xtr, ytr), (xte, yte) = (extract_features(encoder, ds, transform, **kw) for ds in (train, test))
        xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
        dim = encoder.embed_dim
        out[f"{which}_last1"] = linear_probe(xtr[:, -dim:], ytr, xte[:, -dim:], yte)["top1"]
        if which == "target":
            out["target_last4"] = linear_probe(xtr, ytr, xte, yte)["top1"]
        del xtr, xte
        torch.cuda.empty_cache() if device.type == "cuda" else None
    return out


def run_variant(name: str, spec: dict, args) -> dict:
    run_dir = Path(args.out) / name
    sets = [a for s in [*args.set, *spec.get("set", [])] for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    t0 = time.time()
    cmd = [sys.executable, "-m", "imagejepa", "pretrain", "--config", args.config,
           "--run-dir", str(run_dir), *sets]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"name": name, "error": done.stderr.strip().splitlines()[-1:]}
    train_s = time.time() - t0
    probed = subprocess.run([sys.executable, __file__, "--probe", str(run_dir), "--data", args.data,
                             *(["--context"] if args.context else [])],
                            env=env, capture_output=True, text=True)
    if probed.returncode != 0:
        return {"name": name, "error": probed.stderr.strip().splitlines()[-3:]}
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    tail = rows[-50:]
    result = {
        "name": name, "set": spec.get("set", []), "steps": len(rows), "train_s": round(train_s, 1),
        "final_loss": sum(float(r["loss"]) for r in tail) / len(tail),
        "final_target_std": sum(float(r["target_std"]) for r in tail) / len(tail),
        **json.loads(probed.stdout.strip().splitlines()[-1]),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="?")
    p.add_argument("--config", default="configs/fmnist_vit_tiny.yaml")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every variant (before the variant's own)")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    p.add_argument("--context", action="store_true", help="also probe the context encoder")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        encoders = ("target", "context") if args.context else ("target",)
        print(json.dumps(probe_run(args.probe, args.data, encoders)))
        return
    variants = yaml.safe_load(Path(args.variants).read_text())
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda kv: run_variant(*kv, args), variants.items()))
    for r in results:
        if "error" in r:
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
