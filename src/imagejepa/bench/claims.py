"""``imagejepa bench claims``: the paper's comparisons at this machine's scale, by compute.

Each *cell* pretrains one method (``ijepa``, ``mae``, ``dino``, ``ijepa_pixels``) on one
dataset for one budget of training FLOPs (``train.budget_flops``: the same steps on a busy
machine as on an idle one) and one seed, with ``recipe: auto`` and the method's defaults,
then probes its evaluated encoder with the same probes as every other cell:

- Fashion-MNIST: linear, kNN (k=20) and 10-shot on the test split;
- scenes (rendered, :mod:`imagejepa.data.scenes`): object count and distance of the nearest
  object, each with the linear and the attentive probe.

Raw pixels and the same architecture at random initialisation are probed once per dataset.
The middle budget is the FLOPs of the demo's 9-minute I-JEPA run on the machine it was
measured on; the others are a factor 3 below and above. Each cell is written to
``OUT/cells/KEY.json`` when done (its pretraining run in ``OUT/runs/KEY``, resumed if it was
interrupted), so the bench resumes and can be run in parts; a finished cell is never run
again. The summary is ``claims.json``, ``claims.md`` and ``claims.png`` (accuracy against
pretraining FLOPs per method, the shape of the paper's Figure 1).
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..utils.files import atomic_write_text

METHODS = ("ijepa", "mae", "dino", "ijepa_pixels")
# The demo (configs/fmnist_vit_tiny.yaml) took 5,471 steps in its 9 minutes on the machine the
# README's demo ran on (2 AMD EPYC cores with AVX512-BF16, bf16); one step of its I-JEPA is
# counted, not timed, so the budget is a number of FLOPs any machine reproduces.
DEMO_STEPS = 5471
BUDGETS = {"low": 1 / 3, "mid": 1.0, "high": 3.0}
QUICK_BUDGET = 1 / 90  # --quick: about 60 I-JEPA steps


@dataclass(frozen=True)
class Dataset:
    """What a cell pretrains on (``pretrain``, labels unused) and probes: ``(name, data spec,
    protocol, settings)``, each reporting one top-1."""

    name: str
    pretrain: str
    probes: tuple[tuple[str, str, str, dict], ...]


def datasets(quick: bool) -> dict[str, Dataset]:
    fm = "fashion-mnist:train=5000,test=1000" if quick else "fashion-mnist"
    sizes = "train=3000,test=1000" if quick else "train=20000,test=5000"
    count, dist = f"scenes:count,{sizes}", f"scenes:dist,{sizes}"
    return {
        "fashion-mnist": Dataset("fashion-mnist", fm, (
            ("linear", fm, "linear", {}),
            ("knn20", fm, "knn", {"ks": (20,)}),
            ("10-shot", fm, "lowshot", {"shots": ("10",), "seeds": 3}),
        )),
        "scenes": Dataset("scenes", count, (
            ("count linear", count, "linear", {}),
            ("count attentive", count, "attentive", {}),
            ("dist linear", dist, "linear", {}),
            ("dist attentive", dist, "attentive", {}),
        )),
    }


@dataclass(frozen=True)
class Cell:
    method: str
    dataset: str
    budget: str  # a key of BUDGETS, or "quick"
    seed: int = 0

    @property
    def key(self) -> str:
        return f"{self.dataset}-{self.method}-{self.budget}-s{self.seed}"


def grid(quick: bool) -> list[Cell]:
    """The cells, most informative first (so a partial run answers the main questions)."""
    if quick:
        return [Cell(m, d, "quick") for d in ("fashion-mnist", "scenes") for m in METHODS]
    cells = [Cell(m, "fashion-mnist", "mid") for m in METHODS]
    cells += [Cell(m, "scenes", "mid") for m in METHODS]
    cells += [Cell(m, "fashion-mnist", b) for b in ("low", "high") for m in ("ijepa", "mae")]
    cells += [Cell(m, "fashion-mnist", "mid", s) for s in (1, 2) for m in ("ijepa", "mae")]
    return cells


def demo_flops() -> float:
    """FLOPs of the demo's I-JEPA run: :data:`DEMO_STEPS` x one step of its model, counted."""
    from ..config import load_config
    from ..data import build_dataset
    from ..methods import build_method
    from ..train.build import build_data, build_views
    from ..train.flops import config_step_flops
    from ..train.recipe import resolve_recipe

    cfg = load_config(None, ["recipe=auto", "data.dataset=fashion-mnist"])
    dataset = build_dataset("fashion-mnist")
    resolve_recipe(cfg, dataset)  # before anything is sized from the config
    data = build_data(cfg, dataset)
    model = build_method(cfg)
    return DEMO_STEPS * config_step_flops(cfg, model, data.dataset, build_views(cfg, data, model))


def cell_config(cell: Cell, budget_flops: float, data: Dataset, overrides=()):
    from ..config import load_config

    return load_config(None, [
        "recipe=auto", f"data.dataset={data.pretrain}", f"method.name={cell.method}",
        f"train.seed={cell.seed}", f"train.budget_flops={budget_flops}", "train.checkpoint_every_steps=1000",
        *overrides,
    ])


def run_cell(cell: Cell, budget_flops: float, data: Dataset, out: Path, log, overrides=()) -> dict:
    """Pretrain (resuming an interrupted run) and probe one cell; returns its record."""
    from .. import checkpoint as ckpt
    from ..eval.features import FeatureCache
    from ..eval.run import evaluate
    from ..train.trainer import Trainer

    run_dir = out / "runs" / cell.key
    cfg = cell_config(cell, budget_flops, data, overrides)
    resume = ckpt.latest_checkpoint(run_dir) is not None
    start = time.perf_counter()
    trainer = Trainer(cfg, run_dir, resume=resume, log=log, warn=log)
    trainer.fit()
    pretrain_minutes = trainer.train_seconds / 60
    probes = {}
    cache = FeatureCache(out / "features")
    for name, spec, protocol, settings in data.probes:
        report = evaluate(protocol, run_dir, spec, cache=cache, progress=False, **settings)
        probes[name] = top1(protocol, report["results"]["target"])
    return {
        **asdict(cell), "key": cell.key, "flops": trainer.step * trainer.step_flops,
        "step_flops": trainer.step_flops, "steps": trainer.step,
        "images_seen": trainer.step * cfg.data.batch_size, "pretrain_minutes": round(pretrain_minutes, 2),
        "minutes": round((time.perf_counter() - start) / 60, 2), "probes": probes,
        "arch": f"{cfg.model.arch}/{cfg.model.patch_size} depth {cfg.model.depth}",
    }


def baselines(data: Dataset, checkpoint: Path, out: Path) -> dict:
    """Raw pixels and random init under the dataset's probes (``checkpoint`` gives the architecture)."""
    from ..eval.features import FeatureCache
    from ..eval.run import evaluate

    rows = {"pixels": {}, "random": {}}
    for name, spec, protocol, settings in data.probes:
        report = evaluate(protocol, checkpoint, spec, baselines=True, cache=FeatureCache(out / "features"),
                          progress=False, **settings)
        for source in rows:
            rows[source][name] = top1(protocol, report["results"][source])
    return rows


def top1(protocol: str, result: dict) -> float:
    """The one number a probe reports here, in percent."""
    if protocol == "knn":
        value = result["k=20"]["top1"]
    elif protocol == "lowshot":
        value = result["10-shot"]["top1_mean"]
    else:
        value = result["top1"]
    return round(100 * value, 2)


def run_claims(out: Path, quick: bool = False, cells: list[Cell] | None = None, log=None,
               budget_flops: Callable[[], float] = demo_flops, overrides=(), only: str | None = None) -> dict:
    """Run every cell not yet done (``only``: those whose key contains it), then write the
    summary; returns it. ``overrides`` (``--set`` items) apply to every cell (tests)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    sets = datasets(quick)
    cells = cells if cells is not None else grid(quick)
    mid = _cached_number(out / "budget.json", budget_flops)
    for cell in cells:
        path = out / "cells" / f"{cell.key}.json"
        if path.is_file() or (only and only not in cell.key):
            continue
        scale = QUICK_BUDGET if cell.budget == "quick" else BUDGETS[cell.budget]
        log(f"bench claims: {cell.key} ({scale * mid:.3g} FLOPs)")
        record = run_cell(cell, scale * mid, sets[cell.dataset], out, log, overrides)
        atomic_write_text(path, json.dumps(record, indent=1))
        log(f"bench claims: {cell.key} done: {record['steps']} steps, {record['probes']}")
    for name, data in sets.items():
        path = out / "cells" / f"{name}-baselines.json"
        # Any finished cell's checkpoint gives the architecture (cells copied in without
        # their run folder cannot).
        done = [c for c in cells if c.dataset == name and (out / "cells" / f"{c.key}.json").is_file()
                and (out / "runs" / c.key).is_dir()]
        if done and not path.is_file():
            atomic_write_text(path, json.dumps(baselines(data, out / "runs" / done[0].key, out), indent=1))
    summary = summarise(out, cells, mid)
    write_outputs(out, summary)
    return summary


def _cached_number(path: Path, compute: Callable[[], float]) -> float:
    """``compute()`` once; afterwards read back (a resumed bench keeps its budgets)."""
    if path.is_file():
        return float(json.loads(path.read_text())["mid_budget_flops"])
    value = float(compute())
    atomic_write_text(path, json.dumps({"mid_budget_flops": value, "demo_steps": DEMO_STEPS}))
    return value


def summarise(out: Path, cells: list[Cell], mid: float) -> dict:
    import torch

    from .roofline import machine_report

    records = [json.loads((out / "cells" / f"{c.key}.json").read_text())
               for c in cells if (out / "cells" / f"{c.key}.json").is_file()]
    base = {}
    for name in ("fashion-mnist", "scenes"):
        path = out / "cells" / f"{name}-baselines.json"
        if path.is_file():
            base[name] = json.loads(path.read_text())
    return {
        "machine": {"cpu": _cpu_name(), "cores": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, **machine_report(torch.device("cpu"))},
        "mid_budget_flops": mid, "demo_steps": DEMO_STEPS,
        "cells": records,
        "pending": [c.key for c in cells if not (out / "cells" / f"{c.key}.json").is_file()],
        "baselines": base, "seed_spread": seed_spread(records),
    }


def seed_spread(records: list[dict]) -> dict:
    """Mean and standard deviation over seeds of each (dataset, method, budget) with several."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"], r["budget"]), []).append(r)
    spread = {}
    for (dataset, method, budget), rows in groups.items():
        if len(rows) < 2:
            continue
        spread[f"{dataset}-{method}-{budget}"] = {
            probe: {"mean": round(statistics.mean(r["probes"][probe] for r in rows), 2),
                    "std": round(statistics.stdev(r["probes"][probe] for r in rows), 2), "seeds": len(rows)}
            for probe in rows[0]["probes"]}
    return spread


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(summary: dict) -> str:
    """The grid as markdown tables, one per dataset."""
    lines = []
    for name in ("fashion-mnist", "scenes"):
        rows = [r for r in summary["cells"] if r["dataset"] == name]
        if not rows:
            continue
        probes = list(rows[0]["probes"])
        lines += [f"### {name}", "", "| method | budget | seed | GFLOPs | steps | images seen | minutes | "
                  + " | ".join(probes) + " |", "|" + "---|" * (7 + len(probes))]
        for r in sorted(rows, key=lambda r: (r["flops"], r["method"], r["seed"])):
            lines.append(f"| {r['method']} | {r['budget']} | {r['seed']} | {r['flops'] / 1e9:,.0f} | "
                         f"{r['steps']:,} | {r['images_seen']:,} | {r['pretrain_minutes']:.1f} | "
                         + " | ".join(f"{r['probes'][p]:.2f}" for p in probes) + " |")
        for source, values in summary["baselines"].get(name, {}).items():
            label = {"pixels": "raw pixels", "random": "random init"}[source]
            scores = " | ".join(f"{values[p]:.2f}" for p in probes)
            lines.append(f"| {label} | | | 0 | 0 | 0 | | {scores} |")
        lines.append("")
    for key, probes in summary["seed_spread"].items():
        lines.append(f"- {key}, {next(iter(probes.values()))['seeds']} seeds: " + "; ".join(
            f"{p} {v['mean']:.2f} ± {v['std']:.2f}" for p, v in probes.items()))
    if summary["pending"]:
        lines += ["", f"Not yet run: {', '.join(summary['pending'])}."]
    return "\n".join(lines) + "\n"


def figure(summary: dict, path: Path) -> None:
    """Accuracy against pretraining FLOPs, one line per method, one panel per probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, probe) for name in ("fashion-mnist", "scenes") for probe in _probes_of(summary, name)]
    if not panels:
        return
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    mid = summary["mid_budget_flops"]

    def nominal(record: dict) -> float:  # the cell's budget (its FLOPs are within a step of it)
        return mid * (QUICK_BUDGET if record["budget"] == "quick" else BUDGETS[record["budget"]])

    colours = {"ijepa": "tab:red", "mae": "tab:blue", "dino": "tab:green", "ijepa_pixels": "tab:orange"}
    for ax, (name, probe) in zip(axes.flat, panels):
        for method in METHODS:
            points = sorted((nominal(r), r["probes"][probe]) for r in summary["cells"]
                            if r["dataset"] == name and r["method"] == method)
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, "o-", color=colours[method], label=method, markersize=4)
        for source, style in (("pixels", ":"), ("random", "--")):
            value = summary["baselines"].get(name, {}).get(source, {}).get(probe)
            if value is not None:
                ax.axhline(value, color="grey", linestyle=style, linewidth=1,
                           label="raw pixels" if source == "pixels" else "random init")
        ax.set_xscale("log")
        ticks = sorted({nominal(r) for r in summary["cells"]})
        ax.set_xlim(min(ticks) / 2, max(ticks) * 2)
        ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks])
        ax.minorticks_off()
        ax.set_title(f"{name}: {probe}", fontsize=9)
        ax.set_xlabel("pretraining FLOPs", fontsize=8)
        ax.set_ylabel("top-1 (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _probes_of(summary: dict, name: str) -> list[str]:
    rows = [r for r in summary["cells"] if r["dataset"] == name]
    return list(rows[0]["probes"]) if rows else []


def write_outputs(out: Path, summary: dict) -> None:
    atomic_write_text(out / "claims.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "claims.md", markdown(summary))
    figure(summary, out / "claims.png")
