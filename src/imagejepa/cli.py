"""Command line: argument parsing and dispatch only. Usage errors exit with code 2."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

from .errors import RunError, UsageError
from .train.preempt import PREEMPTED_EXIT, Preempted, StopSignals  # no PyTorch: --help stays fast

FAILURE_EXIT, USAGE_EXIT = 1, 2
EXIT_CODES = """exit codes:
  0   finished
  1   the run failed: damaged checkpoint, non-finite loss, too many unreadable images,
      disk full, another process of the run died; one line names the cause, and the
      checkpoints already written are intact
  2   usage or configuration error (one line naming the key or argument)
  75  pre-empted: SIGTERM, SIGINT or SIGUSR1 (SLURM --signal=USR1@SECONDS) arrived, the
      current step was finished and checkpointed (nothing to save if it came before the
      first step); continue with --resume
  130 Ctrl-C pressed twice"""
# Settings a resumed run may change: loader tuning, and how the global batch is split into
# accumulation chunks (the sums are the same; a run moves to another number of processes).
RESUME_FREE = {"data.num_workers", "data.on_error", "data.max_bad_fraction", "optim.grad_accum"}


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
    pre.add_argument("--budget-minutes", type=float, metavar="MIN",
                     help="fit the whole schedule into MIN minutes of training on this machine "
                          "(same as --set train.budget_minutes=MIN)")
    pre.add_argument("--resume", nargs="?", const=True, choices=["auto"],
                     help="continue from the run folder's latest checkpoint; '--resume auto' "
                          "continues when there is one and starts the run otherwise (the same "
                          "command line then serves first start and restarts, e.g. torchrun's "
                          "--max-restarts)")
    pre.add_argument("--fallback", action="store_true",
                     help="with --resume: if the latest checkpoint fails verification, continue "
                          "from the newest one that passes (without it, that is an error)")

    ev = sub.add_parser("eval", help="evaluate a checkpoint's frozen encoder")
    ev_sub = ev.add_subparsers(dest="protocol", required=True)
    helps = {
        "linear": "linear probe: lr/wd sweep on a held-out 10%, retrained, top-1/top-5 on test",
        "knn": "weighted kNN on cosine similarity (k = 10, 20, 100)",
        "lowshot": "logistic regression on 1, 5, 10 images per class and 1%, several seeds",
        "attentive": "attentive probe: one learned query cross-attending over patch tokens",
    }
    for name, text in helps.items():
        e = ev_sub.add_parser(name, help=text.replace("%", "%%"), description=text)  # help is %-formatted
        _eval_arguments(e)
        if name == "linear":
            e.add_argument("--solver", choices=("lbfgs", "adamw"), default="lbfgs",
                           help="lbfgs: logistic regression, L2 sweep (default); "
                                "adamw: mini-batch, lr x weight-decay sweep")
            e.add_argument("--batchnorm", action="store_true",
                           help="BatchNorm before the linear head (needs --solver adamw)")
        if name == "knn":
            e.add_argument("--k", type=int, nargs="+", default=[10, 20, 100], help="neighbour counts")
            e.add_argument("--temperature", type=float, default=0.07)
        if name == "lowshot":
            e.add_argument("--shots", nargs="+", default=["1", "5", "10", "1%"],
                           help="images per class, or a percentage of the training split")
            e.add_argument("--seeds", type=int, default=3, help="random subsets per shot count")

    emb = sub.add_parser("embed", help="features of a dataset to .npy or .safetensors")
    emb.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    emb.add_argument("--data", required=True, help="data spec, e.g. fashion-mnist or imagefolder:PATH")
    emb.add_argument("--out", required=True, help="FILE.npy or FILE.safetensors")
    emb.add_argument("--split", choices=("train", "test"), default="test")
    emb.add_argument("--encoder", choices=("target", "context"), default="target")
    emb.add_argument("--last-layers", type=int, default=1, help="concatenate the last k layers")
    emb.add_argument("--patch-tokens", action="store_true",
                     help="every patch token (N, T, D) instead of the pooled vector (N, D)")

    dec = sub.add_parser("decoder", help="the predictor visualisation's pixel decoder")
    d_sub = dec.add_subparsers(dest="what", required=True)
    dt = d_sub.add_parser("train", help="train a stochastic decoder from a checkpoint's target features "
                          "to pixels, then score it on held-out images (one JSON line)")
    dt.add_argument("--checkpoint", required=True, help="run or checkpoint folder, or official .pth.tar "
                    "(anything with a predictor)")
    dt.add_argument("--data", required=True, help="data spec, e.g. fashion-mnist or imagefolder:PATH")
    dt.add_argument("--out", required=True, help="decoder folder (continued when it holds a checkpoint)")
    dt.add_argument("--steps", type=int, default=3600,
                    help="optimiser steps (3600: about 9 minutes of 64 images on 2 CPU cores)")
    dt.add_argument("--batch-size", type=int, default=64, help="images per step (64)")
    dt.add_argument("--lr", type=float, default=1e-3)
    dt.add_argument("--seed", type=int, default=0)
    dt.add_argument("--score-images", type=int, default=256, help="held-out images scored (256)")

    sh = sub.add_parser("shard", help="pack a dataset into tar shards (webdataset layout) for training")
    sh.add_argument("--data", required=True, help="data spec, e.g. imagefolder:PATH or fashion-mnist")
    sh.add_argument("--out", required=True, help="folder for shard-000000.tar, ... and shards.json")
    sh.add_argument("--split", choices=("train", "test"), default="train")
    sh.add_argument("--per-shard", type=int, default=1000, metavar="N", help="images per shard (1000)")

    viz = sub.add_parser("viz", help="pictures as PNG: masks, feature PCA, training curves, neighbours")
    v_sub = viz.add_subparsers(dest="what", required=True)
    vm = v_sub.add_parser("masks", help="training crops with the configured context and target blocks")
    vm.add_argument("--config", required=True, help="YAML config (this project's schema or an official file)")
    vm.add_argument("--data", help="data spec instead of the config's data.dataset")
    vm.add_argument("--out", required=True, help="FILE.png")
    vm.add_argument("--images", type=int, default=8, help="images to show (8), at most 8 a row")
    vm.add_argument("--seed", type=int, help="crops and masks of this seed (default: train.seed)")
    vf = v_sub.add_parser("features", help="first three PCA components of the patch features as RGB")
    vf.add_argument("--checkpoint", required=True, help="run or checkpoint folder, official/HF/timm weights")
    vf.add_argument("--data", required=True, help="data spec, e.g. fashion-mnist or imagefolder:PATH")
    vf.add_argument("--out", required=True, help="FILE.png")
    vf.add_argument("--images", type=int, default=8, help="images to show (8), at most 8 a row pair")
    vf.add_argument("--split", choices=("train", "test"), default="test")
    vc = v_sub.add_parser("curves", help="loss, lr, EMA, RankMe, target std, kNN of runs' metrics.csv")
    vc.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (one line each)")
    vc.add_argument("--out", required=True, help="FILE.png")
    vn = v_sub.add_parser("neighbors", help="test images and their nearest training images (cosine)")
    vn.add_argument("--checkpoint", required=True, help="run or checkpoint folder, official/HF/timm weights")
    vn.add_argument("--data", required=True, help="data spec, e.g. fashion-mnist or imagefolder:PATH")
    vn.add_argument("--out", required=True, help="FILE.png")
    vn.add_argument("--queries", type=int, default=6, help="query images, one a row (6)")
    vn.add_argument("--k", type=int, default=5, help="neighbours per query (5)")
    vn.add_argument("--bank", type=int, default=5000, help="search the first M training images (5000)")
    vp = v_sub.add_parser("predictions", help="what the predictor predicts, in pixels, through a decoder "
                          "(imagejepa decoder train)")
    vp.add_argument("--checkpoint", required=True, help="run or checkpoint folder, or official .pth.tar")
    vp.add_argument("--decoder", required=True, help="decoder folder written by imagejepa decoder train")
    vp.add_argument("--data", required=True, help="data spec (held-out images of its test split)")
    vp.add_argument("--out", required=True, help="FILE.png")
    vp.add_argument("--images", type=int, default=4, help="images, one a row (4)")
    vp.add_argument("--samples", type=int, default=3, help="decoder samples of the predictions (3)")

    rep = sub.add_parser("report", help="one self-contained report.html of a run: health, curves, "
                                        "masks, features, evaluations, config")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="run folder of imagejepa pretrain")
    rep.add_argument("--out", help="FILE.html (default: RUN_DIR/report.html)")

    bench = sub.add_parser("bench", help="speed benchmarks; prints one JSON object")
    b_sub = bench.add_subparsers(dest="what", required=True)
    bt = b_sub.add_parser("train", help="training step throughput and roofline fraction")
    bt.add_argument("--steps", type=int, default=5)
    bt.add_argument("--warmup", type=int, default=2)
    bt.add_argument("--device", default="auto")
    bt.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    bt.add_argument("--model", default="vit_tiny_patch16",
                    help="encoder at 224 with the paper's predictor, e.g. vit_huge_patch14")
    bt.add_argument("--batch-size", type=int, help="images per step (32)")
    bt.add_argument("--eager-only", action="store_true",
                    help="time eager steps only (by default also torch.compile's, alternately)")
    bd = b_sub.add_parser("data", help="images/s one loader worker decodes and crops (to size workers)")
    bd.add_argument("--data", required=True, help="data spec: imagefolder:PATH, webdataset:PATTERN, ...")
    bd.add_argument("--img-size", type=int, default=224)
    bd.add_argument("--in-chans", type=int, default=3)
    bd.add_argument("--batches", type=int, default=8, help="timed batches of 32")
    bd.add_argument("--workers", default="", metavar="N,N", help="also time the loader with these "
                    "numbers of worker processes, e.g. 2,4")
    bm = b_sub.add_parser("masks", help="mask sampler throughput vs a per-sample loop")
    bm.add_argument("--batch-size", type=int, default=2048)
    bm.add_argument("--grid", type=int, default=16)
    be = b_sub.add_parser("embed", help="encoder inference images/s vs transformers.IJepaModel")
    be.add_argument("--model", default="vit_huge_patch14", help="e.g. vit_huge_patch14 (random weights)")
    be.add_argument("--img-size", type=int, default=224)
    be.add_argument("--depth", type=int, help="fewer blocks than the architecture (quick runs)")
    be.add_argument("--batch-size", type=int, default=8)
    be.add_argument("--steps", type=int, default=3, help="timed forwards of each model, alternating")
    be.add_argument("--warmup", type=int, default=1)
    be.add_argument("--device", default="auto")
    be.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")

    bc = b_sub.add_parser("claims", help="the paper's comparisons by compute: I-JEPA, MAE, DINO and "
                          "I-JEPA on pixels at equal FLOPs, probed on Fashion-MNIST and rendered scenes")
    bc.add_argument("--quick", action="store_true", help="every method on both datasets at a small budget "
                    "on data subsets (under 15 minutes on 2 cores)")
    bc.add_argument("--out", help="results folder (default: runs/claims, or runs/claims-quick); "
                    "cells already there are not run again")
    bc.add_argument("--only", metavar="TEXT", help="run only the cells whose key contains TEXT "
                    "(e.g. scenes, mae, mid-s0); the summary covers every cell done")

    conv = sub.add_parser("convert", help="convert between official I-JEPA, imagejepa, HF and timm")
    conv.add_argument("src", help="official .pth.tar, imagejepa checkpoint or run folder, HF or timm folder")
    conv.add_argument("dst", help="output folder (imagejepa, hf, timm) or file (official); must not exist")
    conv.add_argument("--to", choices=("imagejepa", "hf", "timm", "official"), default="imagejepa")
    conv.add_argument("--encoder", choices=("target", "context"), default="target",
                      help="which encoder to export to hf/timm (they hold one); default: target")
    conv.add_argument("--heads", type=int, help="attention heads, for widths not in the architecture table")

    info = sub.add_parser("info", help="parameters and FLOPs of an encoder or a released checkpoint")
    info.add_argument("model", help="e.g. vit_huge_patch14, vit_tiny, or vit_huge_patch14.in1k")
    info.add_argument("--patch-size", type=int)
    info.add_argument("--img-size", type=int, default=224)
    info.add_argument("--in-chans", type=int, default=3)
    return p


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    p.add_argument("--data", required=True, help="data spec, e.g. fashion-mnist, imagefolder:PATH, synthetic")
    p.add_argument("--encoder", choices=("target", "context"), default="target",
                   help="which encoder of the checkpoint (the paper evaluates the target encoder)")
    p.add_argument("--last-layers", type=int, default=None,
                   help="concatenate the pooled outputs of the last k layers (the paper also uses 4); "
                        "default: the checkpoint config's eval.last_layers")
    p.add_argument("--baselines", action="store_true",
                   help="also probe raw pixels and the architecture at random init, in the same run")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.add_argument("--cache-dir", help="feature cache (default: $IMAGEJEPA_CACHE or ~/.cache/imagejepa)")
    p.add_argument("--no-cache", action="store_true", help="extract features afresh, store nothing")


def _print_json(obj) -> None:
    print(json.dumps(obj), flush=True)


def cmd_pretrain(args, signals=None) -> None:
    from .config import check_batch_split, load_config
    from .distributed import (
        FailureWatch,
        post_failure,
        processes_from_env,
        start_processes,
        stop_processes,
        text_from_main,
    )
    from .runtime import resolve_device
    from .train.recipe import resolve_recipe
    from .train.trainer import Trainer

    if args.resume and not args.run_dir:
        raise UsageError("--resume needs --run-dir (the run to continue)")
    if args.fallback and not args.resume:
        raise UsageError("--fallback only applies with --resume")
    if args.resume == "auto":
        args.resume = (Path(args.run_dir) / "checkpoints" / "latest").exists()
        if not args.resume and args.config is None:
            raise UsageError(f"--resume auto: {args.run_dir} holds no checkpoint yet, so the run "
                             "starts and needs --config FILE")
    config_path = args.config
    if config_path is None:
        if not args.resume:
            raise UsageError("pretrain needs --config FILE (or --resume --run-dir DIR)")
        config_path = Path(args.run_dir) / "config.yaml"
    overrides = list(args.set)
    if args.budget_minutes is not None:
        overrides.append(f"train.budget_minutes={args.budget_minutes}")
    launched = processes_from_env()  # torchrun's RANK / WORLD_SIZE, if any
    cfg = load_config(config_path, overrides, world_size=launched.world_size)
    resolve_recipe(cfg)  # recipe: auto; the values it chooses are compared on --resume too
    if args.resume:
        _check_same_run(cfg, Path(args.run_dir))
    check_batch_split(cfg, launched.world_size)  # before waiting for the other processes
    processes = start_processes(launched, resolve_device(cfg.train.device, launched.local_rank))
    try:
        # Another rank's failure ends this one within a second (exit 1, one line naming it).
        with FailureWatch(processes):
            try:
                # Rank 0 names the run folder (a default name holds its clock's time).
                run_dir = text_from_main(processes, args.run_dir or
                                         f"runs/{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
                if not args.resume:
                    _check_fresh(Path(run_dir))
                Trainer(cfg, run_dir, resume=args.resume, fallback=args.fallback,
                        processes=processes).fit(signals)
            except BaseException as e:  # whatever it is, the other ranks must not wait for this one
                if not isinstance(e, Preempted) and not getattr(e, "on_every_rank", False):
                    post_failure(processes, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
                raise
    finally:
        stop_processes(processes)


def _check_fresh(run_dir: Path) -> None:
    """Starting over in a folder with checkpoints would replace them: never silently."""
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.glob("step_*")):
        raise UsageError(f"{run_dir} already holds checkpoints; continue that run with --resume, "
                         "or choose another --run-dir")


def _check_same_run(cfg, run_dir: Path) -> None:
    """Resuming with another method, model, data, mask or optimiser setting would not continue the run."""
    from .config import load_config

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise UsageError(f"--resume: {saved_path} not found; is {run_dir} a run folder?")
    saved = load_config(saved_path).to_dict()
    current = cfg.to_dict()
    changed = [
        f"{section}.{key}"
        for section in ("method", "model", "mask", "data", "optim")
        for key in current[section]
        if current[section][key] != saved[section].get(key) and f"{section}.{key}" not in RESUME_FREE
    ]
    changed += [f"train.{key}" for key in ("seed", "budget_flops")
                if current["train"][key] != saved["train"][key]]
    if changed:
        raise UsageError(f"--resume: config differs from {saved_path} in {', '.join(changed)}")


def cmd_eval(args) -> None:
    from .eval.features import FeatureCache
    from .eval.report import format_table, write_report
    from .eval.run import evaluate

    if args.last_layers is not None and args.last_layers < 1:
        raise UsageError(f"--last-layers must be >= 1, got {args.last_layers}")
    settings = {
        "linear": lambda: {"solver": args.solver, "batchnorm": args.batchnorm},
        "knn": lambda: {"ks": tuple(args.k), "temperature": args.temperature},
        "lowshot": lambda: {"shots": tuple(args.shots), "seeds": args.seeds},
        "attentive": lambda: {},
    }[args.protocol]()
    _check_eval_settings(args.protocol, settings)
    cache = None if args.no_cache else FeatureCache(args.cache_dir)
    report = evaluate(args.protocol, args.checkpoint, args.data, encoder=args.encoder,
                      baselines=args.baselines, last_layers=args.last_layers, cache=cache, **settings)
    print(format_table(report))
    if args.out:
        write_report(report, args.out)
    _print_json(report)


def _check_eval_settings(protocol: str, settings: dict) -> None:
    if protocol == "linear" and settings["batchnorm"] and settings["solver"] != "adamw":
        raise UsageError("--batchnorm needs --solver adamw (BatchNorm + linear is trained by mini-batches)")
    if protocol == "knn":
        if any(k < 1 for k in settings["ks"]):
            raise UsageError(f"--k values must be >= 1, got {list(settings['ks'])}")
        if settings["temperature"] <= 0:
            raise UsageError(f"--temperature must be > 0, got {settings['temperature']}")
    if protocol == "lowshot":
        if settings["seeds"] < 1:
            raise UsageError(f"--seeds must be >= 1, got {settings['seeds']}")
        for shot in settings["shots"]:
            if not re.fullmatch(r"[1-9]\d*|\d+(\.\d+)?%", shot) or shot in ("0%",):
                raise UsageError(f"--shots: {shot!r} is neither a count >= 1 nor a percentage like 1%")


def cmd_embed(args) -> None:
    from .eval.embed import embed_to_file

    if args.last_layers < 1:
        raise UsageError(f"--last-layers must be >= 1, got {args.last_layers}")
    if not args.out.endswith((".npy", ".safetensors")):
        raise UsageError(f"--out must end in .npy or .safetensors, got {args.out!r}")
    _print_json(embed_to_file(args.checkpoint, args.data, args.out, split=args.split,
                              encoder=args.encoder, last_layers=args.last_layers,
                              patch_tokens=args.patch_tokens))


def cmd_shard(args) -> None:
    from .data import build_dataset, check_data_path
    from .data.shards import write_shards

    if args.per_shard < 1:
        raise UsageError(f"--per-shard must be >= 1, got {args.per_shard}")
    out = Path(args.out)
    if out.exists() and any(out.glob("shard-*.tar")):
        raise UsageError(f"{out} already holds shards; choose another --out")
    check_data_path(args.data)
    dataset = build_dataset(args.data, train=args.split == "train")
    shards = write_shards(dataset, out, per_shard=args.per_shard)
    pattern = out / f"shard-{{{0:06d}..{len(shards) - 1:06d}}}.tar"
    print(f"imagejepa: {len(dataset)} images in {len(shards)} shard(s); train with "
          f"--set data.dataset=webdataset:{pattern}")


def cmd_viz(args) -> None:
    from .viz.figure import check_png_path, png_pixel_size

    check_png_path(args.out)
    if args.what == "masks":
        from .viz.masks import write_masks_png

        out, panels = write_masks_png(args.config, args.out, args.images, args.seed, args.data), args.images
    elif args.what == "features":
        from .viz.features import write_features_png

        out = write_features_png(args.checkpoint, args.data, args.out, args.images, args.split)
        panels = 2 * args.images
    elif args.what == "curves":
        from .viz.curves import PANELS, write_curves_png

        out, panels = write_curves_png(args.run_dirs, args.out), len(PANELS)
    elif args.what == "predictions":
        from .viz.predictions import write_predictions_png

        out = write_predictions_png(args.checkpoint, args.decoder, args.data, args.out, args.images,
                                    args.samples)
        panels = args.images * (3 + args.samples)
    else:
        from .viz.neighbors import write_neighbors_png

        out = write_neighbors_png(args.checkpoint, args.data, args.out, args.queries, args.k, args.bank)
        panels = args.queries * (1 + args.k)
    width, height = png_pixel_size(out)
    print(f"imagejepa viz {args.what}: wrote {out} ({panels} panels, {width}x{height} pixels)")


def cmd_report(args) -> None:
    from .viz.report import write_report

    def warn(message: str) -> None:  # a section left out, and why
        print(f"imagejepa report: {message}", file=sys.stderr, flush=True)

    print(write_report(args.run_dir, args.out, warn=warn), flush=True)


def cmd_decoder(args) -> None:
    from .decoder.train import score_line, train_decoder

    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size),
                        ("--score-images", args.score_images)):
        if value < 1:
            raise UsageError(f"decoder train: {flag} must be >= 1, got {value}")
    if not args.lr > 0:
        raise UsageError(f"decoder train: --lr must be > 0, got {args.lr}")
    train_decoder(args.checkpoint, args.data, args.out, args.steps, args.batch_size, args.lr, args.seed,
                  log=lambda line: print(line, file=sys.stderr, flush=True))
    print(score_line(args.out, args.data, args.score_images), flush=True)


def cmd_bench(args) -> None:
    if args.what == "train":
        from .bench.train import bench_train

        arch, patch = _parse_model(args.model)
        if args.batch_size is not None and args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        if 224 % patch:
            raise UsageError(f"--model {args.model}: 224 is not divisible by the patch size {patch}")
        _print_json(bench_train(args.steps, args.warmup, args.device, args.precision, args.batch_size,
                                arch, patch, compiled=not args.eager_only))
    elif args.what == "claims":
        from .bench.claims import run_claims

        out = args.out or ("runs/claims-quick" if args.quick else "runs/claims")
        summary = run_claims(Path(out), quick=args.quick, only=args.only)
        _print_json({"out": out, "cells": [{"key": r["key"], "method": r["method"], "dataset": r["dataset"],
                                            "flops": r["flops"], "steps": r["steps"], **r["probes"]}
                                           for r in summary["cells"]],
                     "baselines": summary["baselines"], "pending": summary["pending"]})
    elif args.what == "data":
        from .bench.data import bench_data
        from .data import check_data_path

        try:
            workers = tuple(int(w) for w in args.workers.split(",") if w.strip())
        except ValueError:
            raise UsageError(f"--workers: expected numbers like 2,4, got {args.workers!r}") from None
        for name, ok in (("--workers must be >= 0", all(w >= 0 for w in workers)),
                         ("--batches must be >= 1", args.batches >= 1),
                         ("--img-size must be >= 1", args.img_size >= 1),
                         ("--in-chans must be 1 or 3", args.in_chans in (1, 3))):
            if not ok:
                raise UsageError(f"bench data: {name}")
        check_data_path(args.data)
        _print_json(bench_data(args.data, args.img_size, args.in_chans, batches=args.batches,
                               workers=workers))
    elif args.what == "embed":
        from .bench.embed import bench_embed

        arch, patch = _parse_model(args.model)
        for key in ("batch_size", "steps", "img_size"):
            if getattr(args, key) < 1:
                raise UsageError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
        if args.depth is not None and args.depth < 1:
            raise UsageError(f"--depth must be >= 1, got {args.depth}")
        if args.img_size % patch:
            raise UsageError(f"--img-size {args.img_size} is not divisible by the patch size {patch}")
        _print_json(bench_embed(arch, patch, args.img_size, args.batch_size, args.steps, args.warmup,
                                args.precision, args.device, args.depth))
    else:
        from .bench.masks import bench_masks

        _print_json(bench_masks(args.batch_size, args.grid))


def _parse_model(name: str) -> tuple[str, int]:
    """``vit_huge_patch14`` -> ``("vit_huge", 14)``; the patch defaults to 16."""
    from .models import ARCHS

    m = re.fullmatch(r"(vit_[a-z]+)(?:_patch(\d+))?", name)
    if not m or m.group(1) not in ARCHS:
        raise UsageError(f"unknown model {name!r}; use one of {', '.join(ARCHS)} "
                         "optionally with _patchN, e.g. vit_huge_patch14")
    return m.group(1), int(m.group(2) or 16)


def cmd_info(args) -> None:
    from .bench.flops import model_info
    from .interop.registry import RELEASES

    if args.model in RELEASES:
        release = RELEASES[args.model]
        info = model_info(release.arch, release.patch_size, release.img_size, 3)
        _print_json({**release.to_dict(), **info, "name": release.name})
        return
    if "." in args.model:
        raise UsageError(f"unknown released checkpoint {args.model!r}; known: {', '.join(RELEASES)}")
    arch, patch = _parse_model(args.model)
    _print_json(model_info(arch, args.patch_size or patch, args.img_size, args.in_chans))


def cmd_convert(args) -> None:
    from .interop.convert import convert

    if args.heads is not None and args.heads < 1:
        raise UsageError(f"--heads must be >= 1, got {args.heads}")
    try:
        summary = convert(args.src, args.dst, to=args.to, which=args.encoder, num_heads=args.heads)
    except KeyError as e:  # a name the source's layout lacks
        raise UsageError(str(e).strip("'\"")) from None
    _print_json(summary)


# The commands other than pretrain, which alone is given the stop signals (see _run).
COMMANDS = {"eval": cmd_eval, "embed": cmd_embed, "shard": cmd_shard, "bench": cmd_bench,
            "info": cmd_info, "convert": cmd_convert, "viz": cmd_viz,
            "report": cmd_report, "decoder": cmd_decoder}


def main(argv: list[str] | None = None) -> int:
    # Stop signals are caught from here on, before PyTorch loads and the run is built (which
    # can take minutes), so that pre-emption at any moment of a pretrain ends in exit 75.
    with StopSignals() as signals:
        args = _parser().parse_args(argv)
        return _run(args, signals)


def run() -> None:
    """The program ``imagejepa`` (and ``python -m imagejepa``): :func:`main`, then exit.

    A torchrun worker exits without the interpreter's finalization. Under FSDP2 the gloo
    group outlives ``destroy_process_group`` (DTensor's caches hold its mesh), and a gloo
    thread still releasing the last collective's tensors when finalization starts is killed
    taking the GIL, which aborts the finished run (SIGABRT, "terminate called without an
    active exception", in about one run in 20 on a loaded machine). Everything the run
    wrote is closed by then, so only the output streams are flushed (an unexpected error's
    traceback is printed first, as the interpreter would, with exit code 1)."""
    try:
        code = main()
    except BaseException as e:
        if not _joined_a_group():
            raise
        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1
        if not isinstance(e, SystemExit):
            traceback.print_exc()
    if _joined_a_group():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _joined_a_group() -> bool:
    if "imagejepa.distributed.processes" not in sys.modules:  # PyTorch may not even be loaded
        return False
    from .distributed.processes import joined_a_group

    return joined_a_group()


def _run(args, signals: StopSignals) -> int:
    """Run the command; map the error hierarchy to exit codes and one line on stderr."""
    try:
        if args.command == "pretrain":
            cmd_pretrain(args, signals)
        else:
            signals.release()  # the other commands keep the signals' default effect
            COMMANDS[args.command](args)
    except (UsageError, FileNotFoundError) as e:
        print(f"imagejepa {args.command}: error: {e}", file=sys.stderr)
        return USAGE_EXIT
    except Preempted as e:
        print(f"imagejepa {args.command}: {e}", file=sys.stderr)
        return PREEMPTED_EXIT
    except RunError as e:
        print(f"imagejepa {args.command}: error: {e}", file=sys.stderr)
        return FAILURE_EXIT
    except KeyboardInterrupt:
        print("imagejepa: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    run()
