"""``/v1/sessions``: create, feed, watch and close live scan sessions; ``/ui``: the browser viewer.

HTTP routes go through the app's token check (``dependencies`` when the router is included). The
WebSocket and the viewer page check the token themselves: a browser cannot set headers on a
WebSocket, so ``?token=`` is accepted there too. The viewer page holds no data and no secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Set as AbstractSet
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from ptycho_torch.pipeline import Reconstruction
from ptycho_torch.plan import ReconstructOptions
from serving import openapi
from serving.errors import SessionNotFound
from serving.npz_wire import RECONSTRUCT_MEDIA_TYPE, decode_arrays, encode_reconstruction
from serving.sessions.manager import SessionManager
from serving.sessions.session import Session
from serving.sessions.wire import encode_update

__all__ = ["CreateSession", "session_routes", "viewer_routes"]

_MAX_HZ = 30.0


class CreateSession(BaseModel):
    """Body of ``POST /v1/sessions``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = None
    """Model name (None: the served default)."""
    version: str | None = None
    """Model version (None: the current one); the session keeps it for its whole life."""
    options: Annotated[dict[str, Any], WithJsonSchema(openapi.schema_ref(ReconstructOptions))] = Field(
        default_factory=dict)
    """As for /v1/reconstruct, checked by the same :meth:`ReconstructOptions.from_mapping` (published as
    their typed schema); ``scale_policy`` defaults to ``bundle`` and ``scan`` is refused."""
    expected_frames: int | None = None
    bounds: list[list[float]] | None = None
    """``[[x_lo, x_hi], [y_lo, y_hi]]`` object pixels every position lies in."""


def _model_json(session: Session) -> dict[str, str]:
    return {"name": session.bundle.name, "version": str(session.bundle.version)}


def _npz_object(session: Session, result: Reconstruction) -> Response:
    content = encode_reconstruction(result, {"model_name": session.bundle.name,
                                             "model_version": session.bundle.version, "session_id": session.id})
    return Response(content, media_type=RECONSTRUCT_MEDIA_TYPE)


def session_routes(manager: SessionManager, read_body: Any, max_uncompressed_bytes: int) -> APIRouter:
    """The HTTP routes; ``read_body(request)`` reads a body under the server's size limit."""
    router = APIRouter()

    async def read_arrays(request: Request, what: str, *, required: set[str],
                          optional: AbstractSet[str] = frozenset()) -> dict[str, Any]:
        """The NPZ body's arrays (``decode_arrays``' checks), read under the size limit, decoded off the loop."""
        body = await read_body(request)
        return await run_in_threadpool(decode_arrays, body, required=required, optional=optional, what=what,
                                       max_uncompressed_bytes=max_uncompressed_bytes)

    @router.post("/v1/sessions", status_code=201)
    async def create(request: CreateSession) -> dict[str, Any]:
        options = ReconstructOptions.from_mapping(request.options)
        session = manager.create(request.model, request.version, options=options,
                                 expected_frames=request.expected_frames, bounds=request.bounds)
        return {"session_id": session.id, "model": _model_json(session)}

    @router.get("/v1/sessions")
    async def list_sessions() -> dict[str, Any]:
        return {"sessions": [{"session_id": s.id, "model": _model_json(s), "counts": s.counts()}
                             for s in manager.sessions()]}

    @router.post("/v1/sessions/{session_id}/frames", status_code=202, openapi_extra=openapi.npz_body(
        "`indices` (F,) int frame numbers, `patterns` (F, N, N) real, optional `positions` (F, 2) [x, y] pixels"))
    async def frames(session_id: str, request: Request) -> dict[str, Any]:
        session = manager.get(session_id)
        arrays = await read_arrays(request, "frames", required={"indices", "patterns"}, optional={"positions"})
        receipt = await manager.add_frames(session, arrays["indices"], arrays["patterns"], arrays.get("positions"))
        return receipt.to_json()

    @router.post("/v1/sessions/{session_id}/positions", status_code=202, openapi_extra=openapi.npz_body(
        "`indices` (F,) int frame numbers, `positions` (F, 2) float [x, y] object pixels"))
    async def positions(session_id: str, request: Request) -> dict[str, Any]:
        session = manager.get(session_id)
        arrays = await read_arrays(request, "positions", required={"indices", "positions"})
        receipt = await manager.add_positions(session, arrays["indices"], arrays["positions"])
        return receipt.to_json()

    @router.get("/v1/sessions/{session_id}")
    async def status(session_id: str) -> dict[str, Any]:
        return manager.get(session_id).status()

    @router.get("/v1/sessions/{session_id}/object", responses=openapi.NPZ_RESPONSE)
    async def current_object(session_id: str) -> Response:
        session = manager.get(session_id)
        return _npz_object(session, await run_in_threadpool(session.reconstruction))

    @router.delete("/v1/sessions/{session_id}", responses=openapi.NPZ_RESPONSE)
    async def close(session_id: str, cancel: bool = False) -> Response:
        """Close the session and return its object (NPZ, as `/v1/reconstruct` answers). Without `cancel` the
        frames already sent are stitched and a refining session runs its final round (the refinement asked
        for: `refinement` is that round's, with the solver's `stop_reason`); with `cancel=true` it stops at
        once: `refinement` is the last round shown, with `stop_reason` 'cancelled', `stopped` saying what
        ran (a live round refines the object alone) and `asked` the refinement asked for."""
        session = manager.get(session_id)
        return _npz_object(session, await manager.close(session, cancel=cancel))

    return router


def viewer_routes(manager: SessionManager, token: str | None) -> APIRouter:
    """The WebSocket updates and the ``/ui`` page (their own token check, see the module docstring)."""
    router = APIRouter()

    @router.websocket("/v1/sessions/{session_id}/updates")
    async def updates(websocket: WebSocket, session_id: str,
                      max_hz: float = Query(5.0, gt=0, le=_MAX_HZ)) -> None:
        if token is not None and not _token_ok(websocket.headers.get("authorization"),
                                                websocket.query_params.get("token"), token):
            await websocket.close(code=1008, reason="a bearer token is required (header or ?token=)")
            return
        try:
            session = manager.get(session_id)
        except SessionNotFound as error:
            await websocket.close(code=1008, reason=error.message[:120])
            return
        await websocket.accept()
        await _push_updates(websocket, session, 1.0 / max_hz)

    @router.get("/ui", response_class=HTMLResponse)
    async def viewer() -> HTMLResponse:
        return HTMLResponse(_VIEWER_HTML)

    return router


_VIEWER_HTML = resources.files("serving.sessions").joinpath("viewer.html").read_text(encoding="utf-8")


def _token_ok(header: str | None, query: str | None, token: str) -> bool:
    given = query
    if header:
        scheme, _, value = header.partition(" ")
        given = value.strip() if scheme.lower() == "bearer" else None
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


async def _push_updates(websocket: WebSocket, session: Session, period_s: float) -> None:
    """Send the changed region at most every ``period_s`` until the session closes or the client leaves."""
    watch = session.watch()
    listener = asyncio.create_task(_until_disconnect(websocket))
    try:
        while not listener.done():
            closed = session.closed  # read first: a session closes only after its last stitch
            if watch.event.is_set():
                update = await run_in_threadpool(session.take_update, watch)
                if update is not None:
                    _, canvas, header = update
                    await websocket.send_bytes(await run_in_threadpool(encode_update, header, canvas))
            if closed is not None:
                await websocket.send_json({"type": "closed", "reason": session.closed, "counts": session.counts()})
                await websocket.close()
                return
            await asyncio.sleep(period_s)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away
    finally:
        session.unwatch(watch)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener


async def _until_disconnect(websocket: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
