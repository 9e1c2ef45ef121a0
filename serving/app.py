"""The FastAPI app: Open Inference Protocol v2 REST, ``/v1/reconstruct`` and ``/metrics``.

Every refusal is a ``PtychoError`` (a :class:`~serving.errors.ServingError`, or an error of the numpy
science code) turned into ``{"error": message}`` in one handler, with the status that the one table
:data:`serving.errors.STATUS` gives its class; endpoints never catch. A bearer token, when set, guards everything except the two health probes and the docs;
without one only loopback clients are served (:mod:`serving.guards`). Work routes admit a bounded
number of requests before reading a body; bodies are read within :mod:`serving.limits` (size,
``Content-Encoding``, timeouts, memory budget). Blocking work (decoding, stitching) runs in the
thread pool; inference waits on the dynamic batcher without holding a thread; a client that hangs up
has its work cancelled. The OpenAPI schema and offline ``/docs``, ``/redoc`` come from
:mod:`serving.openapi`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from ptycho_torch import __version__
from ptycho_torch.bundle import Bundle
from ptycho_torch.errors import ConfigError, PtychoError
from ptycho_torch.pipeline import reconstruct, require_finite_outputs, require_non_negative
from ptycho_torch.scan_checks import check_network_input
from serving import openapi
from serving.access_log import AccessLog
from serving.batching import DynamicBatcher
from serving.config import DEFAULTS, ServingConfig
from serving.engine import Engine
from serving.errors import ClientGone, ServerError, Unauthorized, status_of
from serving.guards import LOOPBACK_HOSTS, AccessGuard, Admission, CancellableRunner, cancel_on_disconnect
from serving.limits import Limits, check_reconstruct_budget, read_body
from serving.metrics import ServiceMetrics, TritonCollector
from serving.npz_wire import RECONSTRUCT_MEDIA_TYPE, decode_reconstruct_request, encode_reconstruction
from serving.protocol_v2 import (
    HEADER_LENGTH,
    InferRequest,
    check_inputs,
    check_outputs,
    decode_request,
    encode_response,
)
from serving.repository import InferenceStats, ModelRepository, ModelVersion
from serving.repository_routes import repository_routes
from serving.sessions import SessionManager
from serving.sessions.metrics import SessionCollector
from serving.sessions.routes import session_routes, viewer_routes

__all__ = ["create_app"]

log = logging.getLogger(__name__)

SERVER_NAME = "ptychopinn-serve"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]


class _State:
    """What the endpoints share: the model repository (engines, batchers), metrics and limits."""

    def __init__(self, repository: ModelRepository, metrics: ServiceMetrics, config: ServingConfig,
                 serve_engine: Callable[[Engine], ModelVersion]) -> None:
        self.repository = repository
        self.metrics = metrics
        self.token = config.token
        self.limits = config.limits
        self.infer_admission = Admission("infer", config.max_queue_size, "--max-queue-size")
        self.reconstruct_admission = Admission("reconstruct", config.max_concurrent_reconstructs,
                                               "--max-concurrent-reconstructs")
        self.serve_engine = serve_engine
        """Wrap an engine as a served version with this app's batching knobs and metrics."""

    def metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """The OIP model metadata of ``name`` (all served versions) or of one version."""
        model = self.repository.get(name, version)
        return model.metadata([model.version] if version is not None else self.repository.versions(name))

    def swap_engine(self, engine: Engine) -> DynamicBatcher:
        """Serve ``engine`` as its model's only version from now on (same batching knobs) and return the
        previous batcher of that model: live sessions pinned to it keep using it until they close."""
        name = engine.bundle.name
        old = self.repository.get(name)
        self.repository.swap(name, {str(engine.bundle.version): self.serve_engine(engine)})
        log.info("now serving %s v%s", name, engine.bundle.version)
        return old.batcher

    def session_runner(self, name: str | None, version: str | None) -> DynamicBatcher:
        """The runner a new live session pins: the model served now (a later swap does not reach it); no
        ``name`` means the default model, in ``version`` when one is given."""
        return self.repository.get(name or self.repository.default().name, version).batcher

    async def read_body(self, request: Request) -> bytes:
        """The body within this server's limits (see :func:`serving.limits.read_body`)."""
        return await read_body(request, self.limits)


def _error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _refusal(request: Request, error: Exception) -> Response:
    """Every deliberate refusal (a ``PtychoError``): its status from :data:`serving.errors.STATUS`."""
    if isinstance(error, ClientGone):
        log.info("%s %s: %s", request.method, request.url.path, error)
    return _error_response(status_of(error), str(error), getattr(error, "headers", None))


async def _client_disconnect(request: Request, _: Exception) -> Response:
    return await _refusal(request, ClientGone("the client closed the connection while sending the body"))


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    message = str(error.detail)
    if error.status_code in (404, 405):
        message = (f"{message}: {request.method} {request.url.path}; endpoints are /v2/health/{{live,ready}}, /v2, "
                   "/v2/models/{name}[/versions/{v}][/ready|/infer], POST /v1/reconstruct, /v1/sessions[/{id}[/frames|"
                   "/positions|/object|/updates]], GET /ui, GET /metrics")
    return _error_response(error.status_code, message, getattr(error, "headers", None))


async def _validation_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return _error_response(400, f"invalid request: {problems}")


async def _internal_error(_: Request, error: Exception) -> Response:
    log.error("internal error", exc_info=error)
    return _error_response(500, f"internal server error ({type(error).__name__}); see the server log")


def create_app(
    engine: Engine,
    config: ServingConfig | None = None,
    *,
    engine_factory: Callable[[Bundle], Engine] | None = None,
    **changes: Any,
) -> FastAPI:
    """The service for ``engine`` (the default model) and, with ``config.model_repository``, every model
    of that folder (:mod:`serving.repository`; ``engine_factory`` builds their engines, default:
    ``engine``'s providers and batch size). ``config`` holds every knob (default
    :data:`~serving.config.DEFAULTS`); ``changes`` are fields of it to replace, so
    ``create_app(engine, max_queue_delay_us=0)`` works. Batches never exceed ``config.max_batch_size``
    nor the engine's; ``max_queue_size`` also bounds infer requests in progress, checked before a body
    is read. The app owns the batchers and closes them at shutdown. Raises
    :class:`~ptycho_torch.errors.ConfigError` naming a knob that is out of range or unknown."""
    config = _with_changes(config or DEFAULTS, changes)
    state, sessions = _serve_models(engine, config, engine_factory)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await sessions.shutdown()
        await run_in_threadpool(state.repository.close)

    app = FastAPI(title=SERVER_NAME, version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=openapi.DESCRIPTION)
    app.state.serving = state
    _install_middleware(app, config, state.metrics)
    _install_error_handlers(app)
    guarded = [Depends(_auth(state))]
    app.include_router(_health_routes(state))
    app.include_router(repository_routes(state.repository, state.read_body), dependencies=guarded)
    app.include_router(_model_routes(state), dependencies=guarded)
    app.include_router(_infer_routes(state), dependencies=guarded)
    app.include_router(_reconstruct_routes(state), dependencies=guarded)
    app.include_router(session_routes(sessions, state.read_body, config.limits.max_request_memory_bytes),
                       dependencies=guarded)
    app.include_router(viewer_routes(sessions, state.token))
    openapi.install(app)
    return app


def _with_changes(config: ServingConfig, changes: dict[str, Any]) -> ServingConfig:
    """``config`` with the fields in ``changes`` replaced; :class:`ConfigError` naming unknown ones."""
    fields = [f.name for f in dataclasses.fields(ServingConfig)]
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise ConfigError(f"unknown serving settings {unknown}; the fields of ServingConfig are {fields}")
    return dataclasses.replace(config, **changes)


ServeVersion = Callable[[str, str, Engine, Path], ModelVersion]
"""``serve(name, version, engine, source)`` -> the served version."""


def _version_builder(config: ServingConfig, metrics: ServiceMetrics) -> ServeVersion:
    """``serve(name, version, engine, source)``: the engine behind its own batcher (``config``'s knobs),
    its batches counted in its statistics and in ``metrics``."""
    def serve(name: str, version: str, engine: Engine, source: Path) -> ModelVersion:
        stats = InferenceStats()

        def observe(size: int, queue_s: list[float], compute_s: float) -> None:
            stats.observe_batch(size, queue_s, compute_s)
            metrics.observe_batch(size, queue_s, compute_s, model=name)

        batcher = DynamicBatcher.from_config(engine, config, observer=observe)
        return ModelVersion.create(name, version, source, engine, batcher, stats)
    return serve


def _serve_models(engine: Engine, config: ServingConfig, engine_factory: Callable[[Bundle], Engine] | None
                  ) -> tuple[_State, SessionManager]:
    """The repository serving ``engine`` (and the repository folder's models), its metrics and live sessions."""
    metrics = ServiceMetrics(engine.bundle.name, min(config.max_batch_size, engine.max_batch_size))
    make_engine = engine_factory or (lambda bundle: Engine(bundle, providers=engine.providers,
                                                           max_batch_size=engine.max_batch_size))
    serve = _version_builder(config, metrics)

    def serve_engine(served: Engine) -> ModelVersion:
        return serve(served.bundle.name, str(served.bundle.version), served, served.bundle.source)

    sessions: SessionManager
    repository = ModelRepository(
        lambda name, version, bundle: serve(name, version, make_engine(bundle), bundle.source),
        [serve_engine(engine)], root=config.model_repository,
        in_use=lambda model: any(s.runner is model.batcher for s in sessions.sessions()))
    state = _State(repository, metrics, config, serve_engine)
    sessions = SessionManager(state.session_runner, config.sessions)
    repository.load_all()
    metrics.registry.register(SessionCollector(sessions))
    metrics.registry.register(TritonCollector(repository))
    return state, sessions


def _install_middleware(app: FastAPI, config: ServingConfig, metrics: ServiceMetrics) -> None:
    """CORS (when origins are given), the access guard (token / loopback / Host) and the access log."""
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    loopback_only = config.allowed_hosts is None and config.token is None
    app.add_middleware(AccessGuard, allow_remote=config.allow_remote or config.token is not None,
                       allowed_hosts=LOOPBACK_HOSTS if loopback_only else config.allowed_hosts)
    app.add_middleware(AccessLog, observe=metrics.observe_request)


def _install_error_handlers(app: FastAPI) -> None:
    """Every refusal answers ``{"error": message}`` with its status (see the module docstring)."""
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(PtychoError, _refusal)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)


def _auth(state: _State) -> Callable[[Request], Awaitable[None]]:
    async def check(request: Request) -> None:
        if state.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("a bearer token is required: send the header `Authorization: Bearer <token>`")
        if not hmac.compare_digest(given.strip().encode(), state.token.encode()):
            raise Unauthorized("the bearer token is not valid for this server")
    return check


def _health_routes(state: _State) -> APIRouter:
    router = APIRouter()

    @router.get("/v2/health/live", response_model=openapi.Live)
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/v2/health/ready", responses=openapi.READY_RESPONSES)
    async def ready() -> Response:
        return JSONResponse({"ready": True}) if _is_ready(state) else JSONResponse({"ready": False}, 503)

    return router


def _is_ready(state: _State) -> bool:
    return all(_model_ready(model) for model in state.repository.all())


def _model_ready(model: ModelVersion) -> bool:
    return model.engine.warmup_s is not None and model.batcher.running


def _model_routes(state: _State) -> APIRouter:
    """OIP server and model metadata, model readiness."""
    router = APIRouter()

    @router.get("/v2", response_model=openapi.ServerMetadata, responses=openapi.ERRORS)
    async def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    @router.get("/v2/models/{name}", response_model=openapi.ModelMetadata, responses=openapi.ERRORS)
    @router.get("/v2/models/{name}/versions/{version}", response_model=openapi.ModelMetadata,
                responses=openapi.ERRORS)
    async def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
        return state.metadata(name, version)

    @router.get("/v2/models/{name}/ready", responses={**openapi.MODEL_READY_RESPONSES, **openapi.ERRORS})
    @router.get("/v2/models/{name}/versions/{version}/ready",
                responses={**openapi.MODEL_READY_RESPONSES, **openapi.ERRORS})
    async def model_ready(name: str, version: str | None = None) -> Response:
        ready = _model_ready(state.repository.get(name, version))
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    return router


def _infer_routes(state: _State) -> APIRouter:
    """OIP infer on one model version, through its dynamic batcher."""
    router = APIRouter()

    @router.post("/v2/models/{name}/infer", **openapi.INFER_ROUTE)
    @router.post("/v2/models/{name}/versions/{version}/infer", **openapi.INFER_ROUTE)
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        with state.repository.lease(name, version) as model, state.infer_admission.slot():
            request.state.model = model  # for the access log
            start, ok = time.perf_counter(), False
            try:
                body = await read_body(request, state.limits)
                decoded = await run_in_threadpool(decode_request, body, request.headers.get(HEADER_LENGTH),
                                                  max_json_bytes=state.limits.max_json_bytes)
                content, headers = await _infer(request, model, decoded)
                ok = True
            finally:
                model.stats.observe_request(ok, time.perf_counter() - start)
        return Response(content, headers=headers)

    return router


async def _infer(request: Request, model: ModelVersion, decoded: InferRequest) -> tuple[bytes, dict[str, str]]:
    """Check ``decoded`` against the model's signature, run it on the batcher (cancelled if the client
    hangs up) and encode the outputs it asked for."""
    check_inputs(decoded.inputs, model.inputs)
    check_outputs(decoded, [t.name for t in model.outputs])
    diffraction_name, scale_name = (t.name for t in model.inputs)
    diffraction, scale = decoded.inputs[diffraction_name], decoded.inputs[scale_name]
    check_network_input(scale, float(diffraction.max()) if diffraction.size else 0.0, field=scale_name)
    require_non_negative(diffraction, diffraction_name)
    amplitude, phase = await cancel_on_disconnect(
        request, asyncio.wrap_future(model.batcher.submit(diffraction, scale)))
    require_finite_outputs(amplitude, phase)
    outputs = dict(zip((t.name for t in model.outputs), (amplitude, phase), strict=True))
    return await run_in_threadpool(encode_response, model.name, model.version, decoded, outputs)


def _reconstruct_routes(state: _State) -> APIRouter:
    """``/v1/reconstruct`` on the default model, and the Prometheus ``/metrics``."""
    router = APIRouter()

    @router.post("/v1/reconstruct", **openapi.RECONSTRUCT_ROUTE)
    async def reconstruct_scan(request: Request) -> Response:
        with state.repository.lease(None) as model, state.reconstruct_admission.slot():
            request.state.model = model
            body = await read_body(request, state.limits)
            runner = CancellableRunner(model.batcher)
            content = await cancel_on_disconnect(
                request, run_in_threadpool(_reconstruct, state.limits, state.metrics, model, runner, body), runner.cancel)
        return Response(content, media_type=RECONSTRUCT_MEDIA_TYPE)

    @router.get("/metrics", **openapi.METRICS_ROUTE)
    async def metrics() -> Response:
        for model in state.repository.all():
            state.metrics.queue_length.labels(model.name).set(model.batcher.queue_length())
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _require_refine_backend() -> None:
    """A refining request on a host whose refine backend cannot run (``ptychopinn serve`` checks it at start;
    an app built otherwise may not have): 500, the host's to fix, never a refusal of the request."""
    from ptycho_torch.refinement.backend import backend_problem

    problem = backend_problem()
    if problem is not None:
        log.error("refinement refused: %s", problem)
        raise ServerError(f"this server cannot refine: {problem}")


def _reconstruct(limits: Limits, metrics: ServiceMetrics, model: ModelVersion, runner: CancellableRunner,
                 body: bytes) -> bytes:
    request = decode_reconstruct_request(body, max_uncompressed_bytes=limits.max_request_memory_bytes)
    decoded = sum(a.nbytes for a in (request.patterns, request.positions, request.probe, request.mask) if a is not None)
    check_reconstruct_budget(request.patterns, request.positions, N=model.bundle.N, channels=model.bundle.channels,
                             decoded_bytes=decoded, limits=limits)
    if request.options.refine_iterations != 0:
        _require_refine_backend()
    result = reconstruct(runner, request.patterns, request.positions, probe=request.probe,
                         options=request.options, mask=request.mask)
    metrics.observe_data_fit(result.data_fit, result.n_patterns,
                             result.refinement["iterations"] if result.refinement else 0)
    return encode_reconstruction(result, {"model_name": model.name, "model_version": model.bundle.version})
