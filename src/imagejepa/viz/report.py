"""``imagejepa report RUN_DIR``: one self-contained ``report.html`` of a run.

Sections, in order: the run (model, data, steps, latest checkpoint), a health summary of
``metrics.csv`` with a verdict (the trainer's own collapse rules replayed over its rows),
the training curves, masks over training crops, the PCA of patch features, every
evaluation JSON in the folder, and the config. Pictures are embedded as ``data:`` URIs and
the stylesheet is inline: the file references nothing outside itself. A section that cannot
be made (data not on this machine, no checkpoint yet) shows a one-line note instead.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ImageJepaError, UsageError
from ..utils.files import atomic_write_text

REPORT_NAME = "report.html"
MAX_JSON_BYTES = 1 << 20  # larger JSON files are listed, not rendered
MAX_DEPTH = 6  # nesting shown as tables; deeper values are shown as JSON text

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
 background:#fff;margin:0}
main{max-width:1120px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:28px 0 8px;
 border-bottom:1px solid #d0d7de;padding-bottom:4px}h3{font-size:14px;margin:16px 0 6px}
nav a{margin-right:12px;color:#0969da;text-decoration:none}
table{border-collapse:collapse;margin:4px 0 8px}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
table table{margin:0}img{max-width:100%;height:auto;display:block;margin:6px 0}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:8px;overflow:auto;font-size:12px}
.note{color:#57606a;font-style:italic}.verdict{padding:8px 12px;border-radius:6px;margin:8px 0}
.ok{background:#dafbe1;border:1px solid #4ac26b}.warn{background:#fff8c5;border:1px solid #d4a72c}
.bad{background:#ffebe9;border:1px solid #ff8182}.unknown{background:#f6f8fa;border:1px solid #d0d7de}
ul.warnings{margin:4px 0;padding-left:20px;font-size:13px}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value) -> str:
    """A number for people: 4 significant digits, "–" for a missing (NaN) value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(rows: list[tuple[str, str]], header: tuple[str, str] | None = None) -> str:
    """Rows of ``(label, cell HTML)``; labels are escaped here, cells must be HTML already."""
    head = f"<tr><th>{esc(header[0])}</th><th>{esc(header[1])}</th></tr>" if header else ""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{head}{body}</table>"


def reason(error: BaseException) -> str:
    """One line saying why a section could not be made."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not isinstance(error, (ImageJepaError, FileNotFoundError)) or not text:
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text[:400]


# -- the health summary ---------------------------------------------------------------------

@dataclass
class Health:
    """What ``metrics.csv`` says: ``level`` ok | warn | bad | unknown, a ``verdict`` in words,
    the monitors' ``warnings`` and ``rows`` of ``(metric, value text)``."""

    level: str
    verdict: str
    warnings: list[str] = field(default_factory=list)
    rows: list[tuple[str, str]] = field(default_factory=list)


def _finite(metrics: dict[str, np.ndarray], column: str) -> np.ndarray | None:
    """The recorded (finite) values of a column, or None when the run did not record it."""
    if column not in metrics:
        return None
    values = metrics[column][np.isfinite(metrics[column])]
    return values if len(values) else None


def _summary(values: np.ndarray | None, parts: dict[str, Callable[[np.ndarray], float]]) -> str:
    if values is None:
        return "not recorded"
    return " · ".join(f"{name} {fmt(float(f(values)))}" for name, f in parts.items())


FIRST, LAST = (lambda v: v[0]), (lambda v: v[-1])


def health(metrics: dict[str, np.ndarray], thresholds=None) -> Health:
    """Summarise ``{column: float array}`` (``viz.curves.read_metrics``), replaying the
    trainer's collapse warnings (:class:`~imagejepa.monitor.CollapseWatch`) with the run's
    thresholds (``Thresholds.from_config``; the defaults when None)."""
    from ..monitor import CollapseWatch, Thresholds

    steps = metrics.get("step", np.zeros(0))
    n = len(steps)
    if n == 0:
        return Health("unknown", "No training step recorded yet.")
    thresholds = thresholds or Thresholds()
    collapse_std, rankme_drop = thresholds.collapse_std, thresholds.rankme_drop
    watch = CollapseWatch(thresholds)
    warnings = []
    columns = [c for c in ("loss", "target_std", "rankme", "knn_top1") if c in metrics]
    for i in range(n):
        row = {"step": int(steps[i]), "loss": math.nan, "target_std": math.nan,
               **{c: float(metrics[c][i]) for c in columns}}
        warnings += [w.removeprefix("imagejepa: warning: ") for w in watch.update(row)]

    loss, std, rm = _finite(metrics, "loss"), _finite(metrics, "target_std"), _finite(metrics, "rankme")
    skipped = _finite(metrics, "skipped_step")
    skipped_steps = int(skipped.sum()) if skipped is not None else 0
    blocks = sorted((c for c in metrics if c.startswith("loss_block")), key=lambda c: int(c[10:] or 0))
    block_last = [_finite(metrics, c) for c in blocks]
    rows = [
        ("final loss", "not recorded" if "loss" not in metrics else fmt(float(metrics["loss"][-1]))
         + (f" (first {fmt(float(loss[0]))})" if loss is not None else "")),
        ("target std", _summary(std, {"first": FIRST, "last": LAST, "min": np.min})
         + (f" (warns below train.collapse_std = {fmt(collapse_std)})" if collapse_std is not None
            else " (collapse warning off)")),
        ("RankMe", _summary(rm, {"first": FIRST, "highest": np.max, "last": LAST})
         + (f" (warns below monitor.rankme_drop = {fmt(rankme_drop)} × highest)"
            if rm is not None and rankme_drop is not None else "")),
        ("pred cos (last)", _summary(_finite(metrics, "pred_cos"), {"": LAST}).strip()),
        ("loss per target block (last)", "not recorded" if not blocks or all(b is None for b in block_last)
         else " · ".join(f"{c[5:]} {fmt(float(b[-1])) if b is not None else '–'}"
                         for c, b in zip(blocks, block_last))),
        ("online kNN top-1 (%)", _summary(_finite(metrics, "knn_top1"),
                                          {"first": FIRST, "last": LAST, "best": np.max})),
        ("skipped steps", "not recorded" if skipped is None else f"{skipped_steps} of {n}"),
    ]
    return Health(*_verdict(n, metrics, watch, warnings, skipped_steps, loss), warnings, rows)


def _verdict(n, metrics, watch, warnings, skipped_steps, loss) -> tuple[str, str]:
    last_loss = float(metrics["loss"][-1]) if "loss" in metrics else math.nan
    trend = (f" The loss went from {fmt(float(loss[0]))} to {fmt(last_loss)} over {n} steps."
             if loss is not None and math.isfinite(last_loss) else "")
    if "loss" in metrics and not math.isfinite(last_loss):
        return "bad", f"Unhealthy: the last recorded loss (step {int(metrics['step'][-1])}) is not finite."
    now = watch.now()
    if now:
        return "bad", f"Possible representation collapse at the end of the run: {'; '.join(now)}.{trend}"
    skipped = f" {skipped_steps} step(s) were skipped (non-finite loss or gradient)." if skipped_steps else ""
    if warnings:
        return "warn", (f"Recovered: the run warned of collapse {len(warnings)} time(s) (listed below) "
                        f"but ended above the thresholds.{trend}{skipped}")
    if skipped:
        return "warn", f"No collapse warning, but{skipped[0].lower()}{skipped[1:]}{trend}"
    short = " (a short run: little to judge from yet)" if n < 20 else ""
    return "ok", f"Healthy: no collapse warning in {n} steps{short}.{trend}"


def health_html(h: Health) -> str:
    out = [f'<div class="verdict {esc(h.level)}">{esc(h.verdict)}</div>', table(h.rows)]
    if h.warnings:
        out.append("<h3>Warnings</h3><ul class=\"warnings\">"
                   + "".join(f"<li>{esc(w)}</li>" for w in h.warnings) + "</ul>")
    return "".join(out)


# -- evaluation JSON files -------------------------------------------------------------------

def value_html(value, depth: int = 0) -> str:
    """Any JSON value as HTML: objects as nested tables, lists of scalars joined by commas."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        if depth >= MAX_DEPTH:
            return f"<code>{esc(json.dumps(value))}</code>"
        return table([(str(k), value_html(v, depth + 1)) for k, v in value.items()])
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return esc(", ".join(fmt(v) for v in value)) if value else "[]"
        return "".join(f"<div>{value_html(v, depth + 1)}</div>" for v in value)
    return esc(fmt(value))


def _percent(value) -> str:
    """An eval summary cell: a fraction, or ``[mean, std]`` over seeds, in percent."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{100 * value:.2f}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"{100 * value[0]:.2f} ± {100 * value[1]:.2f}"
    return esc(fmt(value) if not isinstance(value, (dict, list)) else json.dumps(value))


def summary_html(summary, percent: bool) -> str:
    """``{source: {metric: value}}`` as one table, sources as rows; anything else generically."""
    if not (isinstance(summary, dict) and summary and all(isinstance(v, dict) for v in summary.values())):
        return value_html(summary)
    columns = list(dict.fromkeys(k for metrics in summary.values() for k in metrics))
    cell = _percent if percent else (lambda v: value_html(v, MAX_DEPTH - 1))
    head = "<tr><th>features</th>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>"
    body = "".join(
        f"<tr><th>{esc(source)}</th>"
        + "".join(f'<td class="num">{cell(m[c]) if c in m else "–"}</td>' for c in columns) + "</tr>"
        for source, m in summary.items())
    return f"<table>{head}{body}</table>"


def eval_json_html(path: Path) -> str:
    """One ``*.json`` file as a section: its summary first (percent for an eval report),
    then the rest; a file that does not parse is listed as unreadable."""
    title = f"<h3>{esc(path.name)}</h3>"
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        return title + note(f"{size} bytes: too large to show here")
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return title + note(f"unreadable: {reason(e)}")
    if not isinstance(report, dict):
        return title + value_html(report)
    out = [title]
    is_eval = "protocol" in report
    if is_eval:
        seconds = report.get("seconds")
        out.append(f"<p>{esc(report['protocol'])} probe on {esc(report.get('data', '?'))}: "
                   f"{esc(fmt(report.get('train_images')))} train → {esc(fmt(report.get('test_images')))} "
                   f"test images" + (f", {esc(fmt(seconds))} s" if seconds is not None else "") + "</p>")
    if "summary" in report:
        out.append("<p>summary" + (" (percent)" if is_eval else "") + "</p>")
        out.append(summary_html(report["summary"], percent=is_eval))
    rest = {k: v for k, v in report.items() if k != "summary"}
    if rest:
        out.append("<p>details</p>" + value_html(rest))
    return "".join(out)


# -- the report ------------------------------------------------------------------------------

def _check_run(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run folder")
    if not (run_dir / "config.yaml").is_file() and not (run_dir / "metrics.csv").is_file():
        raise UsageError(f"{run_dir} holds neither config.yaml nor metrics.csv: not a run folder "
                         "of imagejepa pretrain")


def report_html(run_dir: str | Path, warn: Callable[[str], None] = lambda message: None) -> str:
    """The report of ``run_dir`` as one HTML page; ``warn`` hears each section left out."""
    from ..checkpoint import latest_checkpoint
    from ..config import load_config
    from .curves import read_metrics

    run_dir = Path(run_dir)
    _check_run(run_dir)
    sections: list[tuple[str, str, str]] = []  # (anchor, title, body HTML)

    def section(anchor: str, title: str, make: Callable[[], str]) -> None:
        try:
            body = make()
        except Exception as e:  # one section failing never costs the others
            warn(f"{title.lower()}: not made: {reason(e)}")
            body = note(f"not made: {reason(e)}")
        sections.append((anchor, title, body))

    cfg, cfg_error = None, None
    if (run_dir / "config.yaml").is_file():
        try:
            cfg = load_config(run_dir / "config.yaml")
        except Exception as e:
            cfg_error = f"config.yaml unreadable: {reason(e)}"
    else:
        cfg_error = "no config.yaml in the run folder"
    metrics, metrics_error = None, None
    if (run_dir / "metrics.csv").is_file():
        try:
            metrics = read_metrics(run_dir)
        except Exception as e:
            metrics_error = f"metrics.csv unreadable: {reason(e)}"
    else:
        metrics_error = "no metrics.csv yet"
    checkpoint = latest_checkpoint(run_dir)  # not verified here: the features section reads it
    checkpoint_error = None if checkpoint is not None else "no checkpoint yet"

    def need(value, error: str | None):
        if value is None:
            raise UsageError(error)
        return value

    def health_body() -> str:
        from ..monitor import Thresholds

        need(metrics, metrics_error)
        if cfg is None:
            h = health(metrics)
            return note(f"{cfg_error}: the default thresholds") + health_html(h)
        return health_html(health(metrics, Thresholds.from_config(cfg)))

    def curves_body() -> str:
        from .curves import curves_png

        need(metrics, metrics_error)
        return image(curves_png([run_dir]), "training curves")

    def masks_body() -> str:
        from .masks import masks_png

        need(cfg, cfg_error)
        return (f"<p>Training crops of {esc(cfg.data.dataset)} with the configured masks: "
                "outside the context darkened, each target block outlined in its colour.</p>"
                + image(masks_png(cfg, images=8), "masks"))

    def features_body() -> str:
        from .features import features_png

        need(cfg, cfg_error)
        need(checkpoint, checkpoint_error)
        return (f"<p>First three PCA components of the target encoder's patch features of "
                f"{esc(checkpoint.name)} as RGB, test images of {esc(cfg.data.dataset)}.</p>"
                + image(features_png(checkpoint, cfg.data.dataset, images=8), "patch features PCA"))

    def evals_body() -> str:
        files = sorted(p for p in run_dir.glob("*.json") if p.is_file())
        if not files:
            return note("no evaluation yet: imagejepa eval {linear,knn,lowshot,attentive} "
                        f"--checkpoint {run_dir} --data SPEC --out {run_dir}/NAME.json")
        return "".join(eval_json_html(p) for p in files)

    def config_body() -> str:
        path = run_dir / "config.yaml"
        if not path.is_file():
            raise UsageError(f"{path} not found")
        return f"<pre>{esc(path.read_text())}</pre>"

    section("health", "Health", health_body)
    section("curves", "Curves", curves_body)
    section("masks", "Masks", masks_body)
    section("features", "Features", features_body)
    section("evaluations", "Evaluations", evals_body)
    section("config", "Config", config_body)
    return _page(run_dir, cfg, metrics, checkpoint, checkpoint_error, sections)


def _page(run_dir, cfg, metrics, checkpoint, checkpoint_error, sections) -> str:
    rows = [("run folder", esc(run_dir.resolve()))]
    if cfg is not None:
        m = cfg.model
        rows += [("model", esc(f"{m.arch}/{m.patch_size}, {m.img_size}×{m.img_size} pixels, "
                               f"{m.in_chans} channel(s)" + (f", depth {m.depth}" if m.depth else ""))),
                 ("data", esc(cfg.data.dataset))]
    if metrics is not None and len(metrics.get("step", ())):
        last = metrics["step"][-1]
        epoch = metrics.get("epoch", [math.nan])[-1]
        rows.append(("steps trained", esc(f"{int(last) + 1}" + (f" (epoch {int(epoch)})"
                                                                   if math.isfinite(epoch) else ""))))
    else:
        rows.append(("steps trained", "none recorded"))
    rows.append(("latest checkpoint", esc(checkpoint) if checkpoint is not None
                 else f'<span class="note">none yet ({esc(checkpoint_error)})</span>'))
    rows.append(("report made", esc(time.strftime("%Y-%m-%d %H:%M:%S"))))
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{b}</section>' for a, t, b in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>imagejepa report: {esc(run_dir.name)}</title><style>{STYLE}</style></head>"
            f"<body><main><h1>imagejepa report: {esc(run_dir.name)}</h1>{table(rows)}"
            f"<nav>{nav}</nav>{body}</main></body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None,
                 warn: Callable[[str], None] = lambda message: None) -> Path:
    """Write :func:`report_html` to ``out`` (default ``RUN_DIR/report.html``) atomically."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / REPORT_NAME
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out must end in .html, got {str(out)!r}")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name ending in .html")
    text = report_html(run_dir, warn)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return out
