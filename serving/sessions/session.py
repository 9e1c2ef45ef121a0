"""One live scan session: frames and positions paired by index, inferred in batches, stitched as they come.

A detector sends frames ``(index, pattern)`` and a motion system sends positions ``(index, [x, y])``,
in any order, in chunks, possibly twice. A frame joins the work queue only once its position is
known (pairing is by index, never by arrival order, so a late position never shears the mosaic).
Paired frames are inferred in batches by the runner the session was created with (the model is
pinned: a later model swap on the server does not reach it) and stitched into a
:class:`~ptycho_torch.stitching.TiledStitcher`, whose result on the positions seen equals the
whole-scan stitcher's. numpy only; thread-safe (one lock per session).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ptycho_torch.stitching import Rect, TiledStitcher, canvas_geometry
from ptycho_torch.bundle import Bundle
from serving.errors import InvalidRequest
from serving.sessions.scan_table import ScanTable
from ptycho_torch.plan import ReconstructOptions, resolve
from ptycho_torch.pipeline import Reconstruction
from ptycho_torch.scan_checks import check_network_input, to_amplitudes
from ptycho_torch.stitching import complex_patches

__all__ = ["Receipt", "Session", "SessionRunner", "Work"]

Outputs = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
Span = tuple[tuple[float, float], tuple[float, float]]
"""``((x_lo, x_hi), (y_lo, y_hi))`` object pixels."""

_MAX_REJECTIONS_KEPT = 100
"""Rejections listed one by one in :meth:`Session.status` (all are counted)."""
_LATENCIES_KEPT = 100_000
"""Frame-to-canvas latencies kept for the percentiles (the most recent)."""
_RATE_WINDOW_S = 5.0
"""Window of the recent frame rates in :meth:`Session.status`."""
_DIGEST_BYTES = 16
"""BLAKE2b digest of a frame kept per index, to tell a resent frame from a changed one."""


class SessionRunner(Protocol):
    """What a session needs from a model: its bundle, and batched inference that returns a future
    (:class:`~serving.batching.DynamicBatcher` is one)."""

    bundle: Bundle

    def submit(self, diffraction: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]) -> Future[Outputs]: ...


@dataclass(frozen=True)
class Receipt:
    """What one ``frames`` or ``positions`` message did."""

    accepted: int
    """New frames (or positions) kept."""
    duplicates: int
    """Resent items identical to ones already held: ignored."""
    rejected: list[dict[str, Any]]
    """``{"index", "reason"}`` of every item refused."""
    paired: int
    """Frames this message made ready for inference (their frame and position are both known)."""

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected,
                "paired": self.paired}


@dataclass(eq=False)
class Work:
    """A batch of paired frames handed to inference: ``diffraction (K, 1, N, N)``, ``positions (K, 2)``."""

    indices: npt.NDArray[np.int64]
    diffraction: npt.NDArray[np.float32]
    scale: npt.NDArray[np.float32]
    positions: npt.NDArray[np.float64]


@dataclass
class _Counts:
    frames: int = 0
    frame_duplicates: int = 0
    positions: int = 0
    position_duplicates: int = 0
    rejected: int = 0
    paired: int = 0
    reconstructed: int = 0
    in_flight: int = 0
    failed: int = 0


@dataclass
class _Watch:
    """A subscriber's changed region since its last look (grid rectangle, or None)."""

    dirty: Rect | None = None
    event: threading.Event = field(default_factory=threading.Event)


def _union(a: Rect | None, b: Rect) -> Rect:
    if a is None:
        return b
    x, y = min(a[0], b[0]), min(a[1], b[1])
    return x, y, max(a[0] + a[2], b[0] + b[2]) - x, max(a[1] + a[3], b[1] + b[3]) - y


class Session:
    """A live scan reconstructed while it is measured.

    ``runner``: the pinned model (kept for the session's life). ``options``: as for
    ``/v1/reconstruct``; the scale policy must be ``bundle`` (a stream cannot know the whole scan's
    normalisation in advance) unless the option ``scale``, the network's scale input, is given (by
    a client that holds the whole scan, for instance). ``expected_frames``: indices must lie in
    ``[0, expected_frames)`` when given. ``bounds``: ``((x_lo, x_hi), (y_lo, y_hi))`` object pixels
    that every position must lie in, when given. ``max_tiles``: canvas memory limit (tiles of
    ``tile**2`` pixels, 24 bytes each). ``max_frames``: the index bound without ``expected_frames``.
    """

    def __init__(
        self,
        session_id: str,
        runner: SessionRunner,
        *,
        options: ReconstructOptions | None = None,
        expected_frames: int | None = None,
        bounds: tuple[tuple[float, float], tuple[float, float]] | None = None,
        max_tiles: int = 256,
        tile: int = 128,
        max_frames: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        bundle = runner.bundle
        plan = resolve(bundle.facts, options, stream=True)
        if expected_frames is not None and not (isinstance(expected_frames, int)
                                                and 1 <= expected_frames <= max_frames):
            raise InvalidRequest(f"`expected_frames` must be an integer in [1, {max_frames}], "
                                 f"got {expected_frames!r}")
        if bounds is not None:
            bounds = _check_bounds(bounds)
        self.id = session_id
        self.runner = runner
        self.bundle = bundle
        self.plan = plan
        self.expected_frames = expected_frames
        self._index_limit = expected_frames or max_frames
        self.bounds = bounds
        assert plan.scale is not None  # a stream's scale is known before the first frame
        self.scale = plan.scale
        self.scale_policy = str(plan.scale_policy)
        self.stitcher = TiledStitcher(M=plan.stitch_M, tile=tile, max_tiles=max_tiles)
        self.closed: str | None = None
        """Why the session was closed (``deleted``, ``cancelled``, ``expired``), or None while open."""
        self._clock = clock
        self.created = clock()
        self.last_activity = self.created
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._rejections: list[dict[str, Any]] = []
        self._waiting: dict[int, npt.NDArray[np.float32]] = {}  # frames whose position is not known yet
        self._frame_digests = ScanTable(_DIGEST_BYTES, np.uint8, self._index_limit)
        self._positions = ScanTable(2, np.float64, self._index_limit)
        self._tiles: set[tuple[int, int]] = set()  # canvas tiles the accepted positions will need
        self._span: Span | None = None  # x, y range of accepted positions
        self._ready: deque[tuple[int, npt.NDArray[np.float32]]] = deque()
        self._arrived: dict[int, float] = {}  # frame index -> arrival time, until it is on the canvas
        self._latencies: deque[float] = deque(maxlen=_LATENCIES_KEPT)
        self._received_times: deque[tuple[float, int]] = deque()
        self._stitched_times: deque[tuple[float, int]] = deque()
        self._watches: list[_Watch] = []
        self.version = 0
        """Incremented by every stitched batch."""

    # ------------------------------------------------------------------ frames and positions in

    @property
    def pending(self) -> int:
        """Frames held and not yet on the canvas (waiting for a position, queued, or in inference)."""
        return len(self._waiting) + len(self._ready) + self._counts.in_flight

    @property
    def has_ready(self) -> bool:
        """Paired frames are waiting for inference (and the session is open)."""
        return self.closed is None and bool(self._ready)

    def add_frames(self, indices: npt.ArrayLike, patterns: npt.ArrayLike,
                   positions: npt.ArrayLike | None = None) -> Receipt:
        """Take frames ``patterns (K, N, N)`` with their scan ``indices (K,)`` (and, optionally, their
        ``positions (K, 2)``). Raises :class:`InvalidRequest` for a malformed message (nothing kept);
        frames with bad values are rejected one by one with a reason in the receipt."""
        index = _check_indices(indices, "frames")
        N = self.bundle.N
        array = np.asarray(patterns)
        if array.dtype.kind not in "fiu" or array.shape != (len(index), N, N):
            raise InvalidRequest(f"`patterns` must be real numbers of shape ({len(index)}, {N}, {N}) (one "
                                 f"fftshifted pattern per index, N={N} for this model), got {array.dtype} "
                                 f"{list(array.shape)}")
        if positions is not None:
            _check_position_array(positions, len(index))
        now = self._clock()
        finite = np.isfinite(array).all(axis=(1, 2))
        negative = (array < 0).any(axis=(1, 2)) & finite
        amplitudes = to_amplitudes(np.where(negative[:, None, None], 0, array) if negative.any() else array,
                                   self.plan.units)[0]  # the one units rule: integer frames are counts
        check_network_input(self.scale, float(amplitudes[finite].max()) if finite.any() else 0.0)
        reasons = self._index_problems(index)
        _flag(reasons, ~finite, "pattern holds NaN/inf")
        _flag(reasons, negative, "pattern holds negative values (amplitudes or counts must be >= 0)")
        with self._lock:
            self._check_open()
            self.last_activity = now
            frames = _in_order(index, lambda rows: self._take_frames(index[rows], amplitudes[rows], reasons[rows],
                                                                     now))
            self._counts.frames += frames.accepted
            self._counts.frame_duplicates += frames.duplicates
            _note(self._received_times, now, frames.accepted)
            placed = self._add_positions(index, positions) if positions is not None else None
            paired = self._pair(index)
        rejected = frames.rejected + (placed.rejected if placed is not None else [])
        return Receipt(frames.accepted, frames.duplicates, rejected, paired)

    def _take_frames(self, index: npt.NDArray[np.int64], amplitudes: npt.NDArray[np.float32],
                     reasons: npt.NDArray[np.object_], now: float) -> Receipt:
        """Keep the frames of distinct ``index`` that have no reason yet and were not held before;
        count identical resends as duplicates and reject changed ones."""
        fresh = np.equal(reasons, None)
        digests = np.zeros((len(index), _DIGEST_BYTES), np.uint8)
        frames = list(amplitudes)  # views, not copies
        if fresh.any():  # a C call per frame: a numpy mixing hash of the whole chunk measured 1.5x slower
            digests[fresh] = np.frombuffer(b"".join(
                hashlib.blake2b(frames[row], digest_size=_DIGEST_BYTES).digest() for row in np.flatnonzero(fresh)
            ), np.uint8).reshape(-1, _DIGEST_BYTES)
        held, known = self._frame_digests.get(index)
        same = (known == digests).all(axis=1)
        _flag(reasons, held & ~same, "frame index sent before with different data; the first frame is kept")
        new = fresh & ~held
        self._frame_digests.put(index[new], digests[new])
        rows = np.flatnonzero(new).tolist()
        kept = index[rows].tolist()
        self._arrived.update(dict.fromkeys(kept, now))
        self._waiting.update(zip(kept, map(frames.__getitem__, rows)))
        duplicates = int(np.count_nonzero(fresh & held & same))
        return Receipt(len(kept), duplicates, self._rejections_of("frame", index, reasons), 0)

    def add_positions(self, indices: npt.ArrayLike, positions: npt.ArrayLike) -> Receipt:
        """Take scan ``positions (K, 2)`` ``[x, y]`` object pixels (patch centres) for ``indices (K,)``."""
        index = _check_indices(indices, "positions")
        _check_position_array(positions, len(index))
        with self._lock:
            self._check_open()
            self.last_activity = self._clock()
            receipt = self._add_positions(index, positions)
            return Receipt(receipt.accepted, receipt.duplicates, receipt.rejected, self._pair(index))

    def _add_positions(self, index: npt.NDArray[np.int64], positions: npt.ArrayLike) -> Receipt:
        pos = np.asarray(positions, dtype=np.float64)
        reasons = self._index_problems(index)
        _flag(reasons, ~np.isfinite(pos).all(axis=1), "position holds NaN/inf")
        if self.bounds is not None:
            (x_lo, x_hi), (y_lo, y_hi) = self.bounds
            x, y = pos.T
            outside = ~((x_lo <= x) & (x <= x_hi) & (y_lo <= y) & (y <= y_hi))
            for row in np.flatnonzero(outside & np.equal(reasons, None)):
                reasons[row] = (f"position {pos[row].tolist()} is outside the canvas bounds {self.bounds} given at "
                                "creation")
        keys = self.stitcher.tile_keys(np.nan_to_num(pos, posinf=0.0, neginf=0.0))
        receipt = _in_order(index, lambda rows: self._take_positions(index[rows], pos[rows], keys[rows],
                                                                     reasons[rows]))
        self._counts.positions += receipt.accepted
        self._counts.position_duplicates += receipt.duplicates
        return receipt

    def _take_positions(self, index: npt.NDArray[np.int64], pos: npt.NDArray[np.float64],
                        keys: npt.NDArray[np.int64], reasons: npt.NDArray[np.object_]) -> Receipt | None:
        """Keep the positions of distinct ``index`` that have no reason yet and were not held before;
        count identical resends as duplicates, reject changed ones. None, with nothing changed, when
        several new positions do not fit the canvas together (the caller then takes them one by one)."""
        fresh = np.equal(reasons, None)
        held, known = self._positions.get(index)
        same = (known == pos).all(axis=1)
        new = fresh & ~held
        span, tiles = _grown(self._span, pos[new]), self._tiles | _tile_set(keys[new])
        problem = self._canvas_problem(span, tiles) if new.any() else None
        if problem is not None and len(index) > 1:
            return None
        for row in np.flatnonzero(fresh & held & ~same):
            reasons[row] = (f"position index sent before as {known[row].tolist()}, now {pos[row].tolist()}; the "
                            "first is kept")
        if problem is not None:
            reasons[0] = f"position {pos[0].tolist()} {problem}"
        else:
            self._positions.put(index[new], pos[new])
            self._span, self._tiles = span, tiles
        accepted = 0 if problem is not None else int(np.count_nonzero(new))
        duplicates = int(np.count_nonzero(fresh & held & same))
        return Receipt(accepted, duplicates, self._rejections_of("position", index, reasons), 0)

    def _canvas_problem(self, span: Span, tiles: set[tuple[int, int]]) -> str | None:
        """Why positions spanning ``span`` and needing canvas ``tiles`` cannot join the canvas, or None.
        The object is returned on the bounding box of every position, so that box (not only the tiles
        touched) must fit the canvas limit: two positions far apart would otherwise ask for a canvas of
        any size."""
        x_range, y_range = span
        _, (H, W) = canvas_geometry(x_range, y_range, self.stitcher.M)
        limit = self.stitcher.max_tiles * self.stitcher.tile ** 2
        if H * W > limit:
            return (f"would make the object {H:.3g} x {W:.3g} px (the bounding box of the session's positions), "
                    f"over the canvas limit of {limit:,} px ({self.stitcher.max_tiles} tiles of "
                    f"{self.stitcher.tile}x{self.stitcher.tile}); check the position units (object pixels)")
        if len(tiles) > self.stitcher.max_tiles:
            return (f"would grow the canvas past its limit of {self.stitcher.max_tiles} tiles of "
                    f"{self.stitcher.tile}x{self.stitcher.tile} pixels; check the position units (object pixels)")
        return None

    def _index_problems(self, index: npt.NDArray[np.int64]) -> npt.NDArray[np.object_]:
        """The reason each of ``index (K,)`` is refused, or None where it is in range."""
        reasons = np.full(len(index), None, object)
        if self.expected_frames is not None:
            too_large = f"index must be < expected_frames = {self.expected_frames}"
        else:
            too_large = f"index must be < {self._index_limit}, this server's largest scan (give expected_frames)"
        reasons[index >= self._index_limit] = too_large
        reasons[index < 0] = "index must be >= 0"
        return reasons

    def _rejections_of(self, what: str, index: npt.NDArray[np.int64], reasons: npt.NDArray[np.object_]
                       ) -> list[dict[str, Any]]:
        """Record the items of ``index`` that have a reason, in order."""
        refused = np.flatnonzero(~np.equal(reasons, None))
        return [self._reject(what, i, reason) for i, reason in zip(index[refused].tolist(), reasons[refused])]

    def _reject(self, what: str, index: int, reason: str) -> dict[str, Any]:
        item = {"what": what, "index": index, "reason": reason}
        self._counts.rejected += 1
        if len(self._rejections) < _MAX_REJECTIONS_KEPT:
            self._rejections.append(item)
        return item

    def _pair(self, index: npt.NDArray[np.int64]) -> int:
        """Queue for inference the frames of a message's ``index`` whose frame and position are both known."""
        known = dict.fromkeys(index[self._positions.get(index)[0]].tolist())
        paired = [i for i in known if i in self._waiting]
        self._ready.extend(zip(paired, map(self._waiting.pop, paired)))
        self._counts.paired += len(paired)
        return len(paired)

    def _check_open(self) -> None:
        if self.closed is not None:
            raise InvalidRequest(f"session {self.id} is closed ({self.closed}); create a new one")

    # ------------------------------------------------------------------ inference and stitching

    def take_work(self, max_items: int) -> Work | None:
        """Up to ``max_items`` paired frames for inference (None when none are ready or the session is closed)."""
        with self._lock:
            if self.closed is not None or not self._ready:
                return None
            items = [self._ready.popleft() for _ in range(min(max_items, len(self._ready)))]
            self._counts.in_flight += len(items)
            indices = np.fromiter((i for i, _ in items), np.int64, len(items))
            positions = self._positions.get(indices)[1]
        diffraction = np.stack([pattern for _, pattern in items])[:, None]
        return Work(indices, diffraction, np.full(len(items), self.scale, np.float32), positions)

    def finish_work(self, work: Work, outputs: Outputs | BaseException) -> None:
        """Stitch ``outputs`` ``(amplitude, phase)`` of ``work`` onto the canvas, or record why inference failed."""
        with self._lock:
            self._counts.in_flight -= len(work.indices)
            if self.closed is not None:
                return
            if isinstance(outputs, BaseException):
                for i in work.indices.tolist():
                    self._reject("frame", i, f"inference failed: {outputs}")
                    self._arrived.pop(i, None)
                self._counts.failed += len(work.indices)
                return
            amplitude, phase = outputs
            patches = complex_patches(amplitude[:, 0], phase[:, 0])
            rect = self.stitcher.add(patches, work.positions)
            now = self._clock()
            self._latencies.extend(now - self._arrived.pop(i) for i in work.indices.tolist())
            self._counts.reconstructed += len(work.indices)
            _note(self._stitched_times, now, len(work.indices))
            self.version += 1
            self.last_activity = now
            assert rect is not None
            for watch in self._watches:
                watch.dirty = _union(watch.dirty, rect)
                watch.event.set()

    def requeue(self, work: Work) -> None:
        """Put ``work`` back at the head of the queue (the inference queue was full)."""
        with self._lock:
            self._counts.in_flight -= len(work.indices)
            for i, pattern in zip(work.indices.tolist()[::-1], work.diffraction[::-1, 0], strict=True):
                self._ready.appendleft((i, pattern))

    # ------------------------------------------------------------------ results out

    def watch(self) -> _Watch:
        """Register a subscriber of changed regions; its first region is the whole canvas so far."""
        with self._lock:
            watch = _Watch()
            geometry = self.stitcher.geometry
            if geometry is not None:
                (x0, y0), (H, W) = geometry
                watch.dirty = (-x0, -y0, W, H)
                watch.event.set()
            self._watches.append(watch)
            return watch

    def unwatch(self, watch: _Watch) -> None:
        with self._lock:
            if watch in self._watches:
                self._watches.remove(watch)

    def take_update(self, watch: _Watch) -> tuple[Rect, npt.NDArray[np.complex64], dict[str, Any]] | None:
        """The region changed since ``watch``'s last update: grid rectangle, complex object on it, and
        the header fields (canvas geometry, the rectangle's offset in it, counts); None if nothing changed."""
        with self._lock:
            rect, watch.dirty = watch.dirty, None
            watch.event.clear()
            if rect is None:
                return None
            canvas, _ = self.stitcher.region(rect)
            (x0, y0), (H, W) = self.stitcher.geometry  # type: ignore[misc]
            header = {"x": rect[0], "y": rect[1], "offset": [rect[0] + x0, rect[1] + y0],
                      "origin": [float(x0), float(y0)], "canvas_shape": [H, W], "version": self.version,
                      "counts": self._count_fields()}
        return rect, canvas, header

    def wake_watchers(self) -> None:
        """Wake every subscriber (the session closed)."""
        with self._lock:
            for watch in self._watches:
                watch.event.set()

    def reconstruction(self) -> Reconstruction:
        """The object so far, in ``/v1/reconstruct``'s form (0 x 0 arrays before the first frame lands)."""
        with self._lock:
            if self.stitcher.count == 0:
                empty = np.zeros((0, 0), np.float32)
                stitched = None
            else:
                stitched = self.stitcher.result()
            elapsed = self._clock() - self.created
            count = self._counts.reconstructed
        if stitched is None:
            return Reconstruction(amplitude=empty, phase=empty.copy(), coverage=empty.copy(), origin=(0.0, 0.0),
                                  scale=self.scale, scale_policy=self.scale_policy, n_patterns=0, n_groups=0,
                                  timings={"total": elapsed})
        return Reconstruction(amplitude=stitched.amplitude, phase=stitched.phase,
                              coverage=stitched.coverage.astype(np.float32), origin=stitched.origin,
                              scale=self.scale, scale_policy=self.scale_policy, n_patterns=count, n_groups=count,
                              timings={"total": elapsed})

    def counts(self) -> dict[str, int]:
        """Frames received, paired, reconstructed, pending and rejected so far."""
        with self._lock:
            return self._count_fields()

    def _count_fields(self) -> dict[str, int]:
        c = self._counts
        return {"received": c.frames, "paired": c.paired, "reconstructed": c.reconstructed,
                "pending": self.pending, "rejected": c.rejected}

    def status(self) -> dict[str, Any]:
        """JSON status: counts, pending work, rejections with reasons, rates, latency, model, canvas."""
        with self._lock:
            now = self._clock()
            c = self._counts
            latencies = np.asarray(self._latencies)
            geometry = self.stitcher.geometry
            return {
                "session_id": self.id,
                "state": "open" if self.closed is None else self.closed,
                "model": {"name": self.bundle.name, "version": str(self.bundle.version)},
                "expected_frames": self.expected_frames,
                "frames": {
                    "received": c.frames, "duplicates": c.frame_duplicates, "paired": c.paired,
                    "reconstructed": c.reconstructed, "rejected": c.rejected, "failed": c.failed,
                    "pending": {"waiting_for_position": len(self._waiting), "queued": len(self._ready),
                                "in_flight": c.in_flight},
                },
                "positions": {"received": c.positions, "duplicates": c.position_duplicates,
                              "without_frame": c.positions - c.paired},  # a frame joining its position pairs it
                "rejections": list(self._rejections),
                "rates_per_s": {"received": _rate(self._received_times, now),
                                "reconstructed": _rate(self._stitched_times, now)},
                "latency_s": {"count": len(latencies),
                              "p50": float(np.percentile(latencies, 50)) if len(latencies) else None,
                              "p99": float(np.percentile(latencies, 99)) if len(latencies) else None},
                "canvas": {"origin": None if geometry is None else list(geometry[0]),
                           "shape": None if geometry is None else list(geometry[1]),
                           "tiles": self.stitcher.n_tiles, "bytes": self.stitcher.nbytes},
                "options": {"scale_policy": self.scale_policy, "units": self.plan.units,
                            "stitch_M": self.stitcher.M},
                "scale": self.scale,
                "age_s": now - self.created,
                "idle_s": now - self.last_activity,
            }

    def close(self, reason: str) -> None:
        """Close: drop queued and waiting frames (in-flight results are discarded), wake subscribers."""
        with self._lock:
            if self.closed is None:
                self.closed = reason
            self._waiting.clear()
            self._ready.clear()
            for watch in self._watches:
                watch.event.set()


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


def _check_indices(indices: npt.ArrayLike, what: str) -> npt.NDArray[np.int64]:
    array = np.asarray(indices)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        raise InvalidRequest(f"`indices` of a {what} message must be a 1-D integer array (K,), one scan index "
                             f"per item, got {array.dtype} {list(array.shape)}")
    if len(array) == 0:
        raise InvalidRequest(f"a {what} message must hold at least one index, got 0")
    return array.astype(np.int64, copy=False)


def _check_position_array(positions: npt.ArrayLike, count: int) -> None:
    array = np.asarray(positions)
    if array.dtype.kind not in "fiu" or array.shape != (count, 2):
        raise InvalidRequest(f"`positions` must be real numbers of shape ({count}, 2) as [x, y] object pixels, "
                             f"one row per index, got {array.dtype} {list(array.shape)}")


def _check_bounds(bounds: Any) -> tuple[tuple[float, float], tuple[float, float]]:
    try:
        (x_lo, x_hi), (y_lo, y_hi) = ((float(a), float(b)) for a, b in bounds)
    except (TypeError, ValueError):
        raise InvalidRequest(f"`bounds` must be [[x_lo, x_hi], [y_lo, y_hi]] object pixels, got {bounds!r}") from None
    if not (np.isfinite([x_lo, x_hi, y_lo, y_hi]).all() and x_lo <= x_hi and y_lo <= y_hi):
        raise InvalidRequest(f"`bounds` must be finite with low <= high, got {bounds!r}")
    return (x_lo, x_hi), (y_lo, y_hi)


def _grown(span: Span | None, points: npt.NDArray[np.float64]) -> Span | None:
    """``span`` grown to hold ``points (K, 2)`` ``[x, y]`` (None for no span and no points)."""
    if len(points) == 0:
        return span
    lo, hi = points.min(axis=0).tolist(), points.max(axis=0).tolist()
    if span is not None:
        (x_lo, x_hi), (y_lo, y_hi) = span
        lo, hi = [min(x_lo, lo[0]), min(y_lo, lo[1])], [max(x_hi, hi[0]), max(y_hi, hi[1])]
    return (lo[0], hi[0]), (lo[1], hi[1])


def _tile_set(keys: npt.NDArray[np.int64]) -> set[tuple[int, int]]:
    """The ``(tile row, tile column)`` pairs of ``keys (K, 4, 2)``."""
    return set(map(tuple, keys.reshape(-1, 2).tolist()))


def _flag(reasons: npt.NDArray[np.object_], mask: npt.NDArray[np.bool_], reason: str) -> None:
    """Give ``reason`` to the items of ``mask`` that have none yet (an item reports its first problem)."""
    reasons[mask & np.equal(reasons, None)] = reason


def _in_order(index: npt.NDArray[np.int64], take: Callable[[slice], Receipt | None]) -> Receipt:
    """``take(rows)`` on the whole message at once when its indices are distinct and ``take`` decides
    it (not None); else on one row after another, as if they came one by one (an index repeated in a
    message, or positions that only fit the canvas in part). The receipts are summed."""
    if len(set(index.tolist())) == len(index) and (whole := take(slice(None))) is not None:
        return whole
    parts = [take(slice(row, row + 1)) for row in range(len(index))]
    return Receipt(sum(p.accepted for p in parts), sum(p.duplicates for p in parts),  # type: ignore[union-attr]
                   [item for p in parts for item in p.rejected], 0)  # type: ignore[union-attr]
