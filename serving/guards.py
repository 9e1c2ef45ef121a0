"""Who may talk to the server, how many at once, and what happens when a client leaves.

- :class:`AccessGuard` (ASGI middleware): without a token only loopback clients are served unless
  the operator allows remote ones, and the ``Host`` header must name this server (a browser page on
  another site cannot reach a loopback server through DNS rebinding). Refusals are 403.
- :class:`Admission`: a bound on the requests in progress per route kind, checked **before** the
  body is read, so an overloaded server answers 503 at once instead of buffering more bodies.
- :func:`cancel_on_disconnect`: runs a request's work and cancels it when the client hangs up;
  :class:`CancellableRunner` lets the cancellation reach work already waiting in the batcher.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ptycho_torch.errors import ConfigError
from serving.batching import DynamicBatcher
from serving.errors import ClientGone, Overloaded

__all__ = ["LOOPBACK_HOSTS", "AccessGuard", "Admission", "CancellableRunner", "cancel_on_disconnect"]

log = logging.getLogger(__name__)

T = TypeVar("T")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
"""``Host`` header names that mean this machine."""


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """``Host`` header without its port: ``example:8000`` -> ``example``, ``[::1]:80`` -> ``[::1]``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class AccessGuard:
    """Refuse (403) remote clients unless ``allow_remote``, and ``Host`` headers not in ``allowed_hosts``
    (None: any host; ``"*"`` in the list also means any)."""

    def __init__(self, app: ASGIApp, *, allow_remote: bool, allowed_hosts: Iterable[str] | None) -> None:
        self.app = app
        self.allow_remote = allow_remote
        hosts = None if allowed_hosts is None else {h.strip().lower() for h in allowed_hosts}
        self.allowed_hosts = None if hosts is None or "*" in hosts else hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        message = None
        if not self.allow_remote and not _is_loopback(client[0] if client else None):
            message = (f"this server answers only clients on its own machine (the client is {client[0] if client else '?'});"
                       " the operator can serve remote clients with a token (--token-file) or --allow-remote")
        elif self.allowed_hosts is not None:
            host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
            if _host_name(host) not in self.allowed_hosts:
                message = (f"the Host header {host!r} does not name this server (allowed: "
                           f"{sorted(self.allowed_hosts)}); connect by one of those names, or the operator adds "
                           "it with --allowed-hosts")
        if message is None:
            await self.app(scope, receive, send)
            return
        log.warning("refused %s: %s", client, message)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class Admission:
    """At most ``limit`` requests of one kind in progress; the next is refused with 503 at once."""

    def __init__(self, kind: str, limit: int, knob: str) -> None:
        if not (isinstance(limit, int) and limit >= 1):
            raise ConfigError(f"`{knob}` must be a positive integer, got {limit!r}")
        self.kind, self.limit, self.knob = kind, limit, knob
        self.in_progress = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the request (event-loop only, so no lock), or raise :class:`Overloaded`."""
        if self.in_progress >= self.limit:
            raise Overloaded(f"{self.in_progress} {self.kind} requests are in progress, the limit ({self.knob}); "
                             "retry shortly")
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T], on_disconnect: Callable[[], None] | None = None) -> T:
    """Await ``work`` (its body already read); if the client hangs up first, call ``on_disconnect``,
    cancel ``work`` and raise :class:`ClientGone`."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    if on_disconnect is not None:
        on_disconnect()
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a thread may finish it later
    raise ClientGone("the client closed the connection before the answer was ready; its work was cancelled")


class CancellableRunner:
    """A :class:`DynamicBatcher` runner whose waiting work :meth:`cancel` withdraws from the queue."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self.batcher = batcher
        self.model = batcher.model
        self._lock = threading.Lock()
        self._cancelled = False
        self._future: Future[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] | None = None

    def infer(self, diffraction: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]
              ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        with self._lock:
            if self._cancelled:
                raise ClientGone("the client closed the connection; inference was not started")
            self._future = self.batcher.submit(diffraction, scale)
        try:
            return self._future.result()
        except CancelledError:
            raise ClientGone("the client closed the connection; its inference was cancelled") from None

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._future is not None:
                self._future.cancel()
