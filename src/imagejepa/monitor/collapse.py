"""Collapse warnings: each watches one symptom and warns once per episode, in words.

Full collapse is easy to see: the target features' per-dimension std or their RankMe falls
to a fraction of what it was. Partial collapse is the common failure on small data, and it
is quieter: RankMe halves from its best while the loss falls to nearly nothing (the targets
become easy to predict because the features use few directions), the std hovers just above
the collapse threshold, or the online kNN falls from its best. Each monitor below says what
it saw and what to try (``advice``, from the run's config: see :func:`advice_for`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

PREFIX = "imagejepa: warning: "


class _OncePerEpisode:
    """``first(bad, over) -> bool``: true when ``bad`` starts an episode (the first bad value
    after good ones), so a warning is given once per episode, not at every step of it.
    ``over`` (default: not bad) says whether an episode has ended: a symptom that hovers
    about its threshold ends its episode only when it is clearly past it."""

    def __init__(self):
        self.warned = False

    def first(self, bad: bool, over: bool | None = None) -> bool:
        if bad:
            started, self.warned = not self.warned, True
            return started
        if over is None or over:
            self.warned = False
        return False


class _Windowed:
    """The mean of the last ``window`` finite values."""

    def __init__(self, window: int):
        self.recent: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> float | None:
        if value != value:  # a NaN step says nothing about the features
            return None
        self.recent.append(value)
        return sum(self.recent) / len(self.recent)

    @property
    def full(self) -> bool:
        return len(self.recent) == self.recent.maxlen


class CollapseMonitor:
    """Warns when the mean of the last ``window`` ``target_std`` values falls below ``threshold``.

    ``update(step, target_std)`` returns a warning line the first time the windowed mean
    drops below the threshold, and again only after it has recovered above it in between.
    """

    def __init__(self, threshold: float | None, window: int = 20, advice: str = ""):
        self.threshold, self.advice = threshold, advice or advice_for()
        self.mean = _Windowed(window)
        self.episode = _OncePerEpisode()

    @property
    def recent(self) -> deque[float]:
        return self.mean.recent

    @property
    def collapsing(self) -> bool:
        """Whether the last value was still below the threshold (an episode not yet over)."""
        return self.episode.warned

    def update(self, step: int, target_std: float) -> str | None:
        if self.threshold is None:
            return None
        mean = self.mean.add(target_std)
        if mean is None or not self.episode.first(mean < self.threshold):
            return None
        return (
            f"{PREFIX}possible representation collapse at step {step}: the target "
            f"features' per-dimension std is {mean:.4f} (mean of the last {len(self.recent)} "
            f"steps), below train.collapse_std={self.threshold}; {self.advice}"
        )


class StdHoverMonitor:
    """Warns when the mean ``target_std`` of the last ``window`` steps stays within
    ``[threshold, factor x threshold)``: not collapsed, but hovering near it (below the
    threshold is :class:`CollapseMonitor`'s to report)."""

    def __init__(self, threshold: float | None, factor: float | None, window: int = 200, advice: str = ""):
        self.threshold, self.factor, self.advice = threshold, factor, advice or advice_for()
        self.mean = _Windowed(window)
        self.episode = _OncePerEpisode()

    @property
    def collapsing(self) -> bool:
        return self.episode.warned

    def update(self, step: int, target_std: float) -> str | None:
        if self.threshold is None or self.factor is None:
            return None
        mean = self.mean.add(target_std)
        if mean is None or not self.mean.full:
            return None
        near = self.threshold <= mean < self.factor * self.threshold
        if not self.episode.first(near):
            return None
        return (
            f"{PREFIX}partial collapse at step {step}: the target features' per-dimension std has "
            f"hovered near the collapse threshold for {len(self.mean.recent)} steps (mean {mean:.3f}, "
            f"below monitor.std_hover={self.factor:g} x train.collapse_std={self.threshold:g}); {self.advice}"
        )


class RankMonitor:
    """Warns when RankMe falls below ``drop`` x the highest RankMe seen so far in the run
    (features spreading over fewer and fewer directions), once per episode like
    :class:`CollapseMonitor`. ``update(step, rankme) -> warning line or None``."""

    def __init__(self, drop: float | None, advice: str = ""):
        self.drop, self.advice = drop, advice or advice_for()
        self.best = 0.0
        self.episode = _OncePerEpisode()

    @property
    def collapsing(self) -> bool:
        """Whether the last value was still below the drop (an episode not yet over)."""
        return self.episode.warned

    def update(self, step: int, value: float) -> str | None:
        if self.drop is None or value != value:
            return None
        self.best = max(self.best, value)
        if not self.episode.first(value < self.drop * self.best):
            return None
        return (
            f"{PREFIX}possible representation collapse at step {step}: RankMe of the "
            f"target features fell to {value:.1f}, below monitor.rankme_drop={self.drop} x its "
            f"highest value in this run ({self.best:.1f}); the features span fewer and fewer "
            f"directions; {self.advice}"
        )


class PartialCollapseMonitor:
    """Warns when RankMe is below ``fraction`` x its best while the loss (mean of the last
    ``window`` steps) is below ``loss_floor`` x the highest such mean: the targets became
    easy to predict because the features use fewer directions, not because the predictor
    learned. ``add_loss(loss)`` every step, ``update(step, rankme)`` on the watched steps."""

    def __init__(self, fraction: float | None, loss_floor: float, window: int = 20, advice: str = ""):
        self.fraction, self.loss_floor, self.advice = fraction, loss_floor, advice or advice_for()
        self.loss, self.highest_loss, self.best = _Windowed(window), 0.0, 0.0
        self.current_loss = math.nan
        self.episode = _OncePerEpisode()

    @property
    def collapsing(self) -> bool:
        return self.episode.warned

    def add_loss(self, loss: float) -> None:
        mean = self.loss.add(loss)
        if mean is not None and math.isfinite(mean):
            self.current_loss, self.highest_loss = mean, max(self.highest_loss, mean)

    def update(self, step: int, value: float) -> str | None:
        if self.fraction is None or value != value:
            return None
        self.best = max(self.best, value)
        low_rank = value < self.fraction * self.best
        easy = self.current_loss < self.loss_floor * self.highest_loss
        # Over only once RankMe is back above halfway from the threshold to its best: a
        # RankMe that wavers about the threshold is one episode, not several.
        recovered = value >= (1 + self.fraction) / 2 * self.best
        if not self.episode.first(low_rank and easy, over=recovered):
            return None
        return (
            f"{PREFIX}partial collapse at step {step}: RankMe of the target features is {value:.1f}, "
            f"under monitor.rankme_partial={self.fraction:g} x its best ({self.best:.1f}), while the "
            f"loss fell to {self.current_loss:.4f} (under monitor.loss_floor={self.loss_floor:g} x its "
            f"highest, {self.highest_loss:.4f}): the targets got easy to predict because the features "
            f"use fewer directions, not because the predictor learned; {self.advice}"
        )


class KnnDropMonitor:
    """Warns when the online kNN top-1 (%) falls below its best by more than ``points``, or
    by more than two standard errors of a top-1 measured on ``queries`` images, whichever
    is more (a small held-out set is noisy)."""

    def __init__(self, points: float | None, queries: int | None = None, advice: str = ""):
        self.points, self.queries, self.advice = points, queries, advice or advice_for()
        self.best = -math.inf
        self.episode = _OncePerEpisode()

    @property
    def collapsing(self) -> bool:
        return self.episode.warned

    def margin(self) -> float:
        if not self.queries or not math.isfinite(self.best):
            return self.points
        p = min(max(self.best / 100.0, 0.0), 1.0)
        return max(self.points, 2 * 100.0 * math.sqrt(p * (1 - p) / self.queries))

    def update(self, step: int, top1: float) -> str | None:
        if self.points is None or top1 != top1:
            return None
        self.best = max(self.best, top1)
        margin = self.margin()
        if not self.episode.first(top1 < self.best - margin):
            return None
        return (
            f"{PREFIX}partial collapse at step {step}: the online kNN top-1 fell to {top1:.1f}% from its "
            f"best of {self.best:.1f}% (more than {margin:.1f} points, monitor.knn_drop={self.points:g}): "
            f"the target encoder's features are getting worse; {self.advice}"
        )


@dataclass(frozen=True)
class Thresholds:
    """The warnings' settings, from ``train.collapse_std`` and the ``monitor`` section."""

    collapse_std: float | None = 0.15
    rankme_drop: float | None = 0.25
    rankme_partial: float | None = 0.5
    loss_floor: float = 0.1
    std_hover: float | None = 1.6
    knn_drop: float | None = 5.0

    @classmethod
    def from_config(cls, cfg) -> Thresholds:
        m = cfg.monitor
        return cls(cfg.train.collapse_std, m.rankme_drop, m.rankme_partial, m.loss_floor, m.std_hover,
                   m.knn_drop)


class CollapseWatch:
    """Every warning of this module over a run's metric rows: ``update(row) -> [warnings]``
    (a row holds ``step``, ``loss``, ``target_std`` and, on the steps that had them,
    ``rankme`` and ``knn_top1``); ``now()`` says which episodes are still going on."""

    def __init__(self, thresholds: Thresholds = Thresholds(), advice: str = "",
                 knn_queries: int | None = None):
        t, advice = thresholds, advice or advice_for()
        self.thresholds = t
        self.std = CollapseMonitor(t.collapse_std, advice=advice)
        self.hover = StdHoverMonitor(t.collapse_std, t.std_hover, advice=advice)
        self.rank = RankMonitor(t.rankme_drop, advice=advice)
        self.partial = PartialCollapseMonitor(t.rankme_partial, t.loss_floor, advice=advice)
        self.knn = KnnDropMonitor(t.knn_drop, knn_queries, advice=advice)

    def update(self, row: dict) -> list[str]:
        step = int(row["step"])
        found = [self.std.update(step, row["target_std"]), self.hover.update(step, row["target_std"])]
        self.partial.add_loss(row["loss"])
        if _given(row.get("rankme")):
            found.append(self.rank.update(step, row["rankme"]))
            partial = self.partial.update(step, row["rankme"])
            found.append(None if self.rank.collapsing else partial)  # the full warning says it all
        if _given(row.get("knn_top1")):
            found.append(self.knn.update(step, row["knn_top1"]))
        return [w for w in found if w]

    def now(self) -> list[str]:
        """The episodes still going on, in words (for a summary at the end of a run)."""
        out = []
        if self.std.collapsing:
            mean = sum(self.std.recent) / len(self.std.recent)
            out.append(f"the target std (mean of the last {len(self.std.recent)} steps) is {mean:.3g}, "
                       f"below train.collapse_std = {self.std.threshold:g}")
        if self.hover.collapsing:
            out.append("the target std hovers near train.collapse_std")
        if self.rank.collapsing:
            out.append(f"RankMe is below {self.rank.drop:g} × its highest {self.rank.best:.3g}")
        elif self.partial.collapsing:
            out.append(f"RankMe is below {self.partial.fraction:g} × its best {self.partial.best:.3g} with "
                       "the loss near zero")
        if self.knn.collapsing:
            out.append(f"the online kNN is below its best ({self.knn.best:.1f}%)")
        return out


def _given(value) -> bool:
    return value is not None and value == value


def advice_for(anti_collapse: str = "none", weight: float = 0.0, by_recipe: bool = False) -> str:
    """What to try, given whether the run already adds the term against collapse (and
    whether the recipe, not the user, turned it on)."""
    others = ("a slower EMA (optim.ema starting nearer 1, e.g. [0.999, 1.0]), a lower optim.lr, or "
              "fewer passes over the data (optim.epochs)")
    if anti_collapse == "none":
        return (f"try optim.anti_collapse=vc (a term that keeps the context features spread out), "
                f"{others}")
    who = "the recipe (recipe: auto) turned on" if by_recipe else "this run adds"
    return (f"{who} the term against collapse (optim.anti_collapse={anti_collapse}, weight {weight:g}); "
            f"try a larger optim.anti_collapse_weight, {others}")
