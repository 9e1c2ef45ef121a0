"""Per-request access log lines with request ids (the ``serving.access`` logger).

Every HTTP request gets an id: the client's ``X-Request-ID`` header when it sends a sane one (so a
proxy's or client's id follows the request through the logs), else a new random one. The id is echoed
in the response's ``X-Request-ID`` header and in one log line when the response is complete::

    request_id=3f9c... client=127.0.0.1 method=POST path=/v2/models/ptychopinn/infer status=200
    duration_ms=12.3 bytes_in=65712 bytes_out=65660 model=ptychopinn version=2

``model``/``version`` are the version that served the request (``-`` where none did). The same
status and duration go to an optional ``observe(route, status, seconds)`` callback (the request
metrics), so one wrapper reads the status and times the request for both.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REQUEST_ID_HEADER", "AccessLog"]

log = logging.getLogger("serving.access")

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class AccessLog:
    """ASGI middleware: request id in, request id out, one ``serving.access`` line per HTTP request;
    ``observe(route, status, seconds)``, if given, also gets each finished request (``route``: the
    matched route template, ``"unmatched"`` where none matched)."""

    def __init__(self, app: ASGIApp, observe: Callable[[str, int, float], None] | None = None) -> None:
        self.app, self.observe = app, observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = given if _SANE_ID.fullmatch(given) else secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        start, status, bytes_in, bytes_out = time.perf_counter(), 500, 0, 0

        async def counting_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            bytes_in += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal status, bytes_out
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), request_id.encode())]
            elif message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            seconds = time.perf_counter() - start
            if self.observe is not None:
                self.observe(getattr(scope.get("route"), "path", "unmatched"), status, seconds)
            model = scope["state"].get("model")
            client = scope.get("client") or ("-", 0)
            log.info("request_id=%s client=%s method=%s path=%s status=%d duration_ms=%.1f bytes_in=%d bytes_out=%d "
                     "model=%s version=%s", request_id, client[0], scope["method"], scope["path"], status,
                     seconds * 1e3, bytes_in, bytes_out,
                     getattr(model, "name", "-"), getattr(model, "version", "-"))
