"""Triton's HTTP extensions tools call: model configuration, statistics and the model repository.

- ``GET /v2/models/{m}[/versions/{v}]/config``: the model configuration (JSON form of ``config.pbtxt``);
- ``GET /v2/models/stats``, ``/v2/models/{m}[/versions/{v}]/stats``: inference statistics;
- ``POST /v2/repository/index``: every model and version with its state;
- ``POST /v2/repository/models/{m}/load``, ``/unload``: (re)load or stop serving a model while serving.

Bodies and answers are Triton's, so ``tritonclient.http`` (``get_model_config``,
``get_inference_statistics``, ``get_model_repository_index``, ``load_model``, ``unload_model``) works
unchanged. Loading reads bundles from disk (checksums, graph checks, warm-up), so it runs in the thread
pool; a load that fails answers 400 and leaves the served versions as they were.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from serving.errors import InvalidRequest
from serving.repository import ModelRepository

__all__ = ["repository_routes"]


async def _options(request: Request, allowed: set[str]) -> dict[str, Any]:
    """The ``parameters`` of a load/unload body (Triton's); options this server cannot honour are refused."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        parameters = json.loads(body).get("parameters", {}) or {}
    except (ValueError, AttributeError):
        raise InvalidRequest("the body must be a JSON object like {\"parameters\": {}}, or empty") from None
    unknown = sorted(set(parameters) - allowed)
    if unknown:
        raise InvalidRequest(f"unsupported parameters {unknown}: this server loads bundles from its model "
                             "repository folder only (no config override or uploaded files); put the bundle in "
                             "<repository>/<model>/<version>/ and load again")
    return parameters


def repository_routes(repository: ModelRepository) -> APIRouter:
    """The routes above, on ``repository``. Include it before the ``/v2/models/{name}`` routes (it owns
    ``/v2/models/stats``)."""
    router = APIRouter(tags=["model repository"])

    @router.get("/v2/models/stats")
    async def all_stats() -> dict[str, Any]:
        return {"model_stats": [m.stats.to_json(m.name, m.version) for m in repository.all()]}

    @router.get("/v2/models/{name}/stats")
    @router.get("/v2/models/{name}/versions/{version}/stats")
    async def model_stats(name: str, version: str | None = None) -> dict[str, Any]:
        models = [repository.get(name, version)] if version is not None else [
            repository.get(name, v) for v in repository.versions(name)] or [repository.get(name)]
        return {"model_stats": [m.stats.to_json(m.name, m.version) for m in models]}

    @router.get("/v2/models/{name}/config")
    @router.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(name: str, version: str | None = None) -> dict[str, Any]:
        return repository.get(name, version).config(repository.versions(name))

    @router.post("/v2/repository/index")
    async def index(request: Request) -> list[dict[str, str]]:
        parameters = await _options(request, {"ready"})
        entries = repository.index()
        return [e for e in entries if e["state"] == "READY"] if parameters.get("ready") else entries

    @router.post("/v2/repository/models/{name}/load")
    async def load(name: str, request: Request) -> dict[str, Any]:
        await _options(request, set())
        await run_in_threadpool(repository.load, name)
        return {}

    @router.post("/v2/repository/models/{name}/unload")
    async def unload(name: str, request: Request) -> dict[str, Any]:
        await _options(request, {"unload_dependents"})
        await run_in_threadpool(repository.unload, name)
        return {}

    return router
