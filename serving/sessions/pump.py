"""The inference pump of live sessions: paired frames through each session's pinned runner onto its canvas.

One asyncio task per session, started when a message pairs frames and ending when none are left
(or the session closes). Batches go to the session's runner (the server's dynamic batcher, so they
merge across sessions and ``/v1/reconstruct`` requests) with up to two in flight, and are stitched
in the thread pool. A full inference queue puts the batch back at the head of the session's queue;
a failed batch rejects its frames with the reason. Cancelling a pump cancels its queued batches
too: the batcher drops them without computing them. A session whose plan refines from a flat object
skips the network (as a whole-scan request does): its batches are stitched as flat patches.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.concurrency import run_in_threadpool

from serving.errors import Overloaded
from serving.sessions.session import Session, Work

__all__ = ["Pumps"]

_IN_FLIGHT_BATCHES = 2
"""Batches of one session in inference at once: the next is queued while the last is stitched."""
_RETRY_S = 0.02
"""Wait before offering a batch again to a full inference queue."""


class Pumps:
    """The pump task of each session (by id); call on the event loop."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, session: Session) -> None:
        """Make sure a pump runs for ``session``."""
        if not self.running(session):
            self._tasks[session.id] = asyncio.create_task(_pump(session), name=f"session-{session.id}")

    def running(self, session: Session) -> bool:
        task = self._tasks.get(session.id)
        return task is not None and not task.done()

    async def drain(self, session: Session) -> None:
        """Wait until ``session``'s paired frames are on its canvas (a pump started meanwhile included)."""
        while (task := self._tasks.get(session.id)) is not None and not task.done():
            await asyncio.shield(task)

    def stop(self, session: Session) -> None:
        """Cancel ``session``'s pump, if one runs, and forget it."""
        task = self._tasks.pop(session.id, None)
        if task is not None and not task.done():
            task.cancel()


async def _pump(session: Session) -> None:
    """Infer and stitch ``session``'s paired frames until none are left (or it closes)."""
    size = int(getattr(session.runner, "max_batch_size", 64))
    in_flight: list[tuple[Work, asyncio.Future[Any]]] = []
    try:
        while True:
            await _submit(session, size, in_flight)
            if not in_flight:
                if not session.has_ready:
                    return
                continue  # the inference queue was full: try again
            work, future = in_flight.pop(0)
            try:
                outputs: Any = await future
            except Exception as error:  # noqa: BLE001 - recorded as the frames' rejection reason
                outputs = error
            await run_in_threadpool(session.finish_work, work, outputs)
    finally:
        for _, future in in_flight:
            future.cancel()


async def _submit(session: Session, size: int, in_flight: list[tuple[Work, asyncio.Future[Any]]]) -> None:
    """Hand batches of up to ``size`` paired frames to inference until ``_IN_FLIGHT_BATCHES`` are in flight,
    none are ready, or the inference queue is full."""
    while len(in_flight) < _IN_FLIGHT_BATCHES and (work := session.take_work(size)) is not None:
        if not session.plan.run_network:
            await run_in_threadpool(session.finish_work, work, work.flat_outputs())
            continue
        try:
            future = asyncio.wrap_future(session.runner.submit(work.diffraction, work.scale))
        except Overloaded:
            session.requeue(work)
            if not in_flight:
                await asyncio.sleep(_RETRY_S)
            return
        except Exception as error:  # noqa: BLE001 - recorded as the frames' rejection reason
            await run_in_threadpool(session.finish_work, work, error)
            continue
        in_flight.append((work, future))
