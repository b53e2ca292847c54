"""``imagejepa viz curves``: training curves of one or more runs from their ``metrics.csv``.

Six panels on step axes, always the same whatever the runs recorded: loss, learning rate,
EMA momentum, RankMe, target std and online kNN top-1. Metrics computed only on some steps
(RankMe, kNN) leave the other rows empty; a run that predates a column lacks it, and a panel
no run recorded says "not recorded".
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .figure import PLOT_PX, check_png_path, panel_figure, png_bytes, write_png

# (metrics.csv column, panel title), in panel order (2 rows x 3 columns).
PANELS = (
    ("loss", "loss"), ("lr", "learning rate"), ("ema", "EMA momentum"),
    ("rankme", "RankMe (effective rank)"), ("target_std", "target std"), ("knn_top1", "kNN top-1"),
)
ROWS, COLS = 2, 3
MAX_POINTS = 2000  # per line; longer runs are reduced to each bucket's min and max


def read_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """``{column: float array (rows,)}`` of ``run_dir/metrics.csv``; empty cells are NaN.
    A missing folder or file, or a file without a ``step`` column, is a UsageError."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.csv"
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise UsageError(f"{run_dir} holds no metrics.csv: not a run folder of imagejepa pretrain")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    if not header or "step" not in header:
        raise UsageError(f"{path}: no 'step' column in its header; not a metrics.csv of imagejepa pretrain")
    rows = [row[: len(header)] + [""] * (len(header) - len(row)) for row in rows]
    columns = zip(*rows) if rows else [()] * len(header)
    return {name: _numbers(cells) for name, cells in zip(header, columns)}


def _numbers(cells: Sequence[str]) -> np.ndarray:
    """Cells of one column -> floats, NaN where empty (or not a number: a text column)."""
    try:
        return np.array([float(c) if c else math.nan for c in cells], dtype=float)
    except ValueError:
        return np.array([_number(c) for c in cells], dtype=float)


def _number(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Legend names: each folder's name, with its parent's where two names are equal."""
    paths = [Path(p).resolve() for p in run_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def reduce_points(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS
                  ) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``max_points`` points of a line: each bucket's minimum and maximum, in
    step order, so spikes survive (plain striding would drop most of them)."""
    if len(x) <= max_points:
        return x, y
    buckets = np.array_split(np.arange(len(x)), max_points // 2)
    keep = sorted({i for b in buckets for i in (b[np.argmin(y[b])], b[np.argmax(y[b])])})
    return x[keep], y[keep]


def curves_figure(run_dirs: Sequence[str | Path]):
    """A matplotlib Figure of 2 x 3 plot panels (``PANELS``), one line per run, a legend of
    the runs' folder names in the loss panel."""
    if not run_dirs:
        raise UsageError("viz curves needs at least one RUN_DIR")
    runs = [read_metrics(d) for d in run_dirs]
    labels = run_labels(run_dirs)
    fig, axes = panel_figure(ROWS, COLS, PLOT_PX)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.08, top=0.94, wspace=0.3, hspace=0.34)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    steps = _step_range(runs)
    for ax, (column, title) in zip(axes.flat, PANELS):
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step", fontsize=7)
        drawn = []
        for run, label, colour in zip(runs, labels, colours):
            if column not in run:
                continue
            ok = np.isfinite(run["step"]) & np.isfinite(run[column])
            if ok.any():
                x, y = reduce_points(run["step"][ok], run[column][ok])
                # Sparse metrics (a few evaluated steps) get markers, or one point would vanish.
                marker = "o" if ok.sum() < 50 else None
                ax.plot(x, y, color=colour, label=label, linewidth=1.0, marker=marker, markersize=3)
                drawn.append(y)
        if not drawn:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes,
                    fontsize=9, color="0.4")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.set_xlim(*steps)  # the same step axis in every panel
            _format_axes(ax, log=column == "loss" and all((y > 0).all() for y in drawn))
    loss_ax = axes.flat[0]
    handles, names = loss_ax.get_legend_handles_labels()
    if not handles:  # no run recorded a loss yet: the legend still names the runs
        handles = [loss_ax.plot([], [], color=c, label=n)[0] for c, n in zip(colours, labels)]
    loss_ax.legend(handles=handles, fontsize=7, loc="upper right")
    return fig


def _step_range(runs: list[dict[str, np.ndarray]]) -> tuple[float, float]:
    """``(first, last)`` step over all runs, widened a little so end points are not on the frame."""
    steps = np.concatenate([run["step"][np.isfinite(run["step"])] for run in runs])
    if len(steps) == 0:
        return 0.0, 1.0
    low, high = float(steps.min()), float(steps.max())
    pad = max(0.5, 0.02 * (high - low))
    return low - pad, high + pad


def _format_axes(ax, log: bool) -> None:
    """Integer steps; plain numbers on y (no offset like ``1e-5+9.96e-1``, which hides an
    EMA of 0.99602); the loss on a log axis, labelled at minor ticks too when it spans less
    than a decade (else the labels would overlap)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if log:
        ax.set_yscale("log")
        short = FuncFormatter(lambda value, _: f"{value:.4g}")
        ax.yaxis.set_major_formatter(short)
        low, high = ax.get_ylim()
        if high < 10 * low:
            ax.yaxis.set_minor_formatter(short)
            ax.tick_params(which="minor", labelsize=7)
        else:
            ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.ticklabel_format(axis="y", useOffset=False)


def curves_png(run_dirs: Sequence[str | Path]) -> bytes:
    """:func:`curves_figure` as PNG bytes."""
    return png_bytes(curves_figure(run_dirs))


def write_curves_png(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write :func:`curves_figure` to ``out`` (a .png file) atomically; returns the path."""
    check_png_path(out)
    return write_png(curves_png(run_dirs), out)
