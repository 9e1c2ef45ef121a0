"""Feed a live session from EPICS PV Access: detector frames and scan positions as a beamline publishes them.

Two channels, monitored with ``pvapy`` (the ``pva`` extra; nothing else in the project needs it):

* frames: an NTNDArray (areaDetector's PVA plugin), one pattern per update; ``uniqueId`` is the scan
  index, ``dimension`` gives ``[x size, y size]``, the value is any numeric union member. The
  patterns must already be the model's ``N x N`` crop, centred, zero frequency in the middle (the
  detector IOC's ROI and process plugins do this at the beamline).
* positions: a structure of three arrays ``index`` (long), ``x`` and ``y`` (double, object pixels of
  the patch centre), one or more positions per update, published when the motion system knows them
  (before or after their frames: the session pairs them by index).

Updates are queued by the monitor callbacks (which return at once) and sent by one thread in
chunks of up to ``chunk`` items, or whatever is queued after ``flush_s``; a message the server
refuses with 503 is resent after its Retry-After. :meth:`PvaSource.stop` sends what is queued.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.client import LiveSession, resend_on_503

__all__ = ["PvaSource", "positions_structure"]

log = logging.getLogger(__name__)

MONITOR_REQUEST = "record[queueSize=1000]field()"
"""A deep server-side monitor queue: a burst of frames waits instead of being squashed."""


def positions_structure() -> dict[str, Any]:
    """The pvapy type of the positions channel: ``{"index": [LONG], "x": [DOUBLE], "y": [DOUBLE]}``."""
    import pvaccess as pva

    return {"index": [pva.LONG], "x": [pva.DOUBLE], "y": [pva.DOUBLE]}


@dataclass
class _Counts:
    frames: int = 0
    positions: int = 0
    skipped: list[str] = field(default_factory=list)


class PvaSource:
    """Monitor ``frames_channel`` and ``positions_channel`` and feed ``live`` until :meth:`stop`."""

    def __init__(self, live: LiveSession, frames_channel: str, positions_channel: str, *, N: int,
                 chunk: int = 16, flush_s: float = 0.1) -> None:
        import pvaccess as pva

        self.live, self.N, self.chunk, self.flush_s = live, N, chunk, flush_s
        self._frames: queue.Queue[tuple[int, np.ndarray]] = queue.Queue()
        self._positions: queue.Queue[tuple[np.ndarray, np.ndarray]] = queue.Queue()
        self.counts = _Counts()
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._channels = [pva.Channel(frames_channel), pva.Channel(positions_channel)]
        self._sender = threading.Thread(target=self._send_loop, name="pva-source", daemon=True)

    def start(self) -> PvaSource:
        """Subscribe to both channels and start sending."""
        frames, positions = self._channels
        frames.subscribe("ptychopinn", self._on_frame)
        positions.subscribe("ptychopinn", self._on_positions)
        frames.startMonitor(MONITOR_REQUEST)
        positions.startMonitor(MONITOR_REQUEST)
        self._sender.start()
        return self

    def stop(self) -> _Counts:
        """Unsubscribe, send everything queued, and return what was sent; re-raises a sending error."""
        for channel in self._channels:
            channel.stopMonitor()
            channel.unsubscribe("ptychopinn")
        self._stopping.set()
        self._sender.join()
        if self._error is not None:
            raise self._error
        return self.counts

    def _on_frame(self, pv: Any) -> None:
        value = pv["value"]
        arrays = value[0] if isinstance(value, tuple) else value
        if not arrays:  # the record's initial, empty image
            return
        data = np.array(next(iter(arrays.values())))  # a copy: pvapy reuses the buffer after the callback
        sizes = [d["size"] for d in pv["dimension"]]
        index = int(pv["uniqueId"])
        if len(sizes) != 2 or sizes != [self.N, self.N] or data.size != self.N * self.N:
            reason = (f"frame {index}: dimension sizes {sizes} ({data.size} values) are not the model's "
                      f"{self.N}x{self.N}; crop and centre the patterns in the detector IOC")
            log.warning(reason)
            self.counts.skipped.append(reason)
            return
        self._frames.put((index, data.reshape(self.N, self.N)))

    def _on_positions(self, pv: Any) -> None:
        index = np.array(pv["index"], np.int64)  # copies (see _on_frame)
        if len(index):
            self._positions.put((index, np.column_stack([pv["x"], pv["y"]]).astype(np.float64)))

    def _send_loop(self) -> None:
        try:
            while True:
                stopping = self._stopping.is_set()
                sent = self._send_positions() + self._send_frames(wait=not stopping)
                if stopping and not sent and self._frames.empty() and self._positions.empty():
                    return
        except BaseException as error:  # handed to stop()
            log.exception("sending to session %s failed", self.live.id)
            self._error = error

    def _send_frames(self, *, wait: bool) -> int:
        items: list[tuple[int, np.ndarray]] = []
        deadline = time.monotonic() + (self.flush_s if wait else 0.0)
        while len(items) < self.chunk:
            try:
                items.append(self._frames.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        if items:
            indices = np.array([i for i, _ in items], np.int64)
            resend_on_503(self.live.send_frames, indices, np.stack([p for _, p in items]))
            self.counts.frames += len(items)
        return len(items)

    def _send_positions(self) -> int:
        batches = []
        while True:
            try:
                batches.append(self._positions.get_nowait())
            except queue.Empty:
                break
        if batches:
            indices = np.concatenate([i for i, _ in batches])
            resend_on_503(self.live.send_positions, indices, np.concatenate([p for _, p in batches]))
            self.counts.positions += len(indices)
        return len(batches)
