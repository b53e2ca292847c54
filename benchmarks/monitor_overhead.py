"""What watching a run costs on the demo recipe: the health metrics (RankMe, cosine, loss per
block, every ``monitor.every`` steps) and the online kNN (every ``monitor.knn_every`` steps),
each timed in one process against the plain training step, alternately (the host is shared
and noisy, so whole runs timed one after the other differ by more than what is measured).

    python benchmarks/monitor_overhead.py [--steps 300] [--knn-repeats 5]

Prints one JSON line: the median step with and without the health metrics, the median
online kNN evaluation, and the share of training time the defaults cost:
``(health extra / every + kNN / knn_every) / step``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from imagejepa.config import load_config
from imagejepa.train.trainer import Trainer
from imagejepa.utils.cpu import features as cpu_features

DEMO = Path(__file__).parents[1] / "configs" / "fmnist_vit_tiny.yaml"


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps of each kind")
    parser.add_argument("--knn-repeats", type=int, default=5)
    args = parser.parse_args()
    cfg = load_config(DEMO, ["train.budget_minutes=null"])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, log=lambda *_: None, warn=lambda *_: None)
        batches = iter(trainer.loader)
        stepper, schedules = trainer.stepper, trainer.schedules

        def step(step: int, watch: bool) -> None:
            images = next(batches)[0]
            result = stepper(images, step, schedules.at(step), watch)
            stepper.read([result])  # what the trainer does every step on a CPU

        for s in range(30):  # warm-up
            step(s, s % 2 == 0)
        times = {True: [], False: []}
        for s in range(30, 30 + 2 * args.steps):
            watch = s % 2 == 0
            times[watch].append(_seconds(lambda s=s, watch=watch: step(s, watch)))
        encoder = trainer.model.target_encoder
        knn = [_seconds(lambda: trainer.watch.knn(encoder, 0, False)) for _ in range(args.knn_repeats)]
    plain, watched = statistics.median(times[False]), statistics.median(times[True])
    one_knn = statistics.median(knn)
    mon = cfg.monitor
    share = (max(watched - plain, 0.0) / mon.every + one_knn / mon.knn_every) / plain
    print(json.dumps({
        "cpu": cpu_features(), "threads": torch.get_num_threads(), "precision": trainer.precision,
        "steps_timed_each": args.steps,
        "step_s": round(plain, 5), "step_with_health_s": round(watched, 5),
        "health_extra_s": round(watched - plain, 5),
        "online_knn_s": round(one_knn, 3),
        "knn_images": {k: len(v) for k, v in trainer.watch.online_knn.sets.items()},
        "monitor.every": mon.every, "monitor.knn_every": mon.knn_every,
        "overhead_share_of_training_time": round(share, 4),
        "steps_per_s_off": round(1 / plain, 2),
        "steps_per_s_on": round(1 / (plain * (1 + share)), 2),
    }))


if __name__ == "__main__":
    main()
