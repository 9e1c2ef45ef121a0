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
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from serving import openapi
from serving.errors import InvalidRequest
from serving.repository import ModelRepository

__all__ = ["repository_routes"]


class RepositoryModel(BaseModel):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str


class Duration(BaseModel):
    count: int
    ns: int


class InferStatistics(BaseModel):
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class BatchStatistics(BaseModel):
    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class ModelStatistics(BaseModel):
    name: str
    version: str
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: InferStatistics
    batch_stats: list[BatchStatistics]


class Statistics(BaseModel):
    model_stats: list[ModelStatistics]


class ModelConfig(BaseModel):
    """Triton's ``ModelConfig`` in JSON (the fields this server fills; see Triton's model_config.proto)."""

    model_config = ConfigDict(extra="allow")
    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]


class Empty(BaseModel):
    pass


def _body(description: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"parameters": {"type": "object"}}}
    return {"requestBody": {"required": False, "description": description,
                            "content": {"application/json": {"schema": schema}}}}


def _options(body: bytes, allowed: set[str]) -> dict[str, Any]:
    """The ``parameters`` of a load/unload body (Triton's); options this server cannot honour are refused."""
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    parameters = document.get("parameters", {}) if isinstance(document, dict) else None
    if not isinstance(parameters, dict):
        raise InvalidRequest('the body must be empty or a JSON object like {"parameters": {}} (parameters an object)')
    unknown = sorted(set(parameters) - allowed)
    if unknown:
        raise InvalidRequest(f"unsupported parameters {unknown}: this server loads bundles from its model "
                             "repository folder only (no config override or uploaded files); put the bundle in "
                             "<repository>/<model>/<version>/ and load again")
    return parameters


def repository_routes(repository: ModelRepository, read_body: Callable[[Request], Awaitable[bytes]]) -> APIRouter:
    """The routes above, on ``repository``; ``read_body(request)`` reads a body under the server's limits.
    Include it before the ``/v2/models/{name}`` routes (it owns ``/v2/models/stats``)."""
    router = APIRouter(tags=["model repository"])

    @router.get("/v2/models/stats", response_model=Statistics, responses=openapi.ERRORS)
    async def all_stats() -> dict[str, Any]:
        return {"model_stats": [m.stats.to_json(m.name, m.version) for m in repository.all()]}

    @router.get("/v2/models/{name}/stats", response_model=Statistics, responses=openapi.ERRORS)
    @router.get("/v2/models/{name}/versions/{version}/stats", response_model=Statistics, responses=openapi.ERRORS)
    async def model_stats(name: str, version: str | None = None) -> dict[str, Any]:
        models = [repository.get(name, version)] if version is not None else repository.models(name)
        return {"model_stats": [m.stats.to_json(m.name, m.version) for m in models]}

    @router.get("/v2/models/{name}/config", response_model=ModelConfig, responses=openapi.ERRORS)
    @router.get("/v2/models/{name}/versions/{version}/config", response_model=ModelConfig, responses=openapi.ERRORS)
    async def model_config(name: str, version: str | None = None) -> dict[str, Any]:
        return repository.get(name, version).config(repository.versions(name))

    @router.post("/v2/repository/index", response_model=list[RepositoryModel], responses=openapi.ERRORS,
                 openapi_extra=_body('optional; `{"parameters": {"ready": true}}` lists only READY versions'))
    async def index(request: Request) -> list[dict[str, str]]:
        parameters = _options(await read_body(request), {"ready"})
        entries = repository.index()
        return [e for e in entries if e["state"] == "READY"] if parameters.get("ready") else entries

    @router.post("/v2/repository/models/{name}/load", response_model=Empty, responses=openapi.ERRORS,
                 openapi_extra=_body("optional and empty: the model is read from the repository folder"))
    async def load(name: str, request: Request) -> dict[str, Any]:
        _options(await read_body(request), set())
        await run_in_threadpool(repository.load, name)
        return {}

    @router.post("/v2/repository/models/{name}/unload", response_model=Empty, responses=openapi.ERRORS,
                 openapi_extra=_body('optional; `{"parameters": {"unload_dependents": false}}` (Triton\'s)'))
    async def unload(name: str, request: Request) -> dict[str, Any]:
        _options(await read_body(request), {"unload_dependents"})
        await run_in_threadpool(repository.unload, name)
        return {}

    return router
