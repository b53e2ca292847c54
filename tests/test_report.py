"""``imagejepa report RUN_DIR``: one self-contained HTML page of a run."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagejepa.cli import main
from imagejepa.monitor import Thresholds
from imagejepa.viz.report import health, report_html

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
KNN_REPORT = {
    "protocol": "knn", "checkpoint": "run/checkpoints/step_00000004", "data": "synthetic",
    "encoder": "target", "last_layers": 1, "settings": {"ks": [10, 20], "temperature": 0.07},
    "train_images": 2000, "test_images": 500,
    "results": {"target": {"k=10": {"top1": 0.875, "top5": 1.0}, "k=20": {"top1": 0.8125, "top5": 1.0}}},
    "summary": {"target encoder": {"k=10 top-1": 0.875, "k=20 top-1": 0.8125},
                "raw pixels": {"k=10 top-1": 0.5, "k=20 top-1": 0.25}},
    "cache": None, "seconds": 0.5,
}


class Page(HTMLParser):
    """Checks that every element is closed in order; collects ``<img src>`` and every
    ``src``/``href`` attribute, and the text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.images, self.links, self.tags, self.text = [], [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        self.links += [(tag, k, v) for k, v in attrs.items() if k in ("src", "href")]
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def png_of(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))
    image.load()
    assert image.format == "PNG"
    return image


@pytest.fixture(scope="module")
def report_run(tiny_checkpoint, tmp_path_factory):
    """A copy of the tiny run with an eval JSON and a broken one, reported through the CLI:
    ``(run folder, report path, what the command printed)``."""
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_checkpoint, run)
    (run / "knn.json").write_text(json.dumps(KNN_REPORT, indent=2))
    (run / "broken.json").write_text('{"protocol": "linear", ')
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", str(run)]) == 0
    return run, run / "report.html", out.getvalue()


def test_report_is_valid_html_with_its_pictures_embedded(report_run):
    run, path, printed = report_run
    assert printed.strip() == str(path) and printed.count("\n") == 1
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    page = parse(text)
    assert page.errors == [] and page.stack == []
    for tag in ("html", "head", "body", "style", "table", "pre"):
        assert tag in page.tags
    assert "script" not in page.tags and "link" not in page.tags
    assert len(page.images) == 3  # curves, masks, features
    sizes = [png_of(src).size for src in page.images]
    assert all(w >= 600 and h >= 150 for w, h in sizes), sizes
    # Nothing outside the file: no network address, no src but data:, links only within the page.
    assert "http://" not in text and "https://" not in text and "url(" not in text
    for tag, attr, value in page.links:
        assert value.startswith("data:image/png;base64," if attr == "src" else "#"), (tag, attr, value[:40])


def test_report_sections_health_and_evaluations(report_run):
    run, path, _ = report_run
    text = path.read_text()
    words = " ".join(parse(text).text)
    order = [text.index(f'<section id="{s}">') for s in
             ("health", "curves", "masks", "features", "evaluations", "config")]
    assert order == sorted(order)
    # The title: run, model, data, steps (4 rows in metrics.csv), latest checkpoint.
    assert "vit_tiny/8" in words and "32×32" in words and "synthetic" in words
    assert "4 (epoch 0)" in words and "step_00000004" in words
    # Health: a verdict and a table; RankMe was recorded at step 0 only (monitor.every 50).
    assert '<div class="verdict ok">Healthy: no collapse warning in 4 steps' in text
    for label in ("final loss", "target std", "RankMe", "pred cos (last)", "online kNN top-1 (%)",
                  "skipped steps"):
        assert f"<th>{label}</th>" in text
    assert "0 of 4" in words
    # The eval JSON as tables, its summary first in percent; the broken one listed as unreadable.
    knn = text[text.index("<h3>knn.json</h3>"):]
    assert knn.index("<th>k=20 top-1</th>") < knn.index("<th>results</th>")
    assert '<td class="num">87.50</td>' in knn and '<td class="num">25.00</td>' in knn
    assert "<th>raw pixels</th>" in knn and "<th>temperature</th>" in knn
    assert text.index("<h3>broken.json</h3>") < text.index("<h3>knn.json</h3>")
    assert "unreadable: JSONDecodeError" in words
    assert "<pre>recipe: auto\nmethod:\n  name: ijepa" in text and "model:\n  arch: vit_tiny" in text


def test_run_without_checkpoint_gets_notes_instead_of_features(tiny_checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, run, ignore=shutil.ignore_patterns("checkpoints", "*.html"))
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "features: not made: no checkpoint yet" in captured.err
    page = parse(out.read_text())
    assert page.errors == [] and len(page.images) == 2  # curves and masks
    features = out.read_text().split('<section id="features">')[1].split("</section>")[0]
    assert '<p class="note">not made: no checkpoint yet</p>' in features
    assert "no evaluation yet" in out.read_text()


def test_old_run_without_health_columns_says_not_recorded(tiny_checkpoint, tmp_path):
    """A run from before RankMe, pred_cos, loss per block and kNN were logged; no config either."""
    run = tmp_path / "old"
    run.mkdir()
    with open(tiny_checkpoint / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    old = ("step", "epoch", "loss", "lr", "ema", "target_std")
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    notes = []
    text = report_html(run, warn=notes.append)
    page = parse(text)
    assert page.errors == [] and len(page.images) == 1  # the curves alone
    for label in ("RankMe", "pred cos (last)", "loss per target block (last)", "online kNN top-1 (%)",
                  "skipped steps"):
        assert f"<tr><th>{label}</th><td>not recorded" in text, label
    assert "no config.yaml in the run folder: the default thresholds" in text
    assert {n.split(":")[0] for n in notes} == {"masks", "features", "config"}


DEFAULTS = Thresholds()
OFF = Thresholds(collapse_std=None, rankme_drop=None, rankme_partial=None, std_hover=None, knn_drop=None)


def test_health_replays_the_trainers_collapse_rules():
    steps = np.arange(60.0)
    healthy = {"step": steps, "loss": np.linspace(1.0, 0.5, 60), "target_std": np.full(60, 0.4)}
    h = health(healthy, DEFAULTS)
    assert h.level == "ok" and h.warnings == [] and "1 to 0.5 over 60 steps" in h.verdict
    # target std falls below the threshold and stays there: one warning, a bad verdict.
    falling = dict(healthy, target_std=np.linspace(0.4, 0.01, 60))
    h = health(falling, DEFAULTS)
    assert h.level == "bad" and len(h.warnings) == 1 and "train.collapse_std=0.15" in h.warnings[0]
    assert "at the end of the run" in h.verdict
    # ... and recovers: the warning stays listed, the verdict says so.
    dip = dict(healthy, target_std=np.r_[np.full(20, 0.4), np.full(20, 0.01), np.full(20, 0.4)])
    h = health(dip, DEFAULTS)
    assert h.level == "warn" and h.verdict.startswith("Recovered") and len(h.warnings) == 1
    # RankMe, recorded every 10 steps, falls to a fifth of its highest value.
    rank = np.full(60, np.nan)
    rank[::10] = [40, 50, 45, 30, 20, 8]
    h = health(dict(healthy, rankme=rank), DEFAULTS)
    assert h.level == "bad" and "monitor.rankme_drop=0.25" in h.warnings[0] and "at step 50" in h.warnings[0]
    assert dict(h.rows)["RankMe"] == ("first 40 · highest 50 · last 8 "
                                      "(warns below monitor.rankme_drop = 0.25 × highest)")
    # The thresholds switched off: no warnings whatever the values.
    assert health(falling, OFF).level == "ok"
    # Non-finite last loss, skipped steps.
    assert health(dict(healthy, loss=np.r_[np.ones(59), np.nan]), DEFAULTS).level == "bad"
    skipped = health(dict(healthy, skipped_step=np.r_[np.zeros(59), 1.0]), DEFAULTS)
    assert skipped.level == "warn" and ("skipped steps", "1 of 60") in skipped.rows


@pytest.mark.parametrize("case", ["empty", "missing", "not_html"])
def test_not_a_run_folder_is_a_usage_error(tmp_path, capsys, case):
    target = {"empty": tmp_path, "missing": tmp_path / "nope", "not_html": tmp_path}[case]
    args = ["report", str(target)] + (["--out", str(tmp_path / "r.png")] if case == "not_html" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("imagejepa report: error: ")
    assert ("--out must end in .html" if case == "not_html" else str(target)) in err
    assert not (tmp_path / "report.html").exists()


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report_run, tmp_path):
    """The page as a browser draws it: not blank, with the pictures' colours on it."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not on PATH: `make test` installs it (apt-get install chromium)")
    _, path, _ = report_run
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1600", f"--screenshot={shot}", Path(path).resolve().as_uri()],
                   capture_output=True, timeout=60, check=False)  # dbus errors on stderr: ignored
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert len(pixels) == 1200 * 1600
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    drawn = float((pixels != background).any(axis=1).mean())
    print(f"screenshot: {drawn:.1%} not background, {len(colours)} distinct colours")
    # The page without its pictures (text, tables, the config's box) draws about 15% of the
    # window in about 1,200 colours; the curves, masks and features bring tens of thousands.
    assert tuple(background) == (255, 255, 255)
    assert drawn > 0.10, f"only {drawn:.1%} of the page is not background"
    assert len(colours) > 10_000, f"only {len(colours)} distinct colours: are the pictures drawn?"
