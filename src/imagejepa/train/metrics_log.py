"""``metrics.csv``: one row per step, written by rank 0 only.

The health columns (``rankme``, ``pred_cos``, ``loss_block1..T``) are filled on the steps
that watch the representation (``monitor.every``), ``knn_top1`` on the online kNN steps
(``monitor.knn_every``), and are empty on the others. A row with a column not listed here
is an error, not a silently dropped value.

On start the file is rewritten (atomically) with only the rows of the steps before the one
the run continues from, so a resumed run never holds a step twice."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..utils.files import atomic_write_text

METRIC_COLUMNS = (
    "step", "epoch", "loss", "lr", "weight_decay", "ema", "target_std", "pred_std",
    "context_patches", "target_patches", "skipped_images", "skipped_step", "img_per_s", "elapsed_s",
)
HEALTH_COLUMNS = ("rankme", "pred_cos")
KNN_COLUMN = "knn_top1"


ANTI_COLLAPSE_COLUMN = "anti_collapse"  # the term against collapse, where the run adds one


def metric_columns(num_targets: int, anti_collapse: bool = False) -> tuple[str, ...]:
    """Every column of a run with ``num_targets`` target blocks, in file order."""
    blocks = tuple(f"loss_block{i + 1}" for i in range(num_targets))
    extra = (ANTI_COLLAPSE_COLUMN,) if anti_collapse else ()
    return METRIC_COLUMNS + extra + HEALTH_COLUMNS + blocks + (KNN_COLUMN,)


class MetricsLog:
    """``with MetricsLog(path, from_step, columns, writes) as log: log.write(row); log.flush()``.

    ``writes=False`` (ranks other than 0) makes every method a no-op."""

    def __init__(self, path: Path, from_step: int, columns: tuple[str, ...] = METRIC_COLUMNS,
                 writes: bool = True):
        self.path, self.columns, self.writes = Path(path), columns, writes
        self._file = self._writer = None
        if writes:
            self._keep_rows_before(from_step)

    def _keep_rows_before(self, step: int) -> None:
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < step]
        text = io.StringIO(newline="")
        # Rows of an earlier version of the file keep the columns it had; new ones stay empty.
        writer = csv.DictWriter(text, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, text.getvalue())

    def __enter__(self) -> MetricsLog:
        if self.writes:
            self._file = open(self.path, "a", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=self.columns)  # unknown keys raise
        return self

    def write(self, row: dict) -> None:
        if self._writer is not None:
            self._writer.writerow({k: _fmt(v) for k, v in row.items()})

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None


def _fmt(value):
    return f"{value:.9g}" if isinstance(value, float) else value
