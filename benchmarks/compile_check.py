"""Does train.compile recompile as the context length changes from step to step? Trains a
few steps of the tiny test model with torch.compile (dynamic shapes) and prints one JSON
object: the context lengths met, the graphs compiled, and each step's seconds.

    python benchmarks/compile_check.py [--steps 6]     (minutes on a CPU: compiling is slow)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from helpers import TINY_OVERRIDES  # noqa: E402

from imagejepa.config import load_config  # noqa: E402
from imagejepa.train.trainer import Trainer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    cfg = load_config(None, TINY_OVERRIDES + ["train.compile=true", f"train.max_steps={args.steps}",
                                              "train.checkpoint_every_steps=null"])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, log=lambda *_: None)
        batch = cfg.data.batch_size
        lengths = [trainer.sample_masks(s, batch).context.shape[1] for s in range(args.steps)]
        seconds, real_step = [], trainer.train_step

        def timed(images, step):
            start = time.perf_counter()
            out = real_step(images, step)
            seconds.append(round(time.perf_counter() - start, 2))
            return out

        trainer.train_step = timed
        trainer.fit()
    print(json.dumps({"context_lengths": lengths,
                      "graphs_compiled": torch._dynamo.utils.counters["stats"]["unique_graphs"],
                      "seconds_per_step": seconds}))


if __name__ == "__main__":
    main()
