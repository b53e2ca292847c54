"""Command line: argument parsing and dispatch only. Usage errors exit with code 2."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from .config import ConfigError

FAILURE_EXIT, USAGE_EXIT = 1, 2
EXIT_CODES = """exit codes:
  0   finished
  1   the run failed: damaged checkpoint, non-finite loss, too many unreadable images,
      disk full; one line names the cause, and the checkpoints already written are intact
  2   usage or configuration error (one line naming the key or argument)
  75  pre-empted: SIGTERM, SIGINT or SIGUSR1 (SLURM --signal=USR1@SECONDS) arrived, the
      current step was finished and checkpointed; continue with --resume
  130 interrupted before training started, or Ctrl-C pressed twice"""
# Settings that may change when a run is resumed: they do not change what is computed.
RESUME_FREE = {"data.num_workers", "data.on_error", "data.max_bad_fraction"}


class UsageError(Exception):
    """Bad arguments or configuration: one line to stderr, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imagejepa", description="I-JEPA pretraining and evaluation",
                                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("pretrain", help="pretrain an encoder with I-JEPA", epilog=EXIT_CODES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    pre.add_argument("--config", help="YAML config (this project's schema or an official I-JEPA file)")
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set optim.lr=5e-4 (repeatable)")
    pre.add_argument("--run-dir", help="output folder (default: runs/<config name>-<time>)")
    pre.add_argument("--resume", action="store_true",
                     help="continue from the run folder's latest checkpoint")
    pre.add_argument("--fallback", action="store_true",
                     help="with --resume: if the latest checkpoint fails verification, continue "
                          "from the newest one that passes (without it, that is an error)")

    ev = sub.add_parser("eval", help="evaluate a checkpoint's frozen encoder")
    ev_sub = ev.add_subparsers(dest="protocol", required=True)
    lin = ev_sub.add_parser("linear", help="linear probe (train split -> test split)")
    lin.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    lin.add_argument("--data", required=True, help="data spec, e.g. fashion-mnist")
    lin.add_argument("--encoder", choices=("target", "context"), default="target")
    lin.add_argument("--last-layers", type=int, default=1, help="concatenate the last k layers")
    lin.add_argument("--baselines", action="store_true",
                     help="also probe raw pixels and the architecture at random init")
    lin.add_argument("--out", help="also write the JSON report here")

    bench = sub.add_parser("bench", help="speed benchmarks; prints one JSON object")
    b_sub = bench.add_subparsers(dest="what", required=True)
    bt = b_sub.add_parser("train", help="training step throughput and roofline fraction")
    bt.add_argument("--steps", type=int, default=5)
    bt.add_argument("--warmup", type=int, default=2)
    bt.add_argument("--device", default="auto")
    bt.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    bm = b_sub.add_parser("masks", help="mask sampler throughput vs a per-sample loop")
    bm.add_argument("--batch-size", type=int, default=2048)
    bm.add_argument("--grid", type=int, default=16)

    info = sub.add_parser("info", help="parameters and FLOPs of an encoder")
    info.add_argument("model", help="e.g. vit_huge_patch14 or vit_tiny")
    info.add_argument("--patch-size", type=int)
    info.add_argument("--img-size", type=int, default=224)
    info.add_argument("--in-chans", type=int, default=3)
    return p


def _print_json(obj) -> None:
    print(json.dumps(obj), flush=True)


def cmd_pretrain(args) -> None:
    from .config import load_config
    from .train import Trainer

    if args.resume and not args.run_dir:
        raise UsageError("--resume needs --run-dir (the run to continue)")
    if args.fallback and not args.resume:
        raise UsageError("--fallback only applies with --resume")
    config_path = args.config
    if config_path is None:
        if not args.resume:
            raise UsageError("pretrain needs --config FILE (or --resume --run-dir DIR)")
        config_path = Path(args.run_dir) / "config.yaml"
    cfg = load_config(config_path, args.set)
    if args.resume:
        _check_same_run(cfg, Path(args.run_dir))
    run_dir = args.run_dir or f"runs/{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not args.resume:
        _check_fresh(Path(run_dir))
    Trainer(cfg, run_dir, resume=args.resume, fallback=args.fallback).fit()


def _check_fresh(run_dir: Path) -> None:
    """Starting over in a folder with checkpoints would replace them: never silently."""
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.glob("step_*")):
        raise UsageError(f"{run_dir} already holds checkpoints; continue that run with --resume, "
                         "or choose another --run-dir")


def _check_same_run(cfg, run_dir: Path) -> None:
    """Resuming with another model, data, mask or optimiser setting would not continue the run."""
    from .config import load_config

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise UsageError(f"--resume: {saved_path} not found; is {run_dir} a run folder?")
    saved = load_config(saved_path).to_dict()
    current = cfg.to_dict()
    changed = [
        f"{section}.{key}"
        for section in ("model", "mask", "data", "optim")
        for key in current[section]
        if current[section][key] != saved[section].get(key) and f"{section}.{key}" not in RESUME_FREE
    ]
    if current["train"]["seed"] != saved["train"]["seed"]:
        changed.append("train.seed")
    if changed:
        raise UsageError(f"--resume: config differs from {saved_path} in {', '.join(changed)}")


def cmd_eval(args) -> None:
    from .eval.linear import evaluate_linear

    report = evaluate_linear(args.checkpoint, args.data, which=args.encoder,
                             baselines=args.baselines, last_layers=args.last_layers)
    print(f"linear probe, {report['data']}: fit on {report['train_images']} train images, "
          f"scored on {report['test_images']} test images")
    for name, r in report["results"].items():
        print(f"  {name:<18} top-1 {100 * r['top1']:6.2f}%   top-5 {100 * r['top5']:6.2f}%")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    _print_json(report)


def cmd_bench(args) -> None:
    from . import bench

    if args.what == "train":
        _print_json(bench.bench_train(args.steps, args.warmup, args.device, args.precision))
    else:
        _print_json(bench.bench_masks(args.batch_size, args.grid))


def cmd_info(args) -> None:
    from .bench import model_info
    from .models import ARCHS

    m = re.fullmatch(r"(vit_[a-z]+)(?:_patch(\d+))?", args.model)
    if not m or m.group(1) not in ARCHS:
        raise UsageError(f"unknown model {args.model!r}; use one of {', '.join(ARCHS)} "
                         "optionally with _patchN, e.g. vit_huge_patch14")
    patch = args.patch_size or int(m.group(2) or 16)
    _print_json(model_info(m.group(1), patch, args.img_size, args.in_chans))


COMMANDS = {"pretrain": cmd_pretrain, "eval": cmd_eval, "bench": cmd_bench, "info": cmd_info}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .checkpoint import CheckpointError  # after parsing: --help stays fast
    from .data import DataError
    from .preempt import PREEMPTED_EXIT, Preempted
    from .train import NonFiniteError

    try:
        COMMANDS[args.command](args)
    except (UsageError, ConfigError, FileNotFoundError) as e:
        print(f"imagejepa {args.command}: error: {e}", file=sys.stderr)
        return USAGE_EXIT
    except Preempted as e:
        print(f"imagejepa {args.command}: {e}", file=sys.stderr)
        return PREEMPTED_EXIT
    except (CheckpointError, DataError, NonFiniteError) as e:
        print(f"imagejepa {args.command}: error: {e}", file=sys.stderr)
        return FAILURE_EXIT
    except KeyboardInterrupt:
        print("imagejepa: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
