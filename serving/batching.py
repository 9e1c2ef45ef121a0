"""Dynamic batching with Triton's knobs: merge items of concurrent requests into model batches.

One worker thread per engine. Requests wait in a FIFO queue; the worker takes items from the oldest
requests until it has ``max_batch_size`` of them (then it runs at once) or until the oldest waiting
item has waited ``max_queue_delay_us`` (then it runs what it has). A request larger than one batch
is spread over several batches; a batch can hold the tail of one request and the head of the next.
Results are written back into each request's own output arrays, so every caller gets its items in
its own order. ``max_queue_size`` bounds the requests waiting; past it :meth:`submit` raises
:class:`~serving.errors.Overloaded` (HTTP 503 + Retry-After) instead of growing latency without
bound. An exception while running a batch fails every request that had items in it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ptycho_torch.errors import ConfigError
from serving.config import DEFAULTS, ServingConfig
from serving.engine import Engine
from serving.errors import DeadlineExceeded, Overloaded, Unavailable

if TYPE_CHECKING:
    from ptycho_torch.model_facts import ModelFacts

__all__ = ["BatchObserver", "DynamicBatcher"]

log = logging.getLogger(__name__)

Outputs = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
BatchObserver = Callable[[int, list[float], float], None]
"""``observer(batch_size, queue_seconds_of_requests_started, compute_seconds)``, called per batch."""


@dataclass(eq=False)
class _Request:
    diffraction: npt.NDArray[np.float32]
    scale: npt.NDArray[np.float32]
    future: Future[Outputs]
    enqueued: float
    taken: int = 0  # items handed to a batch so far
    done: int = 0  # items whose results are written
    outputs: Outputs | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.scale)


def _deliver(future: Future[Outputs], *, result: Outputs | None = None, error: BaseException | None = None) -> None:
    """Complete ``future`` unless its caller cancelled it meanwhile (then the answer has nobody to go to)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass


class DynamicBatcher:
    """Batch concurrent :meth:`infer` calls on one :class:`~serving.engine.Engine`.

    ``max_batch_size`` defaults to the engine's (a batch never exceeds it, so every batch is a shape
    the engine warmed up). ``max_queue_delay_us``: how long the oldest waiting item may wait for
    others to join (Triton's ``max_queue_delay_microseconds``; 0 = run whatever is waiting).
    ``max_queue_size``: most requests waiting before :class:`Overloaded`. ``max_queue_wait_s``: a
    request none of whose items ran within this many seconds is answered :class:`DeadlineExceeded`
    (None: no deadline). A closed batcher refuses new work with :class:`Unavailable`. Defaults:
    :data:`serving.config.DEFAULTS`; :meth:`from_config` reads a whole :class:`~serving.config.ServingConfig`.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch_size: int | None = None,
        max_queue_delay_us: int = DEFAULTS.max_queue_delay_us,
        max_queue_size: int = DEFAULTS.max_queue_size,
        max_queue_wait_s: float | None = DEFAULTS.max_queue_wait_s,
        observer: BatchObserver | None = None,
    ) -> None:
        max_batch_size = engine.max_batch_size if max_batch_size is None else max_batch_size
        if not (isinstance(max_batch_size, int) and 1 <= max_batch_size <= engine.max_batch_size):
            raise ConfigError(
                f"`max_batch_size` must be an integer in [1, {engine.max_batch_size}] (the engine's warmed-up "
                f"maximum), got {max_batch_size!r}; build the Engine with a larger max_batch_size"
            )
        if not (isinstance(max_queue_delay_us, int) and max_queue_delay_us >= 0):
            raise ConfigError(f"`max_queue_delay_us` must be a non-negative integer, got {max_queue_delay_us!r}")
        if not (isinstance(max_queue_size, int) and max_queue_size >= 1):
            raise ConfigError(f"`max_queue_size` must be a positive integer, got {max_queue_size!r}")
        if max_queue_wait_s is not None and not max_queue_wait_s > 0:
            raise ConfigError(f"`max_queue_wait_s` must be a positive number of seconds or None, got {max_queue_wait_s!r}")
        self.engine = engine
        self.bundle = engine.bundle
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_us * 1e-6
        self.max_queue_size = max_queue_size
        self.max_queue_wait_s = max_queue_wait_s
        self.observer = observer
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name=f"batcher-{engine.bundle.name}", daemon=True)
        self._worker.start()

    @classmethod
    def from_config(cls, engine: Engine, config: ServingConfig, observer: BatchObserver | None = None) -> DynamicBatcher:
        """The batcher of ``engine`` with ``config``'s queue knobs; batches of at most ``config.max_batch_size``
        and the engine's own (an engine built for fewer is not refused)."""
        return cls(engine, max_batch_size=min(config.max_batch_size, engine.max_batch_size),
                   max_queue_delay_us=config.max_queue_delay_us, max_queue_size=config.max_queue_size,
                   max_queue_wait_s=config.max_queue_wait_s, observer=observer)

    def submit(self, diffraction: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]) -> Future[Outputs]:
        """Queue ``diffraction`` ``(B, C, N, N)`` and ``scale`` ``(B,)``; the future gives ``(amplitude, phase)``."""
        self.engine.check_inputs(diffraction, scale)
        future: Future[Outputs] = Future()
        request = _Request(diffraction, scale, future, time.perf_counter())
        if request.size == 0:
            empty = np.empty((0, *self.engine.input_shape), np.float32)
            future.set_result((empty, empty.copy()))
            return future
        with self._cond:
            if self._closed:
                raise Unavailable("the inference queue is closed: the server is shutting down or reloading the "
                                  "model; retry shortly")
            if len(self._queue) >= self.max_queue_size:
                raise Overloaded(
                    f"the inference queue is full ({self.max_queue_size} requests waiting); retry shortly, "
                    f"or raise --max-queue-size / add replicas"
                )
            self._queue.append(request)
            self._cond.notify()
        return future

    def infer(self, diffraction: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]) -> Outputs:
        """Blocking :meth:`submit`: ``(amplitude, phase)`` ``(B, C, N, N)``."""
        return self.submit(diffraction, scale).result()

    @property
    def model(self) -> ModelFacts:
        """The served model's facts (what the pipeline's :class:`~ptycho_torch.pipeline.Runner` has)."""
        return self.bundle.facts

    @property
    def running(self) -> bool:
        """True until :meth:`close` (and while the worker thread lives)."""
        return not self._closed and self._worker.is_alive()

    def queue_length(self) -> int:
        """Requests waiting (not yet fully handed to a batch)."""
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Finish the queued work, then stop the worker thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join()

    def _collect(self) -> list[tuple[_Request, int, int]] | None:
        """Wait for work and return ``[(request, start, stop), ...]`` slices of one batch (None: closed)."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            self._drop_unservable()
            if not self._queue:
                return []
            deadline = self._queue[0].enqueued + self.max_queue_delay_s
            while not self._closed:
                waiting = sum(r.size - r.taken for r in self._queue)
                remaining = deadline - time.perf_counter()
                if waiting >= self.max_batch_size or remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._drop_unservable()
            slices, room = [], self.max_batch_size
            while self._queue and room:
                request = self._queue[0]
                stop = min(request.size, request.taken + room)
                slices.append((request, request.taken, stop))
                room -= stop - request.taken
                request.taken = stop
                if request.taken == request.size:
                    self._queue.popleft()
            return slices

    def _drop_unservable(self) -> None:
        """Forget requests whose caller cancelled them (a client that hung up), and answer
        :class:`DeadlineExceeded` (504) to those that waited past ``max_queue_wait_s`` before any of
        their items ran: no compute for either."""
        now, wait = time.perf_counter(), self.max_queue_wait_s
        late = [r for r in self._queue if wait is not None and r.taken == 0 and now - r.enqueued > wait]
        for request in late:
            _deliver(request.future, error=DeadlineExceeded(
                f"the request waited {now - request.enqueued:.3f} s in the inference queue, over the server's "
                f"deadline of {wait:g} s (--max-queue-wait-s); it was not run: retry, or send smaller requests"))
        if late or any(r.future.cancelled() for r in self._queue):
            self._queue = deque(r for r in self._queue if not r.future.done())

    def _loop(self) -> None:
        while (slices := self._collect()) is not None:
            if slices:
                self._run_batch(slices)

    def _run_batch(self, slices: list[tuple[_Request, int, int]]) -> None:
        started = time.perf_counter()
        queue_s = [started - r.enqueued for r, start, _ in slices if start == 0]
        if len(slices) == 1:
            request, start, stop = slices[0]
            diffraction, scale = request.diffraction[start:stop], request.scale[start:stop]
        else:
            diffraction = np.concatenate([r.diffraction[a:b] for r, a, b in slices])
            scale = np.concatenate([r.scale[a:b] for r, a, b in slices])
        try:
            amplitude, phase = self.engine.run(diffraction, scale)
        except Exception as error:
            log.exception("batch of %d items failed", len(scale))
            for request, _, _ in slices:
                _deliver(request.future, error=error)
            return
        compute_s = time.perf_counter() - started
        offset = 0
        for request, start, stop in slices:
            if request.future.done():  # failed in an earlier batch
                offset += stop - start
                continue
            if request.outputs is None:
                if start == 0 and stop == request.size:  # whole request in this batch: hand out views
                    request.outputs = (amplitude[offset:offset + stop], phase[offset:offset + stop])
                else:
                    shape = request.diffraction.shape
                    request.outputs = (np.empty(shape, np.float32), np.empty(shape, np.float32))
            if not (start == 0 and stop == request.size):
                request.outputs[0][start:stop] = amplitude[offset:offset + stop - start]
                request.outputs[1][start:stop] = phase[offset:offset + stop - start]
            offset += stop - start
            request.done += stop - start
            if request.done == request.size:
                _deliver(request.future, result=request.outputs)
        if self.observer is not None:
            try:
                self.observer(len(scale), queue_s, compute_s)
            except Exception:
                log.exception("batch observer failed")
