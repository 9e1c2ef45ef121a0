"""One live scan session: frames and positions paired by index, inferred in batches, stitched as they come.

A detector sends frames ``(index, pattern)`` and a motion system sends positions ``(index, [x, y])``,
in any order, in chunks, possibly twice. :class:`Session` composes the parts, each in its module,
under one lock: the message checks (:mod:`~serving.sessions.messages`), the
:class:`~serving.sessions.frame_table.FrameTable` (pairing by index, resends, the queue of paired
frames), the :class:`~serving.sessions.stream_canvas.StreamCanvas` (stitching, viewers' changed
regions) and the :class:`~serving.sessions.statistics.SessionStats` (counts, rates, latencies).
What the session does with the frames (scale, crop, units, bad pixels, refinement) is its
:class:`~ptycho_torch.plan.Plan`, resolved once here. Paired frames are inferred by the runner the
session was created with (the model is pinned: a later model swap on the server does not reach it).

When the plan refines, the session keeps every stitched frame (:mod:`~serving.sessions.kept_frames`)
and its :class:`~serving.sessions.refiner.Refiner` refines them on its own thread while frames
arrive: it takes a snapshot under the lock, runs a round without it, and hands the result back under
the lock, where the canvas shows it to the viewers. Nothing here waits for a round: the lock is only
ever held for bookkeeping and copies. numpy only; thread-safe.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ptycho_torch.bundle import Bundle
from ptycho_torch.choices import StopReason
from ptycho_torch.pipeline import Reconstruction
from ptycho_torch.plan import ReconstructOptions, resolve
from ptycho_torch.refinement import RefineSettings
from ptycho_torch.stitching import Rect, StitchResult, TiledStitcher
from serving.errors import InvalidRequest
from serving.sessions.frame_table import FrameTable, Taken
from serving.sessions.kept_frames import KeptFrames, bytes_per_frame
from serving.sessions.live_refinement import LiveRefinement, RoundInput, RoundResult
from serving.sessions.messages import IndexRange, PositionMessage, read_frames, read_positions
from serving.sessions.refiner import Refiner
from serving.sessions.statistics import SessionStats
from serving.sessions.stream_canvas import Bounds, StreamCanvas, Watch

__all__ = ["Receipt", "Session", "SessionRunner", "Work"]

Outputs = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


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
    """``{"what", "index", "reason"}`` of every item refused."""
    paired: int
    """Frames this message made ready for inference (their frame and position are both known)."""
    counts: dict[str, int]
    """The session's counts once the message was taken (:meth:`Session.counts`)."""

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected,
                "paired": self.paired, "counts": self.counts}


@dataclass(eq=False)
class Work:
    """A batch of paired frames handed to inference: ``diffraction (K, 1, N, N)``, ``positions (K, 2)``."""

    indices: npt.NDArray[np.int64]
    diffraction: npt.NDArray[np.float32]
    scale: npt.NDArray[np.float32]
    positions: npt.NDArray[np.float64]

    def flat_outputs(self) -> Outputs:
        """A flat object's patches, amplitude 1 and phase 0 ``(K, 1, N, N)``: what a plan that refines from a
        flat start stitches instead of the network's (the canvas then marks where the frames landed)."""
        return np.ones_like(self.diffraction), np.zeros_like(self.diffraction)


class Session:
    """A live scan reconstructed while it is measured.

    ``runner``: the pinned model (kept for the session's life). ``options``: as for
    ``/v1/reconstruct``, resolved with ``stream=True`` (scale policy ``bundle`` unless ``scale`` is
    given). ``expected_frames``: indices must lie in ``[0, expected_frames)`` when given, else in
    ``[0, max_frames)``. ``bounds``: ``((x_lo, x_hi), (y_lo, y_hi))`` object pixels that every
    position must lie in, when given. ``max_tiles``: canvas memory limit (tiles of ``tile**2`` pixels,
    24 bytes each). Malformed messages raise :class:`InvalidRequest`; bad items are rejected one by
    one with a reason in the :class:`Receipt`. When the options refine: ``refine_workers`` CPU threads
    refine (on one thread of the session's own), and the frames kept take at most ``max_refine_bytes``
    (:func:`~serving.sessions.kept_frames.bytes_per_frame` each), which bounds the scan indices taken.
    """

    def __init__(self, session_id: str, runner: SessionRunner, *, options: ReconstructOptions | None = None,
                 expected_frames: int | None = None, bounds: Bounds | None = None, max_tiles: int = 256,
                 tile: int = 128, max_frames: int = 1_000_000, refine_workers: int = 1,
                 max_refine_bytes: int = 1 << 30, clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = resolve(runner.bundle.facts, options, stream=True)
        if self.plan.refinement is not None:
            max_frames = _refined_frames(self.plan.N, expected_frames, max_frames, max_refine_bytes)
        self._range = IndexRange.of(expected_frames, max_frames)
        self.canvas = StreamCanvas(M=self.plan.stitch_M, tile=tile, max_tiles=max_tiles, bounds=bounds)
        self.id, self.runner, self.bundle = session_id, runner, runner.bundle
        self.closed: str | None = None
        """Why the session was closed (``deleted``, ``cancelled``, ``expired``), or None while open."""
        self.closing = False
        """Its close was asked for (:meth:`stop_intake`): messages are refused while it finishes."""
        self._kept: KeptFrames | None = None
        self._shown: RoundResult | None = None  # the refinement state the canvas shows
        self.refiner: Refiner | None = None
        """The session's refinement (None when its plan does not refine)."""
        if self.plan.refinement is not None:
            settings = dataclasses.replace(self.plan.refinement, workers=refine_workers)
            probe = self.bundle.facts.probe
            assert probe is not None, "resolve(stream=True) refuses refinement without the model's probe"
            live = LiveRefinement(probe, settings, self.plan.refine_start)
            self._kept = KeptFrames(self.plan.N, max_frames)
            self.refiner = Refiner(live, self._round_input, self._show_round, name=session_id)
        self._table = FrameTable(self._range.limit)
        self._stats = SessionStats(self._range.limit)
        self._clock = clock
        self.created = self.last_activity = clock()
        self._lock = threading.Lock()

    @property
    def stitcher(self) -> TiledStitcher:
        """The canvas's stitcher (its crop ``M``, tiles)."""
        return self.canvas.stitcher

    @property
    def scale(self) -> float:
        """The network's ``scale`` input for every frame: the plan's (a stream's is known before its first frame)."""
        assert self.plan.scale is not None, "resolve(stream=True) always gives the scale"
        return self.plan.scale

    @property
    def pending(self) -> int:
        """Frames held and not yet on the canvas (waiting for a position, queued, or in inference)."""
        return self._table.pending

    @property
    def has_ready(self) -> bool:
        """Paired frames are waiting for inference (and the session is open)."""
        return self.closed is None and self._table.queued > 0

    def add_frames(self, indices: npt.ArrayLike, patterns: npt.ArrayLike,
                   positions: npt.ArrayLike | None = None) -> Receipt:
        """Take frames ``patterns (K, N, N)`` with their scan ``indices (K,)`` (and, optionally, their
        ``positions (K, 2)``)."""
        message = read_frames(self.plan, indices, patterns, positions, self._range)
        now = self._clock()
        with self._lock:
            self._touch(now)
            frames = self._table.add_frames(message)
            self._stats.frames_taken(frames, now)
            placed = [] if message.positions is None else self._add_positions(message.positions).rejected
            return self._receipt(frames, frames.rejected + placed, message.index)

    def add_positions(self, indices: npt.ArrayLike, positions: npt.ArrayLike) -> Receipt:
        """Take scan ``positions (K, 2)`` ``[x, y]`` object pixels (patch centres) for ``indices (K,)``."""
        message = read_positions(indices, positions, self._range)
        with self._lock:
            self._touch(self._clock())
            placed = self._add_positions(message)
            return self._receipt(placed, placed.rejected, message.index)

    def _add_positions(self, message: PositionMessage) -> Taken:
        self.canvas.flag_outside(message.positions, message.reasons)
        placed = self._table.add_positions(message, self.canvas.reserve)
        self._stats.positions_taken(placed)
        return placed

    def _receipt(self, taken: Taken, rejected: list[dict[str, Any]], index: npt.NDArray[np.int64]) -> Receipt:
        """Pair the frames of a message's ``index`` whose frame and position are both known, and say so."""
        paired = self._table.pair(index)
        self._stats.frames_paired(paired)
        return Receipt(taken.accepted, taken.duplicates, rejected, paired, self._count_fields())

    def _touch(self, now: float) -> None:
        if self.closed is not None:
            raise InvalidRequest(f"session {self.id} is closed ({self.closed}); create a new one")
        if self.closing:
            raise InvalidRequest(f"session {self.id} is closing (its close was asked for); create a new one")
        self.last_activity = now

    def take_work(self, max_items: int) -> Work | None:
        """Up to ``max_items`` paired frames for inference (None when none are ready or the session is closed)."""
        with self._lock:
            batch = None if self.closed is not None else self._table.take(max_items)
        if batch is None:
            return None
        indices, amplitudes, positions = batch
        return Work(indices, np.stack(amplitudes)[:, None], np.full(len(indices), self.scale, np.float32),
                    positions)

    def finish_work(self, work: Work, outputs: Outputs | BaseException) -> None:
        """Stitch ``outputs`` ``(amplitude, phase)`` of ``work`` onto the canvas, or record why inference failed."""
        with self._lock:
            self._table.done(len(work.indices))
            if self.closed is not None:
                return
            if isinstance(outputs, BaseException):
                self._stats.failed(work.indices, outputs)
                return
            self.canvas.add(*outputs, work.positions)
            self.last_activity = self._clock()
            self._stats.stitched(work.indices, self.last_activity)
            if self._kept is not None and self.refiner is not None:
                self._kept.add(work.indices, work.diffraction[:, 0], work.positions)
                self.refiner.notify()

    def _round_input(self) -> RoundInput | None:
        """The refiner's snapshot: the frames kept and the network canvas of exactly those (None once closed)."""
        with self._lock:
            if self.closed is not None or self._kept is None or (network := self.canvas.network()) is None:
                return None
            return RoundInput(self._kept.snapshot(), network)

    def _show_round(self, result: RoundResult) -> None:
        """Show a refinement state on the canvas (the viewers get it as a delta) and in the results."""
        layer = result.layer()
        with self._lock:
            if self.closed is None:
                self.canvas.show_refined(layer)
                self._shown = result

    def requeue(self, work: Work) -> None:
        """Put ``work`` back at the head of the queue (the inference queue was full)."""
        with self._lock:
            self._table.requeue(work.indices, work.diffraction[:, 0])

    def watch(self) -> Watch:
        """Register a viewer of changed regions; its first region is the whole canvas so far."""
        with self._lock:
            return self.canvas.watch()

    def unwatch(self, watch: Watch) -> None:
        with self._lock:
            self.canvas.unwatch(watch)

    def take_update(self, watch: Watch) -> tuple[Rect, npt.NDArray[np.complex64], dict[str, Any]] | None:
        """The region changed since ``watch``'s last update (see :meth:`StreamCanvas.take_update`), its
        header with the counts; None if nothing changed."""
        with self._lock:
            update = self.canvas.take_update(watch)
            return None if update is None else (update[0], update[1], {**update[2], "counts": self._count_fields()})

    def reconstruction(self) -> Reconstruction:
        """The object so far, in ``/v1/reconstruct``'s form (0 x 0 arrays before the first frame lands).
        When the session refines: the refined object where the last round's canvas was covered, that round's
        ``refinement`` (:meth:`RoundResult.summary`), ``data_fit``, ``probe`` and ``positions`` (rows in
        scan-index order); after a close without ``cancel``, those of the final round. Only the final
        round's end has the solver's ``stop_reason``: before it, None while the session is open, and
        ``cancelled`` once it is closed (with ``cancel``, expired, or at a server shutdown), with the
        refinement asked for and what the object returned is in ``stopped``."""
        with self._lock:
            stitched = self.canvas.result()
            elapsed = self._clock() - self.created
            count = self._stats.counts.reconstructed
            shown = self._shown
        if stitched is None:  # before the first frame lands: 0 x 0 arrays
            stitched = StitchResult(canvas=np.zeros((0, 0), np.complex64), coverage=np.zeros((0, 0)), origin=(0.0, 0.0))
        refined: dict[str, Any] = {} if shown is None else {
            "refinement": self._summary(shown), "data_fit": shown.data_fit(str(self.plan.probe_source)),
            "probe": shown.probe(), "positions": shown.positions()}
        return Reconstruction(amplitude=stitched.amplitude, phase=stitched.phase,
                              coverage=stitched.coverage.astype(np.float32), origin=stitched.origin,
                              scale=self.scale, scale_policy=str(self.plan.scale_policy), n_patterns=count,
                              n_groups=count, timings={"total": elapsed}, **refined)

    def _summary(self, shown: RoundResult) -> dict[str, Any]:
        """``shown``'s ``refinement`` (:meth:`RoundResult.summary`): the final round's when it ran to its
        end; else, once closed, ``cancelled`` and why (or the refiner's error); None while it goes on."""
        assert self.refiner is not None, "only a refining session shows a round"
        asked, error, closed = self.refiner.live.settings, self.refiner.error, self.closed
        if shown.completed or (closed is None and error is None):
            return shown.summary(asked)
        if error is not None:
            return shown.summary(asked, None, f"the refinement failed ({error}); {shown.outcome()}")
        assert closed is not None
        why = _CLOSED_WORDS.get(closed, f"the session was {closed}")
        return shown.summary(asked, StopReason.CANCELLED,
                             f"cancelled: {why} before the refinement asked for ({_asked_words(asked)}) ended; "
                             f"{shown.outcome()}")

    def counts(self) -> dict[str, int]:
        """Frames received, paired, reconstructed, pending and rejected so far."""
        with self._lock:
            return self._count_fields()

    def _count_fields(self) -> dict[str, int]:
        return self._stats.count_fields(self._table.pending)

    def status(self) -> dict[str, Any]:
        """JSON status: counts, pending work, rejections with reasons, rates, latency, model, canvas, refinement."""
        with self._lock:
            now, stats, table = self._clock(), self._stats, self._table
            return {
                "session_id": self.id,
                "state": self.closed if self.closed is not None else "closing" if self.closing else "open",
                "model": {"name": self.bundle.name, "version": str(self.bundle.version)},
                "expected_frames": self._range.expected_frames,
                "frames": stats.frames_json(table.waiting, table.queued, table.in_flight),
                "positions": stats.positions_json(), "rejections": list(stats.rejections),
                "rates_per_s": stats.rates_json(now), "latency_s": stats.latency_json(),
                "canvas": self.canvas.to_json(),
                "options": {"scale_policy": str(self.plan.scale_policy), "units": self.plan.units,
                            "stitch_M": self.plan.stitch_M},
                "scale": self.scale, "age_s": now - self.created, "idle_s": now - self.last_activity,
                "refinement": self._refinement_json(),
            }

    def _refinement_json(self) -> dict[str, Any] | None:
        """The status's ``refinement`` part (None when the plan does not refine): the refiner's progress,
        the frames kept and their bytes, the settings, and the frames and amplitude error of the round
        the canvas shows."""
        if self.refiner is None or self._kept is None:
            return None
        settings, shown = self.refiner.live.settings, self._shown
        return {**self.refiner.progress(), "frames_kept": len(self._kept), "kept_bytes": self._kept.nbytes,
                "frames_shown": None if shown is None else len(shown.indices),
                "iterations_asked": settings.iterations, "algorithm": str(settings.algorithm),
                "start": str(self.plan.refine_start), "refine_probe": settings.refine_probe,
                "refine_positions": settings.refine_positions,
                "amplitude_error": None if shown is None else shown.state.history[-1]["amplitude_error"]}

    def stop_intake(self) -> None:
        """Refuse further messages (a close was asked for); frames already paired are still stitched."""
        with self._lock:
            self.closing = True

    def finish_refinement(self) -> Future[RoundResult | None]:
        """Run the final refinement round (the plan's settings over every frame stitched, warm-started; the
        canvas shows it when done); the future gives it, or None when the session does not refine."""
        if self.refiner is None:
            done: Future[RoundResult | None] = Future()
            done.set_result(None)
            return done
        return self.refiner.finish()

    def close(self, reason: str) -> None:
        """Close: drop queued and waiting frames (in-flight results are discarded), stop the refinement at its
        next iteration, wake the viewers."""
        with self._lock:
            if self.closed is None:
                self.closed = reason
            self._table.clear()
            if self.refiner is not None:
                self.refiner.cancel()
            self.canvas.wake_all()


_CLOSED_WORDS = {"cancelled": "the session was closed with cancel",
                 "expired": "the session expired (idle for too long)",
                 "cancelled at server shutdown": "the server shut down"}
"""Why a session that refines was closed (:attr:`Session.closed`), in a refinement's ``stopped`` sentence."""


def _asked_words(asked: RefineSettings) -> str:
    """The refinement a session was asked for, as its options name it."""
    return (f"refine_iterations={asked.iterations!r}, refine_probe={str(asked.refine_probe).lower()}, "
            f"refine_positions={str(asked.refine_positions).lower()}")


def _refined_frames(N: int, expected_frames: int | None, max_frames: int, max_refine_bytes: int) -> int:
    """The most frames a refining session takes: ``max_frames``, and no more than ``max_refine_bytes`` keep;
    raises :class:`InvalidRequest` when ``expected_frames`` asks for more."""
    most = min(max_frames, max(1, max_refine_bytes // bytes_per_frame(N)))
    if expected_frames is not None and isinstance(expected_frames, int) and expected_frames > most:
        raise InvalidRequest(f"`expected_frames` must be at most {most} for a session that refines: it keeps every "
                             f"frame ({bytes_per_frame(N)} bytes each at N={N}) and this server gives it "
                             f"{max_refine_bytes} bytes; reconstruct a larger scan with POST /v1/reconstruct")
    return most
