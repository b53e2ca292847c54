"""Watching a run while it trains: representation health (health.py), online kNN
(online_knn.py), experiment trackers (trackers.py) and the pictures they show (pictures.py)."""

from .health import CollapseMonitor, RankMonitor, health_metrics, rankme

__all__ = ["CollapseMonitor", "RankMonitor", "health_metrics", "rankme"]
