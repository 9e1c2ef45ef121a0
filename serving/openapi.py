"""The published OpenAPI schema (``/openapi.json``) and the docs pages, served offline.

The endpoints read their bodies themselves (the OIP binary extension and NPZ bodies are not JSON),
so the request bodies are described here: pydantic models of the Open Inference Protocol (KServe v2)
JSON messages, and the members of ``/v1/reconstruct``'s NPZ. ``/docs`` (Swagger UI) and ``/redoc``
load their JavaScript and CSS from this server (the files of the ``fastapi-offline`` package), never
from a CDN, so they render on a beamline network with no internet access.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ptycho_torch.bundle import INPUT_NAMES, OUTPUT_NAMES
from ptycho_torch.bundle.dtypes import DTYPES
from ptycho_torch.choices import RefineAlgorithm, StopReason, values
from ptycho_torch.plan import ReconstructOptions

__all__ = ["DESCRIPTION", "ERRORS", "INFER_ROUTE", "METRICS_ROUTE", "NPZ_RESPONSE", "RECONSTRUCT_ROUTE", "install",
           "npz_body"]

STATIC_URL = "/docs-static"
SAME_ORIGIN_ONLY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:")
"""Content-Security-Policy of the docs pages: the browser fetches nothing from anywhere else (ReDoc
would otherwise load its footer logo from cdn.redoc.ly)."""
_STATIC_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"

DESCRIPTION = (
    "Real-time ptychographic reconstruction with a PtychoPINN bundle. `/v2/...`: the Open Inference "
    "Protocol (KServe v2 REST) with Triton's binary tensor extension, so `tritonclient.http` works unchanged "
    "(request bodies may be sent with `Content-Encoding: gzip` or `deflate`). `/v1/reconstruct`: a whole scan "
    "in one NPZ, the stitched object out. Every refusal is a 4xx with `{\"error\": message}`; see the "
    "README's reliability section for the limits (body size, per-request memory budget, timeouts)."
)

if TYPE_CHECKING:  # the enums below are built at run time, from the one table and the schema's names
    Datatype: TypeAlias = str
    InputName: TypeAlias = str
    OutputName: TypeAlias = str
else:
    Datatype = Literal[tuple(d.oip for d in DTYPES)]
    """The OIP datatypes of the one dtype table (:mod:`ptycho_torch.bundle.dtypes`)."""
    InputName = Literal[INPUT_NAMES]
    OutputName = Literal[OUTPUT_NAMES]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Error(BaseModel):
    """Every refusal: one line saying what was wrong and how to fix it."""

    error: str = Field(examples=["input `diffraction` must have datatype FP32, got FP64"])


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 marks a variable dimension (the batch)")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(description=(
        "providers, max_batch_size, N, gridsize, stitch_M, neighbor_count (the reconstruct default K), "
        "training_scale, pixel_size_m (the training object pixel size in metres, or null), default_scale_policy "
        "(the scale policy of a request that names none), bad_pixels ([row, col] of each masked detector pixel)"))


class InputParameters(_Model):
    binary_data_size: int | None = Field(None, ge=0, description="bytes of this tensor in the binary part")


class RequestInput(BaseModel):
    """One input tensor: JSON ``data`` (flat or nested, row-major) or ``binary_data_size`` bytes after the header."""

    name: InputName
    shape: list[int] = Field(description="diffraction: [B, C, N, N]; scale: [B]")
    datatype: Datatype = Field(description="FP32 for both inputs")
    parameters: InputParameters | None = None
    data: list[Any] | None = Field(None, description="raw diffraction amplitudes (sqrt of counts, DC at the "
                                   "centre) / per-item normalisation scale (positive, finite)")


class OutputParameters(_Model):
    binary_data: bool | None = None


class RequestOutput(BaseModel):
    name: OutputName
    parameters: OutputParameters | None = None


class RequestParameters(_Model):
    binary_data_output: bool | None = None


class InferRequest(BaseModel):
    """An OIP infer request (the JSON part; binary tensors follow it when
    ``Inference-Header-Content-Length`` gives its length)."""

    id: str | None = None
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: OutputName
    datatype: Datatype
    shape: list[int]
    data: list[float] | None = None
    parameters: InputParameters | None = None


class InferResponse(BaseModel):
    """Object amplitude and phase patches, (B, C, N, N) each."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


_ERROR_TEXT = {
    400: "malformed request: wrong names, shapes, dtypes, JSON or NPZ",
    401: "bearer token missing or wrong",
    403: "remote client without a token, or a Host header that does not name this server",
    404: "no such model or version",
    408: "the body did not arrive within the read timeouts",
    413: "over the body limit or the per-request memory budget (the message names the field and sizes)",
    415: "unsupported Content-Encoding",
    422: "well formed but not reconstructable: NaN/inf, negative values, implausible scan, scale out of range",
    503: "overloaded (Retry-After) or not ready",
}
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": Error, "description": text} for code, text in _ERROR_TEXT.items()}
"""The refusals every work route can answer, for ``responses=``."""

READY_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"model": Ready}, 503: {"model": Ready}}
MODEL_READY_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"model": ModelReady}, 503: {"model": ModelReady}}

_BINARY = {"schema": {"type": "string", "format": "binary"}}

INFER_ROUTE: dict[str, Any] = {
    "summary": "Run the model on a batch (OIP infer, JSON or binary tensors)",
    "responses": {200: {"model": InferResponse, "content": {"application/octet-stream": _BINARY},
                        "description": "JSON, or (binary outputs) the JSON header followed by the tensors; "
                                       "`Inference-Header-Content-Length` gives the header length"}, **ERRORS},
    "openapi_extra": {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
        "application/octet-stream": {**_BINARY, "description": "binary tensor extension: the JSON InferRequest "
                                     "then raw little-endian tensors; header `Inference-Header-Content-Length`"},
    }}},
}

def npz_body(description: str) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is an NPZ archive of the described arrays."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/x-npz": _BINARY}}}


NPZ_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/x-npz": _BINARY},
          "description": "the stitched object: NPZ with amplitude, phase, coverage, origin and metadata"}}
"""``responses=`` of a route that answers with a reconstruction NPZ."""

_ALGORITHMS = "|".join(map(repr, values(RefineAlgorithm)))
_STOP_REASONS = "|".join(repr(str(reason)) for reason in StopReason if reason != StopReason.CANCELLED)
"""The solver's stop reasons (a whole-scan refinement's); a live session's adds ``cancelled``."""

RECONSTRUCT_ROUTE: dict[str, Any] = {
    "summary": "Reconstruct a whole scan (NPZ in, stitched object NPZ out)",
    "description": (
        "Body: an NPZ archive (`numpy.savez`, no pickles; may be sent with `Content-Encoding: gzip|deflate`) "
        "holding `patterns` (S, N, N) real amplitudes, or integer photon counts (integer dtypes are counts "
        "unless `units` says otherwise), DC at the centre; `positions` (S, 2) float [x, y] object pixels "
        "(patch centres); optional `probe` (N, N) or (P, N, N) complex; optional `mask` (N, N) bool, True = "
        "bad detector pixel; optional `options`: a 0-d string array holding a JSON object with `scale_policy` "
        "('scan'|'bundle'), `units` ('amplitude'|'counts'), `stitch_M` (1..N/2), `neighbor_count`, `seed`, "
        "`pixel_size_m` (the scan's object pixel size in metres: 400 when it differs from the model's by over 1 %), "
        "`refine_iterations` (0..1000 iterations of refinement against the patterns after the network, or 'auto': "
        f"until the data fit stops improving, within `refine_time_limit_s`), `refine_algorithm` ({_ALGORITHMS}; "
        "default: 'er' for the object alone, 'rpie' with `refine_probe` or `refine_positions`), "
        "`refine_start` ('network'|'flat': flat skips the network), `refine_time_limit_s`, `refine_probe` and "
        "`refine_positions` (true|false: refine the probe, correct the positions; need `refine_iterations`).\n\n"
        "Response: an NPZ with `amplitude`, `phase`, `coverage` (H, W) float32, `origin` (2,) float64, "
        "`metadata` (0-d JSON string: scale, timings, probe_difference, pixel_size_m, `scan_report` with `warnings` about "
        "what is probably wrong: unusual energy layout, hot pixels, sentinels, bright frames; `data_fit`: per-pattern "
        "Poisson NLL per pixel and R-factor of the returned object against the measured patterns, their median and "
        "95th percentile, `outliers` (patterns it does not explain) and the figures per refinement iteration; "
        f"`refinement`: iterations done, algorithm, start, `stop_reason` ({_STOP_REASONS}) and "
        "`stopped` (why, in words), peak working memory, with `refine_positions` `position_correction_px` {rms, max} "
        "and `warnings` when the corrections are large), and when refined `probe` (P, N, N) complex64 "
        "(`refine_probe`) and `positions` (S, 2) float64 [x, y] object pixels (`refine_positions`)."),
    "responses": {200: {"content": {"application/x-npz": _BINARY}, "description": "the stitched object (NPZ)"},
                  **ERRORS},
    "openapi_extra": {"requestBody": {"required": True, "content": {"application/x-npz": _BINARY}}},
}

METRICS_ROUTE: dict[str, Any] = {
    "summary": "Prometheus metrics",
    "responses": {200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                        "description": "Prometheus text exposition format"}, **ERRORS},
}

_BODY_MODELS: tuple[type, ...] = (InferRequest, ReconstructOptions)
"""Types referenced only by ``$ref`` (:func:`schema_ref`): bodies the endpoints read themselves, and the
reconstruct options, which every path checks with :meth:`ReconstructOptions.from_mapping` itself."""


def schema_ref(model: type) -> dict[str, Any]:
    """A schema that is ``model``'s (one of :data:`_BODY_MODELS`, added by :func:`install`): ``allOf`` one
    ``$ref``, because pydantic resolves a bare ``$ref`` in a field's schema against its own definitions."""
    return {"allOf": [{"$ref": f"#/components/schemas/{model.__name__}"}]}


def _document_errors(document: dict[str, Any], components: dict[str, Any]) -> None:
    """Every operation can answer every refusal of the one error handler, as ``{"error": message}``
    (request validation included: 400, not FastAPI's 422 ``HTTPValidationError``)."""
    components["Error"] = Error.model_json_schema()
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for code, text in _ERROR_TEXT.items():
                responses[str(code)] = {"description": text, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def install(app: FastAPI) -> None:
    """Complete ``app``'s schema with the body models, and serve ``/docs`` and ``/redoc`` offline."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            components = document.setdefault("components", {}).setdefault("schemas", {})
            _document_errors(document, components)
            for model in _BODY_MODELS:
                model_schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
    app.mount(STATIC_URL, StaticFiles(directory=_STATIC_DIR), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - API",
                                   swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{STATIC_URL}/favicon.png")
        page.headers["Content-Security-Policy"] = SAME_ORIGIN_ONLY
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - API",
                              redoc_js_url=f"{STATIC_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{STATIC_URL}/favicon.png", with_google_fonts=False)
        page.headers["Content-Security-Policy"] = SAME_ORIGIN_ONLY
        return page
