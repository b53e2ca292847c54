"""Robustness benchmark: the default recipe (``recipe: auto``) on data of different sizes and
kinds, each with a fixed time budget, probed against raw pixels and random initialisation.

    python benchmarks/robustness.py [--out runs/robust] [--only digits shapes] [--minutes-scale 1]

For each dataset of :data:`DATASETS` (made once as image folders by ``robust_data.py``, or
Fashion-MNIST itself): ``imagejepa pretrain --config configs/your_data.yaml`` with its budget,
then the linear probe of the target encoder, raw pixels and the same ViT at random
initialisation on the dataset's test split; RankMe at the end and its best, the online kNN,
and whether the trainer warned of collapse. A dataset passes when the target encoder beats
random initialisation by at least 3 points and raw pixels, with no warning. Prints a table,
then one JSON object as its last line (also written to ``OUT/robustness.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from robust_data import ensure

from imagejepa.eval.features import FeatureCache
from imagejepa.eval.run import evaluate
from imagejepa.utils.cpu import features as cpu_features

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "your_data.yaml"
# name -> (data spec or a robust_data folder, budget in minutes, held out of the recipe search)
DATASETS = {
    "fmnist-1k": (None, 6.0, False),
    "fmnist-5k": (None, 6.0, False),
    "fmnist-60k": ("fashion-mnist", 9.0, False),  # the demo's budget
    "digits": (None, 6.0, False),  # checked two of the recipe's choices
    "shapes": (None, 6.0, True),
}
MARGIN_OVER_RANDOM = 0.03


def pretrain(name: str, spec: str, minutes: float, run_dir: Path) -> dict:
    """Train the default recipe on ``spec`` for ``minutes``; what its run says of itself."""
    command = [sys.executable, "-m", "imagejepa", "pretrain", "--config", str(CONFIG),
               "--run-dir", str(run_dir), "--set", f"data.dataset={spec}", "--budget-minutes", str(minutes),
               "--set", f"train.max_minutes={minutes + 1}"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name}: pretraining failed:\n{done.stderr[-3000:]}")
    warnings = [line.split("warning: ", 1)[1] for line in done.stderr.splitlines() if "warning: " in line]
    recipe = next((line.split("imagejepa: ", 1)[1] for line in done.stdout.splitlines()
                   if "recipe auto" in line), "")
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ranks = [float(r["rankme"]) for r in rows if r.get("rankme")]
    knn = [float(r["knn_top1"]) for r in rows if r.get("knn_top1")]
    return {"steps": len(rows), "pretrain_s": round(seconds, 1), "recipe": recipe,
            "rankme_end": round(ranks[-1], 1) if ranks else None,
            "rankme_best": round(max(ranks), 1) if ranks else None,
            "knn_end": round(knn[-1], 1) if knn else None, "knn_best": round(max(knn), 1) if knn else None,
            "warnings": warnings}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/robust", help="runs, datasets and the JSON report")
    p.add_argument("--only", nargs="+", choices=list(DATASETS), help="a subset of the datasets")
    p.add_argument("--minutes-scale", type=float, default=1.0,
                   help="multiply every budget (a quick check of the script: 0.1)")
    args = p.parse_args()
    out = Path(args.out)
    results = {}
    for name in args.only or DATASETS:
        spec, minutes, held_out = DATASETS[name]
        spec = spec or f"imagefolder:{ensure(name, out / 'data')}"
        run_dir = out / name
        if (run_dir / "checkpoints").exists():
            raise SystemExit(f"{run_dir} already holds a run; remove it or pass another --out")
        trained = pretrain(name, spec, minutes * args.minutes_scale, run_dir)
        report = evaluate("linear", run_dir, spec, baselines=True, progress=False,
                          cache=FeatureCache(out / "feature-cache"))
        top1 = {source: round(100 * v["top-1"], 2) for source, v in report["summary"].items()}
        target, pixels, random = top1["target encoder"], top1["raw pixels"], top1["random init"]
        results[name] = {
            "data": spec, "held_out": held_out, "budget_minutes": minutes * args.minutes_scale,
            "train_images": report["train_images"], "test_images": report["test_images"],
            "linear_top1": top1, **trained,
            "passes": (target >= random + 100 * MARGIN_OVER_RANDOM and target > pixels
                       and not trained["warnings"]),
        }
        print(_row(name, results[name]), flush=True)
    summary = {"benchmark": "robustness", "datasets": results,
               "all_pass": all(r["passes"] for r in results.values()),
               "cpu_features": cpu_features(), "cpu_count": os.cpu_count(),
               "machine": platform.processor() or platform.machine()}
    print(_table(results))
    (out / "robustness.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)


COLUMNS = ("dataset", "images", "steps", "target", "pixels", "random", "RankMe end/best", "kNN end/best",
           "warnings", "passes")


def _row(name: str, r: dict) -> str:
    t = r["linear_top1"]
    return (f"{name}: {r['train_images']} images, {r['steps']} steps in {r['pretrain_s']:.0f} s; "
            f"linear top-1 target {t['target encoder']:.2f}, pixels {t['raw pixels']:.2f}, "
            f"random {t['random init']:.2f}; "
            f"RankMe {r['rankme_end']} (best {r['rankme_best']}); {len(r['warnings'])} warning(s)")


def _table(results: dict) -> str:
    lines = [" | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS)]
    for name, r in results.items():
        t = r["linear_top1"]
        lines.append(" | ".join(str(v) for v in (
            name + (" (held out)" if r["held_out"] else ""), r["train_images"], r["steps"],
            f"{t['target encoder']:.2f}", f"{t['raw pixels']:.2f}", f"{t['random init']:.2f}",
            f"{r['rankme_end']} / {r['rankme_best']}", f"{r['knn_end']} / {r['knn_best']}",
            len(r["warnings"]), "yes" if r["passes"] else "no")))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
