"""Watching a run while it trains: representation health (health.py), the collapse
warnings (collapse.py), online kNN (online_knn.py), experiment trackers (trackers.py) and
the pictures they show (pictures.py)."""

from .collapse import (
    CollapseMonitor,
    CollapseWatch,
    KnnDropMonitor,
    PartialCollapseMonitor,
    RankMonitor,
    StdHoverMonitor,
    Thresholds,
    advice_for,
)
from .health import health_metrics, rankme

__all__ = [
    "CollapseMonitor", "CollapseWatch", "KnnDropMonitor", "PartialCollapseMonitor", "RankMonitor",
    "StdHoverMonitor", "Thresholds", "advice_for", "health_metrics", "rankme",
]
