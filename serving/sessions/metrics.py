"""Prometheus figures of the live sessions, read from the manager when ``/metrics`` is scraped."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.sessions.manager import SessionManager

__all__ = ["SessionCollector"]


class SessionCollector(Collector):
    """``ptychopinn_sessions_open``, ``ptychopinn_session_pending_frames`` and
    ``ptychopinn_session_frames_total{outcome=received|reconstructed|rejected}`` (since the server started)."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        sessions = self.manager.sessions()
        yield GaugeMetricFamily("ptychopinn_sessions_open", "live scan sessions open", value=len(sessions))
        yield GaugeMetricFamily("ptychopinn_session_pending_frames",
                                "frames held by live sessions and not yet on a canvas",
                                value=sum(s.pending for s in sessions))
        frames = CounterMetricFamily("ptychopinn_session_frames", "frames of live sessions by outcome",
                                     labels=["outcome"])
        for outcome, count in self.manager.totals().items():
            frames.add_metric([outcome], count)
        yield frames
