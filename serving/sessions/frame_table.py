"""The frames and positions of one live scan, paired by scan index, and the queue of paired frames.

A frame joins the ready queue only once its position is known: pairing is by index, never by
arrival order, so a late position never shears the mosaic. A resent item is told from a changed one
by its value (a BLAKE2b digest for frames): identical resends are counted as duplicates, changed
ones are rejected and the first is kept. Each message is decided with numpy over the whole message;
an index it repeats, or positions that only fit the canvas in part, are decided row by row as if
they came one by one. Not thread-safe: the :class:`~serving.sessions.session.Session` holds the lock.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.sessions.messages import FrameMessage, PositionMessage, Reasons, flag, unflagged
from serving.sessions.scan_table import ScanTable

__all__ = ["FrameTable", "Taken"]

_DIGEST_BYTES = 16
"""BLAKE2b digest of a frame kept per index, to tell a resent frame from a changed one."""

Reserve = Callable[[npt.NDArray[np.float64]], "str | None"]
"""Room on the canvas for new positions ``(K, 2)``: None when reserved, else why they do not fit."""


@dataclass(frozen=True)
class Taken:
    """What the table did with one message's frames or positions."""

    accepted: int
    """New items kept."""
    duplicates: int
    """Resent items identical to ones already held: ignored."""
    rejected: list[dict[str, Any]]
    """``{"what", "index", "reason"}`` of every item refused, in message order."""
    kept: npt.NDArray[np.int64]
    """The indices of the new items kept."""


class FrameTable:
    """Frames and positions by scan index ``[0, limit)``; frames without a position wait, paired frames
    queue for inference (``(index, amplitudes (N, N))`` in pairing order), taken ones are in flight."""

    def __init__(self, limit: int) -> None:
        self._digests = ScanTable(_DIGEST_BYTES, np.uint8, limit)
        self._positions = ScanTable(2, np.float64, limit)
        self._waiting: dict[int, npt.NDArray[np.float32]] = {}  # frames whose position is not known yet
        self._ready: deque[tuple[int, npt.NDArray[np.float32]]] = deque()
        self.in_flight = 0
        """Frames taken for inference and not yet done."""

    @property
    def waiting(self) -> int:
        """Frames waiting for their position."""
        return len(self._waiting)

    @property
    def queued(self) -> int:
        """Paired frames waiting for inference."""
        return len(self._ready)

    @property
    def pending(self) -> int:
        """Frames held and not yet done (waiting for a position, queued, or in inference)."""
        return len(self._waiting) + len(self._ready) + self.in_flight

    def add_frames(self, message: FrameMessage) -> Taken:
        """Keep the message's frames that have no reason and were not held before."""
        return _in_order(message.index, lambda rows: self._take_frames(
            message.index[rows], message.amplitudes[rows], message.reasons[rows]))

    def add_positions(self, message: PositionMessage, reserve: Reserve) -> Taken:
        """Keep the message's positions that have no reason, were not held before and for which
        ``reserve`` finds room on the canvas."""
        return _in_order(message.index, lambda rows: self._take_positions(
            message.index[rows], message.positions[rows], message.reasons[rows], reserve))

    def pair(self, index: npt.NDArray[np.int64]) -> int:
        """Queue the frames of ``index`` whose frame and position are both known; how many were queued."""
        known = dict.fromkeys(index[self._positions.get(index)[0]].tolist())
        paired = [i for i in known if i in self._waiting]
        self._ready.extend(zip(paired, map(self._waiting.pop, paired), strict=True))
        return len(paired)

    def take(self, max_items: int) -> tuple[npt.NDArray[np.int64], list[npt.NDArray[np.float32]],
                                            npt.NDArray[np.float64]] | None:
        """Up to ``max_items`` queued frames, now in flight: ``(indices (K,), amplitudes, positions (K, 2))``;
        None when none are queued."""
        if not self._ready:
            return None
        items = [self._ready.popleft() for _ in range(min(max_items, len(self._ready)))]
        self.in_flight += len(items)
        indices = np.fromiter((i for i, _ in items), np.int64, len(items))
        return indices, [pattern for _, pattern in items], self._positions.get(indices)[1]

    def done(self, count: int) -> None:
        """``count`` frames in flight came back from inference (stitched or failed)."""
        self.in_flight -= count

    def requeue(self, indices: npt.NDArray[np.int64], amplitudes: npt.NDArray[np.float32]) -> None:
        """Put frames taken back at the head of the queue, in their order (inference was refused)."""
        self.in_flight -= len(indices)
        self._ready.extendleft(zip(indices.tolist()[::-1], amplitudes[::-1], strict=True))

    def clear(self) -> None:
        """Drop the waiting and queued frames (the session closed); frames in flight still finish."""
        self._waiting.clear()
        self._ready.clear()

    def _take_frames(self, index: npt.NDArray[np.int64], amplitudes: npt.NDArray[np.float32],
                     reasons: Reasons) -> Taken:
        fresh = unflagged(reasons)
        digests = np.zeros((len(index), _DIGEST_BYTES), np.uint8)
        frames = list(amplitudes)  # views, not copies
        if fresh.any():  # a C call per frame: a numpy mixing hash of the whole chunk measured 1.5x slower
            digests[fresh] = np.frombuffer(b"".join(
                hashlib.blake2b(frames[row], digest_size=_DIGEST_BYTES).digest() for row in np.flatnonzero(fresh)
            ), np.uint8).reshape(-1, _DIGEST_BYTES)
        held, known = self._digests.get(index)
        same = (known == digests).all(axis=1)
        flag(reasons, held & ~same, "frame index sent before with different data; the first frame is kept")
        new = fresh & ~held
        self._digests.put(index[new], digests[new])
        rows = np.flatnonzero(new)
        self._waiting.update(zip(index[rows].tolist(), map(frames.__getitem__, rows.tolist()), strict=True))
        return Taken(len(rows), int(np.count_nonzero(fresh & held & same)), _rejections("frame", index, reasons),
                     index[rows])

    def _take_positions(self, index: npt.NDArray[np.int64], pos: npt.NDArray[np.float64], reasons: Reasons,
                        reserve: Reserve) -> Taken | None:
        """None, with nothing changed, when several new positions do not fit the canvas together (the
        caller then takes them one by one)."""
        fresh = unflagged(reasons)
        held, known = self._positions.get(index)
        same = (known == pos).all(axis=1)
        new = fresh & ~held
        problem = reserve(pos[new]) if new.any() else None
        if problem is not None and len(index) > 1:
            return None
        for row in np.flatnonzero(fresh & held & ~same):
            reasons[row] = (f"position index sent before as {known[row].tolist()}, now {pos[row].tolist()}; the "
                            "first is kept")
        if problem is not None:
            reasons[0] = f"position {pos[0].tolist()} {problem}"
            new[0] = False
        self._positions.put(index[new], pos[new])
        return Taken(int(np.count_nonzero(new)), int(np.count_nonzero(fresh & held & same)),
                     _rejections("position", index, reasons), index[new])


def _rejections(what: str, index: npt.NDArray[np.int64], reasons: Reasons) -> list[dict[str, Any]]:
    """``{"what", "index", "reason"}`` of the items of ``index`` that have a reason, in order."""
    refused = np.flatnonzero(~unflagged(reasons))
    return [{"what": what, "index": i, "reason": reason}
            for i, reason in zip(index[refused].tolist(), reasons[refused], strict=True)]


def _in_order(index: npt.NDArray[np.int64], take: Callable[[slice], Taken | None]) -> Taken:
    """``take(rows)`` on the whole message at once when its indices are distinct and ``take`` decides
    it (not None); else on one row after another, as if they came one by one (an index repeated in a
    message, or positions that only fit the canvas in part). The results are summed."""
    if len(set(index.tolist())) == len(index) and (whole := take(slice(None))) is not None:
        return whole
    parts: list[Taken] = [take(slice(row, row + 1)) for row in range(len(index))]  # type: ignore[misc]
    return Taken(sum(p.accepted for p in parts), sum(p.duplicates for p in parts),
                 [item for p in parts for item in p.rejected], np.concatenate([p.kept for p in parts]))
