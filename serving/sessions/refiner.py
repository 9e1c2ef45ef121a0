"""The refinement thread of one live session: rounds while frames arrive, the final round at the end.

One thread per refining session (started by its first stitched frame), running one
:class:`~serving.sessions.live_refinement.LiveRefinement` round at a time on ``settings.workers`` CPU
threads. Rounds follow each other while they still improve the data fit (the amplitude error fell
by at least :data:`~ptycho_torch.refinement.solver.AUTO_TOLERANCE` over the round) or new frames were
stitched; otherwise the thread waits for the next frame. A round takes its input from the session
(``take``, under the session's lock: a snapshot) and hands its result back (``show``, under the lock:
the canvas shows it), so the session's lock is never held while the solver runs, and a message
never waits for a round. :meth:`Refiner.finish` asks for the final round (the plan's settings over
the whole scan, warm-started from the last round; a live round in progress stops at its next
iteration); :meth:`Refiner.cancel` stops whatever runs at its next iteration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from contextlib import closing
from typing import Any

from ptycho_torch.refinement import Refinement
from ptycho_torch.refinement.solver import AUTO_TOLERANCE
from serving.sessions.live_refinement import LiveRefinement, Round, RoundInput, RoundResult

__all__ = ["SHOW_EVERY_S", "Refiner"]

log = logging.getLogger(__name__)

SHOW_EVERY_S = 1.0
"""The final round shows its object this often while it runs (a live round shows it when it ends)."""


class Refiner:
    """Refine a session's frames in the background: ``take()`` gives the frames and network canvas so far
    (None once the session is closed), ``show(result)`` hands a round's state to the session."""

    def __init__(self, live: LiveRefinement, take: Callable[[], RoundInput | None],
                 show: Callable[[RoundResult], None], *, name: str) -> None:
        self.live, self._take, self._show, self._name = live, take, show, name
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cancelled = False
        self._ended = False  # the thread is past its last look at _final
        self._final: Future[RoundResult | None] | None = None
        self.state = "waiting"
        """``waiting`` (for frames), ``refining``, ``finishing`` (the final round), ``done``, ``cancelled`` or ``failed``."""
        self.iterations = 0
        """Iterations run over all rounds."""
        self.error: str | None = None
        """Why the refinement failed (then the canvas keeps the last object shown)."""

    def notify(self) -> None:
        """New frames are on the canvas: start the thread (the first time), wake it."""
        with self._start_lock:
            if self._thread is None and not self._cancelled and self._final is None:
                self._thread = threading.Thread(target=self._run, name=f"refine-{self._name}", daemon=True)
                self._thread.start()
        self._wake.set()

    def finish(self) -> Future[RoundResult | None]:
        """Ask for the final round; the future gives its result (None when nothing was refined, or the
        refinement was cancelled or failed), never an exception."""
        with self._start_lock:
            if self._final is None:
                self._final = Future()
                if self._thread is None or self._ended or self._cancelled:
                    self._final.set_result(None)
        self._wake.set()
        return self._final

    def cancel(self) -> None:
        """Stop at the next iteration (the session closed); a pending :meth:`finish` gives None."""
        with self._start_lock:
            self._cancelled = True
            if self._thread is None and self._final is not None and not self._final.done():
                self._final.set_result(None)
        self._wake.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; whether it has."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def progress(self) -> dict[str, Any]:
        """The status's ``refinement`` part: ``state``, ``rounds``, ``iterations``, ``error``."""
        return {"state": self.state, "rounds": self.live.rounds, "iterations": self.iterations, "error": self.error}

    def _run(self) -> None:
        final: RoundResult | None = None
        busy = False  # the last round asks for another
        try:
            while True:
                if not busy:
                    self._wake.wait()
                if self._cancelled:
                    break
                if self._final is not None:
                    final = self._final_round()
                    break
                self._wake.clear()  # frames stitched from here on wake the next round
                self.state = "refining"
                # finish() and cancel() set their flag before the event: checked after the clear, none is lost
                busy = self._live_round() or self._final is not None or self._cancelled
                if not busy:
                    self.state = "waiting"  # nothing new and the fit stopped improving: wait for frames
        except Exception as error:  # a failed refinement leaves the canvas as last shown
            log.exception("session %s: refinement failed", self._name)
            self.error, self.state = f"{type(error).__name__}: {error}", "failed"
        finally:
            if self._cancelled and self.state not in ("failed", "done"):
                self.state = "cancelled"
            with self._start_lock:
                self._ended = True
                if self._final is not None and not self._final.done():
                    self._final.set_result(final)  # None unless the final round ran to its end

    def _live_round(self) -> bool:
        """One live round over the frames so far (it stops early when the final one is asked for);
        whether another should follow (the fit still improved, or new frames came)."""
        given = self._take()
        if given is None:
            return False
        done = self.live.prepare(given, final=False)
        with closing(self._iterate(done)) as states:
            for _ in states:
                if self._final is not None:
                    break
        if done.last is None:
            return False
        self.live.keep(done)
        self._show(done.result())
        history = done.last.history
        first, last = history[0]["amplitude_error"], history[-1]["amplitude_error"]
        return first - last >= AUTO_TOLERANCE * first or self._wake.is_set()

    def _final_round(self) -> RoundResult | None:
        """The plan's settings over the whole scan, warm-started; shown every :data:`SHOW_EVERY_S` and at the end."""
        self.state = "finishing"
        given = self._take()
        if given is None:
            return None
        done = self.live.prepare(given, final=True)
        shown = time.monotonic()
        with closing(self._iterate(done)) as states:
            for _ in states:
                if time.monotonic() - shown > SHOW_EVERY_S:
                    self._show(done.result())
                    shown = time.monotonic()
        if self._cancelled or done.last is None:
            return None
        result = done.result()
        self._show(result)
        self.state = "done"
        return result

    def _iterate(self, done: Round) -> Generator[Refinement, None, None]:
        """``done``'s states until it ends or the session is cancelled (counting the iterations)."""
        with closing(done.steps()) as steps:
            for state in steps:
                if state.iteration:
                    self.iterations += 1
                yield state
                if self._cancelled:
                    return
