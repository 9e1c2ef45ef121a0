"""The live sessions of one server: the registry, model pinning, memory limits and idle expiry.

Memory stays bounded: at most ``max_sessions`` sessions, at most ``max_pending_frames`` frames held
and not yet stitched over all of them (a message that would go past it is refused whole with 503 +
Retry-After, so a detector can resend it), and at most ``max_canvas_tiles`` canvas tiles per session.
A message goes to :meth:`SessionManager.add_frames` (or ``add_positions``), which checks the limit,
adds it to the session and starts the session's inference pump (:mod:`serving.sessions.pump`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy.typing as npt
from starlette.concurrency import run_in_threadpool

from ptycho_torch.pipeline import Reconstruction
from ptycho_torch.plan import ReconstructOptions
from serving.config import SessionLimits
from serving.errors import Overloaded, SessionNotFound
from serving.sessions.pump import Pumps
from serving.sessions.session import Receipt, Session, SessionRunner

__all__ = ["SessionLimits", "SessionManager"]

log = logging.getLogger(__name__)

_CLOSED_KEPT = 1000
"""Recently closed session ids remembered, so a late client hears why its session is gone."""
_REFINER_JOIN_S = 10.0
"""How long a server shutdown waits for cancelled refinements to stop (each stops at its next iteration)."""


class SessionManager:
    """Create, find, feed and close sessions. ``resolve(model, version)`` returns the runner a new
    session pins (it raises :class:`~serving.errors.ModelNotFound` for an unknown model); it runs under
    the manager's lock, so it must not wait for a lock held by a caller of :meth:`sessions`."""

    def __init__(self, resolve: Callable[[str | None, str | None], SessionRunner],
                 limits: SessionLimits | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.resolve = resolve
        self.limits = limits or SessionLimits()
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._closed: OrderedDict[str, str] = OrderedDict()
        self._pumps = Pumps()
        self._lock = threading.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self._closed_totals = {"received": 0, "reconstructed": 0, "rejected": 0}

    # ------------------------------------------------------------------ registry

    def create(self, model: str | None = None, version: str | None = None, *,
               options: ReconstructOptions | None = None, expected_frames: int | None = None,
               bounds: Any = None) -> Session:
        """A new open session on ``model`` (None: the served default); :class:`Overloaded` when full.
        The runner is resolved and the session registered under one lock, the one :meth:`sessions`
        takes: a model repository reaping a version that a reload retired asks :meth:`sessions`, so it
        either ran before (and the resolve sees the new version) or sees this session."""
        with self._lock:
            runner = self.resolve(model, version)
            if len(self._sessions) >= self.limits.max_sessions:
                raise Overloaded(f"{len(self._sessions)} sessions are open, the limit is {self.limits.max_sessions}; "
                                 "close finished sessions (DELETE /v1/sessions/{id}) or retry later",
                                 retry_after_s=5)
            session = Session(secrets.token_hex(8), runner, options=options, expected_frames=expected_frames,
                              bounds=bounds, max_tiles=self.limits.max_canvas_tiles,
                              max_frames=self.limits.max_scan_frames, refine_workers=self.limits.refine_workers,
                              max_refine_bytes=self.limits.max_refine_bytes, clock=self._clock)
            self._sessions[session.id] = session
        log.info("session %s opened on %s v%s", session.id, session.bundle.name, session.bundle.version)
        self._start_reaper()
        return session

    def get(self, session_id: str) -> Session:
        """The open session ``session_id``, or :class:`SessionNotFound` saying why it is gone."""
        session = self._sessions.get(session_id)
        if session is None:
            why = self._closed.get(session_id)
            detail = f"it was {why}" if why else "no session has that id"
            raise SessionNotFound(f"session `{session_id}` is not open ({detail}); create one with POST /v1/sessions")
        return session

    def sessions(self) -> list[Session]:
        """The open sessions (each pins its runner until it closes)."""
        with self._lock:
            return list(self._sessions.values())

    def totals(self) -> dict[str, int]:
        """Frames received, reconstructed and rejected by every session since the manager started."""
        with self._lock:
            totals = dict(self._closed_totals)
            sessions = list(self._sessions.values())
        for session in sessions:
            counts = session.counts()
            for key in totals:
                totals[key] += counts[key]
        return totals

    # ------------------------------------------------------------------ data in

    async def add_frames(self, session: Session, indices: npt.ArrayLike, patterns: npt.ArrayLike,
                         positions: npt.ArrayLike | None = None) -> Receipt:
        """:meth:`Session.add_frames` under the pending-frames limit (:class:`Overloaded`, nothing kept),
        off the event loop; frames it pairs are pumped to inference."""
        receipt = await run_in_threadpool(self._add_frames_within_limit, session, indices, patterns, positions)
        if receipt.paired:
            self._pumps.start(session)
        return receipt

    async def add_positions(self, session: Session, indices: npt.ArrayLike, positions: npt.ArrayLike) -> Receipt:
        """:meth:`Session.add_positions` off the event loop; frames it pairs are pumped to inference."""
        receipt = await run_in_threadpool(session.add_positions, indices, positions)
        if receipt.paired:
            self._pumps.start(session)
        return receipt

    def _add_frames_within_limit(self, session: Session, indices: npt.ArrayLike, patterns: npt.ArrayLike,
                                 positions: npt.ArrayLike | None) -> Receipt:
        count = len(patterns)  # type: ignore[arg-type]
        with self._lock:
            pending = sum(s.pending for s in self._sessions.values())
            if pending + count > self.limits.max_pending_frames:
                raise Overloaded(f"{pending} frames are waiting for inference or positions and these {count} would "
                                 f"pass the limit of {self.limits.max_pending_frames}; resend this message shortly "
                                 "(and send the positions of frames already sent)")
            return session.add_frames(indices, patterns, positions)

    # ------------------------------------------------------------------ closing

    async def close(self, session: Session, *, cancel: bool = False) -> Reconstruction:
        """Close ``session`` and return its final object. Without ``cancel`` further messages are refused,
        the frames already paired are inferred and stitched, and a refining session runs its final
        refinement round; with it (or when this coroutine is cancelled), queued work is dropped and the
        refinement stopped at once."""
        reason = "cancelled"
        try:
            if not cancel:
                session.stop_intake()
                await self._pumps.drain(session)
                await asyncio.wrap_future(session.finish_refinement())
                reason = "deleted"
        finally:
            self._forget(session, reason)
        return await run_in_threadpool(session.reconstruction)

    def _forget(self, session: Session, reason: str) -> None:
        """Close ``session`` for ``reason`` and drop it from the registry (once: a session closed already,
        e.g. by a shutdown while its close ran, keeps its first reason)."""
        session.close(reason)
        counts = session.counts()
        with self._lock:
            if self._sessions.pop(session.id, None) is None:
                return
            for key in self._closed_totals:
                self._closed_totals[key] += counts[key]
            self._closed[session.id] = session.closed or reason
            while len(self._closed) > _CLOSED_KEPT:
                self._closed.popitem(last=False)
        self._pumps.stop(session)
        log.info("session %s closed (%s)", session.id, session.closed)

    def expire_idle(self) -> list[str]:
        """Close sessions idle for longer than ``idle_timeout_s``; returns their ids."""
        now = self._clock()
        idle = [s for s in self.sessions()  # a closing session is finishing its last frames and refinement
                if now - s.last_activity > self.limits.idle_timeout_s and not self._pumps.running(s) and not s.closing]
        for session in idle:
            self._forget(session, "expired")
        return [s.id for s in idle]

    def _start_reaper(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # called outside the event loop (a test): expiry is then the caller's job
            return
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="session-reaper")

    async def _reap(self) -> None:
        period = min(max(self.limits.idle_timeout_s / 4, 0.05), 10.0)
        while self._sessions:
            await asyncio.sleep(period)
            self.expire_idle()

    async def shutdown(self) -> None:
        """Cancel every session (server shutdown) and wait (at most :data:`_REFINER_JOIN_S`) for their
        refinement threads to stop."""
        sessions = self.sessions()
        for session in sessions:
            self._forget(session, "cancelled at server shutdown")
        if self._reaper is not None:
            self._reaper.cancel()
        await run_in_threadpool(_join_refiners, sessions, _REFINER_JOIN_S)


def _join_refiners(sessions: list[Session], timeout_s: float) -> None:
    """Wait for the refinement threads of ``sessions`` (cancelled) to end, ``timeout_s`` in all."""
    deadline = time.monotonic() + timeout_s
    for session in sessions:
        if session.refiner is not None and not session.refiner.join(max(0.0, deadline - time.monotonic())):
            log.warning("session %s: its refinement did not stop within %.0f s", session.id, timeout_s)

