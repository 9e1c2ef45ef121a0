"""What one live session has done so far: counts, rejections with reasons, rates and latencies.

Fed by the :class:`~serving.sessions.session.Session` as frames arrive, pair, reach the canvas or
fail, and read back as the parts of its JSON status (``GET /v1/sessions/{id}``). Frame-to-canvas
latency runs from a frame's arrival to the stitch of its batch. Not thread-safe: the session holds
the lock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.sessions.frame_table import Taken
from serving.sessions.scan_table import ScanTable

__all__ = ["SessionStats"]

_MAX_REJECTIONS_KEPT = 100
"""Rejections listed one by one in the status (all are counted)."""
_LATENCIES_KEPT = 100_000
"""Frame-to-canvas latencies kept for the percentiles (the most recent)."""
_RATE_WINDOW_S = 5.0
"""Window of the recent frame rates in the status."""


@dataclass
class _Counts:
    frames: int = 0
    frame_duplicates: int = 0
    positions: int = 0
    position_duplicates: int = 0
    rejected: int = 0
    paired: int = 0
    reconstructed: int = 0
    failed: int = 0


class SessionStats:
    """Counts and timings of one session's frames (scan indices in ``[0, limit)``); times in seconds."""

    def __init__(self, limit: int) -> None:
        self.counts = _Counts()
        self.rejections: list[dict[str, Any]] = []
        """The first rejections, ``{"what", "index", "reason"}`` each."""
        self._arrived = ScanTable(1, np.float64, limit)  # arrival time of each frame index kept
        self._latencies: deque[float] = deque(maxlen=_LATENCIES_KEPT)
        self._received_times: deque[tuple[float, int]] = deque()
        self._stitched_times: deque[tuple[float, int]] = deque()

    def frames_taken(self, taken: Taken, now: float) -> None:
        """A frames message's outcome, received at ``now``."""
        self.counts.frames += taken.accepted
        self.counts.frame_duplicates += taken.duplicates
        self.reject(taken.rejected)
        self._arrived.put(taken.kept, np.full((len(taken.kept), 1), now))
        _note(self._received_times, now, taken.accepted)

    def positions_taken(self, taken: Taken) -> None:
        """A positions message's outcome."""
        self.counts.positions += taken.accepted
        self.counts.position_duplicates += taken.duplicates
        self.reject(taken.rejected)

    def frames_paired(self, count: int) -> None:
        """``count`` frames joined their positions (queued for inference)."""
        self.counts.paired += count

    def reject(self, items: list[dict[str, Any]]) -> None:
        """Count ``items`` refused (``{"what", "index", "reason"}``); the first ones are kept for the status."""
        self.counts.rejected += len(items)
        self.rejections.extend(items[: max(0, _MAX_REJECTIONS_KEPT - len(self.rejections))])

    def stitched(self, indices: npt.NDArray[np.int64], now: float) -> None:
        """Frames ``indices (K,)`` reached the canvas at ``now``."""
        self._latencies.extend((now - self._arrived.get(indices)[1][:, 0]).tolist())
        self.counts.reconstructed += len(indices)
        _note(self._stitched_times, now, len(indices))

    def failed(self, indices: npt.NDArray[np.int64], error: BaseException) -> None:
        """Inference of frames ``indices (K,)`` failed with ``error``: each is rejected with it."""
        self.reject([{"what": "frame", "index": i, "reason": f"inference failed: {error}"} for i in indices.tolist()])
        self.counts.failed += len(indices)

    def count_fields(self, pending: int) -> dict[str, int]:
        """Frames received, paired, reconstructed, ``pending`` and rejected (a receipt's and an update's counts)."""
        c = self.counts
        return {"received": c.frames, "paired": c.paired, "reconstructed": c.reconstructed, "pending": pending,
                "rejected": c.rejected}

    def frames_json(self, waiting: int, queued: int, in_flight: int) -> dict[str, Any]:
        """The status's ``frames`` part; ``waiting`` for a position, ``queued`` and ``in_flight`` are pending."""
        c = self.counts
        return {"received": c.frames, "duplicates": c.frame_duplicates, "paired": c.paired,
                "reconstructed": c.reconstructed, "rejected": c.rejected, "failed": c.failed,
                "pending": {"waiting_for_position": waiting, "queued": queued, "in_flight": in_flight}}

    def positions_json(self) -> dict[str, int]:
        """The status's ``positions`` part (a frame joining its position pairs it: the rest have no frame)."""
        c = self.counts
        return {"received": c.positions, "duplicates": c.position_duplicates, "without_frame": c.positions - c.paired}

    def rates_json(self, now: float) -> dict[str, float]:
        """Frames received and reconstructed per second over the last few seconds."""
        return {"received": _rate(self._received_times, now), "reconstructed": _rate(self._stitched_times, now)}

    def latency_json(self) -> dict[str, Any]:
        """Count, median and 99th percentile of the frame-to-canvas latencies (None before the first)."""
        latencies = np.asarray(self._latencies)
        if not len(latencies):
            return {"count": 0, "p50": None, "p99": None}
        p50, p99 = np.percentile(latencies, [50, 99]).tolist()
        return {"count": len(latencies), "p50": p50, "p99": p99}


def _note(times: deque[tuple[float, int]], now: float, count: int) -> None:
    """Record ``count`` items at ``now``, forgetting what fell out of the rate window."""
    times.append((now, count))
    _forget_old(times, now)


def _forget_old(times: deque[tuple[float, int]], now: float) -> None:
    while times and times[0][0] < now - _RATE_WINDOW_S:
        times.popleft()


def _rate(times: deque[tuple[float, int]], now: float) -> float:
    _forget_old(times, now)
    return sum(count for _, count in times) / _RATE_WINDOW_S
