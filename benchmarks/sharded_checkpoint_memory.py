"""Peak memory of each rank while saving and while resuming: one process (single-folder
checkpoint) against FSDP2 on N processes (sharded checkpoint, each rank its own shards).

    python benchmarks/sharded_checkpoint_memory.py                    # one process
    torchrun --standalone --nproc-per-node 2 benchmarks/sharded_checkpoint_memory.py

A model of ViT-B/16 width (the encoder, its EMA copy, a predictor, AdamW state: about 1.9 GB
in fp32) is built, trains one step on synthetic images and saves; then a second trainer
resumes from that checkpoint (the first one's memory is still held). Each phase's peak
resident memory (Linux ``VmHWM``, reset before the phase) is printed as JSON by every rank,
beside the resident memory before it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from imagejepa.config import load_config
from imagejepa.distributed import processes_from_env, start_processes, stop_processes, text_from_main
from imagejepa.train.trainer import Trainer

SETTINGS = ["data.dataset=synthetic", "model.arch=vit_base", "model.patch_size=16", "model.img_size=224",
            "model.pred_depth=6", "model.pred_dim=384", "data.batch_size=2", "train.max_steps=1",
            "train.precision=fp32", "train.budget_minutes=null", "train.checkpoint_every_steps=null",
            "monitor.every=0", "monitor.knn_every=0"]


def memory_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS


def phase(name: str, run, report: dict) -> None:
    reset_peak()
    before = memory_mib("VmRSS")
    run()
    report[name] = {"rss_before_mib": round(before), "peak_mib": round(memory_mib("VmHWM")),
                    "peak_above_before_mib": round(memory_mib("VmHWM") - before)}


def main() -> None:
    torch.set_num_threads(1)
    processes = start_processes(processes_from_env(), torch.device("cpu"))
    try:
        strategy = ["dist.strategy=fsdp"] if processes.world_size > 1 else []
        cfg = load_config(None, SETTINGS + strategy)
        run_dir = Path(text_from_main(processes, tempfile.mkdtemp(prefix="ckpt-memory-")))
        report = {"processes": processes.world_size, "rank": processes.rank,
                  "checkpoint": "sharded" if strategy else "single-folder"}
        quiet = lambda *_: None  # noqa: E731
        held = {}

        def build(**kwargs) -> None:
            held["trainer"] = Trainer(cfg, run_dir, log=quiet, warn=quiet, processes=processes, **kwargs)

        def step() -> None:
            trainer = held["trainer"]
            trainer.train_step(next(iter(trainer.loader))[0], 0)
            trainer.step = 1

        phase("build", build, report)
        phase("train_one_step", step, report)
        phase("save", lambda: held["trainer"].save(), report)
        phase("resume", lambda: build(resume=True), report)
        print(json.dumps(report), flush=True)
    finally:
        stop_processes(processes)


if __name__ == "__main__":
    if not Path("/proc/self/clear_refs").exists():
        sys.exit("needs Linux (/proc/self/clear_refs)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
