"""Evaluation reports: a readable table for people, a JSON object for programs."""

from __future__ import annotations

import json
from pathlib import Path


def _cell(value) -> str:
    if isinstance(value, tuple):  # (mean, std) over seeds
        return f"{100 * value[0]:.2f} ± {100 * value[1]:.2f}"
    return f"{100 * value:.2f}"


def format_table(report: dict) -> str:
    """One row per feature source, one column per summary metric (percent)."""
    rows = report["summary"]
    columns = list(next(iter(rows.values())))
    cells = {src: [_cell(v) for v in metrics.values()] for src, metrics in rows.items()}
    name_w = max(len("features"), *(len(s) for s in rows))
    widths = [max(len(c), *(len(cells[s][i]) for s in rows)) for i, c in enumerate(columns)]
    line = lambda first, items: "  ".join([first.ljust(name_w), *(x.rjust(w) for x, w in zip(items, widths))])
    head = (f"{report['protocol']} probe on {report['data']}: {report['train_images']} train -> "
            f"{report['test_images']} test images, {report['seconds']:.0f} s")
    out = [head, line("features", columns), line("-" * name_w, ["-" * w for w in widths])]
    out += [line(src, cells[src]) for src in rows]
    return "\n".join(out)


def write_report(report: dict, path: str | Path) -> None:
    """Write the JSON report atomically (a crash never leaves half a file)."""
    from ..utils.files import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
