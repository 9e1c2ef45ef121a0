"""The bundle's manifest schema: the only definition of ``manifest.json``, shared by the exporter
(writer) and every reader (the onnxruntime engine, Ptychodus, ``ptychopinn inspect``).

Strict pydantic models: unknown keys, missing keys, wrong JSON types (``"1"`` for 1, ``true`` for 1)
and non-finite numbers are refused; :meth:`Manifest.from_json` turns the first problem into a
:class:`~ptycho_torch.errors.BundleError` naming the field and the value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Final, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from ptycho_torch.choices import NAMED_SCALE_POLICIES, ScalePolicy
from ptycho_torch.errors import BundleError, InvalidInput
from ptycho_torch.stitching import check_stitch_M

FORMAT: Final = "ptychopinn-bundle"
FORMAT_VERSION: Final = 1
MANIFEST_FILE: Final = "manifest.json"
ONNX_FILE: Final = "model.onnx"
TORCHSCRIPT_FILE: Final = "model.ts"
PARAMS_FILE: Final = "params.json"
PROBE_FILE: Final = "probe.npy"
BAD_PIXELS_FILE: Final = "bad_pixels.npy"
"""Optional: the detector's bad-pixel mask, (N, N) bool (True = bad), masked in every scan by default."""
REQUIRED_FILES: Final = (ONNX_FILE, PARAMS_FILE, PROBE_FILE)
INPUT_NAMES: Final = ("diffraction", "scale")
OUTPUT_NAMES: Final = ("amplitude", "phase")
BATCH_DIM: Final[Literal["B"]] = "B"
NORMALIZATION_RULE: Final = "x_norm = x * sqrt((N/2)^2 / mean_over_scan sum_hw x^2)"
COORDINATE_CONVENTION: Final = "object pixels, patch centre, x = column, y = row, float"


def triton_config_path(name: str) -> str:
    """Bundle-relative path of the Triton ``config.pbtxt`` for model ``name``."""
    return f"triton/{name}/config.pbtxt"


def triton_model_path(name: str, version: int) -> str:
    """Bundle-relative path of the Triton copy of ``model.onnx``."""
    return f"triton/{name}/{version}/model.onnx"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


Dim = Annotated[int, Field(gt=0)] | Literal["B"]
"""One axis of a tensor: a positive size, or ``"B"`` for the dynamic batch axis."""


class TensorSpec(_Strict):
    """One graph input or output; ``shape`` uses ``"B"`` for the dynamic batch axis."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"


Signature = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]
"""A graph's ``(inputs, outputs)``."""


def tensor_specs(N: int, channels: int) -> Signature:
    """The graph signature of every PtychoPINN model, for patch size ``N`` and ``channels`` C: inputs
    ``diffraction (B, C, N, N)`` and ``scale (B,)``, outputs ``amplitude`` and ``phase (B, C, N, N)``,
    all float32 (the names are :data:`INPUT_NAMES` and :data:`OUTPUT_NAMES`)."""
    patches: tuple[Dim, ...] = (BATCH_DIM, channels, N, N)
    inputs = (TensorSpec(name=INPUT_NAMES[0], shape=patches), TensorSpec(name=INPUT_NAMES[1], shape=(BATCH_DIM,)))
    return inputs, tuple(TensorSpec(name=name, shape=patches) for name in OUTPUT_NAMES)


class Normalization(_Strict):
    """How the host computes the ``scale`` input, and the value measured on the training data."""

    rule: str
    training_scale: float
    default_policy: ScalePolicy = ScalePolicy.SCAN
    """``scan``: computed from the request's own patterns; ``bundle``: ``training_scale`` (never ``explicit``:
    that names a scale a request sends)."""

    @pydantic.field_validator("default_policy", mode="before")
    @classmethod
    def _measured_or_recorded(cls, policy: object) -> object:
        if policy not in NAMED_SCALE_POLICIES:
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": " or ".join(map(repr, NAMED_SCALE_POLICIES))})
        return policy


class Provenance(_Strict):
    """Where the bundle came from."""

    package_version: str
    torch_version: str
    onnx_version: str
    created: str
    """ISO-8601 UTC creation time."""
    git_commit: str | None = None
    train_data_sha256: str | None = None
    checkpoint: str | None = None


class EngineDeviation(_Strict):
    """Measured max absolute difference of one engine's outputs from torch eager (not an exception)."""

    amplitude: float
    phase: float


class Verification(_Strict):
    """Parity measured at export time on real inputs (see ``export.verify``)."""

    inputs: str
    """What was run: the training data's own patterns, or the scan file given."""
    n_samples: int
    tolerance: float
    """Max abs error allowed for the float32 graphs (amplitude and phase)."""
    errors: dict[str, EngineDeviation]
    """engine (``onnxruntime_cpu``, ``torchscript``, ``batch_1_vs_n``...) -> measured deviation."""
    fp16_tolerance: float | None = None
    """Max abs error allowed for the float16 variant (None: no fp16 variant)."""


class TrainingRecord(_Strict):
    """How the model was trained: the recipe, the effort, and its fit to held-out patterns."""

    recipe: dict[str, str | int | float | bool | None]
    """Generator, sizes, data (scan or corpus), optimiser settings... as flat JSON values."""
    steps: int
    """Optimiser steps of the whole run."""
    wall_s: float
    """Wall time of the (last, if resumed) training process, seconds."""
    held_out_nll: float | None = None
    """Validation Poisson NLL per pixel (without log k!) of the exported checkpoint."""


class Manifest(_Strict):
    """Everything a host needs to run the bundle; serialised as ``manifest.json``."""

    name: Annotated[str, Field(pattern=r"^[\w-]+$")]
    """Letters, digits, '-' or '_': the model's name in URLs and its Triton folder (as export requires)."""
    version: Annotated[int, Field(ge=1)]
    N: Annotated[int, Field(gt=0)]
    gridsize: Annotated[int, Field(gt=0)]
    channels: int
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    normalization: Normalization
    intensity_scale: float
    stitch_M: int
    provenance: Provenance
    verification: Verification
    files: dict[str, str]
    """Bundle-relative POSIX path -> sha256 of every file except the manifest."""
    pixel_size_m: Annotated[float, Field(gt=0, lt=1e-3)] | None = None
    """Object pixel size of the training data in metres (square pixels); None when unknown. A scan
    with another pixel size is refused (:mod:`ptycho_torch.pixel_size`)."""
    variants: dict[str, str] = Field(default_factory=dict)
    """Optional extra ONNX graphs with the same signature: ``fp16``, ``ort_optimized`` -> file."""
    training: TrainingRecord | None = None
    """The training record (None for bundles exported without their run's ``summary.json``)."""
    neighbor_count: Annotated[int, Field(gt=0)] | None = None
    """K nearest neighbours a group's members were drawn from in training, the reconstruct default
    (gridsize > 1); None in bundles written before it was recorded: then
    :func:`~ptycho_torch.grouping.default_neighbor_count` of C (see :attr:`Bundle.neighbor_count`)."""
    coordinates: str = COORDINATE_CONVENTION
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The manifest as indented, key-sorted JSON."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse and validate ``manifest.json`` text; raises :class:`BundleError` naming the field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise BundleError(f"{MANIFEST_FILE} is not valid JSON ({error}); the file is truncated or "
                              "damaged, re-export the bundle") from None
        if not isinstance(data, dict):
            raise BundleError(f"{MANIFEST_FILE} must hold a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise BundleError(f"{MANIFEST_FILE}: `format` must be {FORMAT!r}, got {data.get('format')!r}; "
                              "this is not a ptychopinn bundle")
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{MANIFEST_FILE}: `format_version` must be {FORMAT_VERSION}, got "
                              f"{data.get('format_version')!r}; re-export the bundle with this version of "
                              "ptychopinn-serve or install the version that wrote it")
        try:
            manifest = cls.model_validate_json(text)
        except pydantic.ValidationError as error:
            raise BundleError(_describe(error)) from None
        manifest._check_consistent()
        return manifest

    def check_graph(self, rel: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        """Raise :class:`BundleError` unless a graph's declared ``inputs`` and ``outputs`` (a dynamic axis
        as ``"B"``) are this manifest's, in order; ``rel`` names the graph (``model.onnx``). The reader
        checks each ONNX file with it, the serving engine its onnxruntime session."""
        graph = (tuple(inputs), tuple(outputs))
        difference = _difference(graph, (self.inputs, self.outputs), f" as in {MANIFEST_FILE}")
        if difference:
            raise BundleError(f"{rel}: graph {difference}; re-export the bundle")

    def _check_consistent(self) -> None:
        if self.channels != self.gridsize**2:
            raise BundleError(f"{MANIFEST_FILE}: `channels` must be gridsize**2 = {self.gridsize**2}, got "
                              f"{self.channels}; the manifest was edited by hand, re-export the bundle")
        difference = _difference((self.inputs, self.outputs), tensor_specs(self.N, self.channels),
                                 f" for N={self.N}, C={self.channels}")
        if difference:
            raise BundleError(f"{MANIFEST_FILE}: {difference}; re-export the bundle")
        if self.neighbor_count is not None and self.neighbor_count < self.channels:
            raise BundleError(f"{MANIFEST_FILE}: `neighbor_count` must be >= channels = {self.channels}, got "
                              f"{self.neighbor_count}; re-export the bundle")
        try:
            check_stitch_M(self.stitch_M, self.N)
        except InvalidInput as error:
            raise BundleError(f"{MANIFEST_FILE}: {error}; re-export the bundle") from None
        missing = [f for f in (*REQUIRED_FILES, *self.variants.values()) if f not in self.files]
        if missing:
            raise BundleError(f"{MANIFEST_FILE}: `files` must list {list(REQUIRED_FILES)}, missing {missing}; "
                              "re-export the bundle")


def _difference(declared: Signature, expected: Signature, context: str) -> str | None:
    """The first way ``declared`` differs from ``expected``, in words (``context`` says where the expected
    signature comes from), or None when they are the same."""
    for group, got, want in zip(("inputs", "outputs"), declared, expected, strict=True):
        if [g.name for g in got] != [w.name for w in want]:
            return f"`{group}` must be named {[w.name for w in want]}{context}, got {[g.name for g in got]}"
        for g, w in zip(got, want, strict=True):
            if g != w:
                return f"`{group}.{w.name}` must be {w.dtype} {list(w.shape)}{context}, got {g.dtype} {list(g.shape)}"
    return None


def _describe(error: pydantic.ValidationError) -> str:
    """One line for the first schema violation: where, what was expected, what was found."""
    problems = error.errors(include_url=False)
    first = problems[0]
    parent = _where(first["loc"][:-1])
    same = [p for p in problems if p["type"] == first["type"] and _where(p["loc"][:-1]) == parent]
    keys = sorted(str(p["loc"][-1]) for p in same)
    if first["type"] == "extra_forbidden":
        return f"{MANIFEST_FILE}: unknown keys {keys} in `{parent}`; remove them or re-export the bundle"
    if first["type"] == "missing":
        return f"{MANIFEST_FILE}: `{parent}` is missing keys {keys}; re-export the bundle"
    message = first["msg"][0].lower() + first["msg"][1:]
    return (f"{MANIFEST_FILE}: `{_where(first['loc'])}` {message.removeprefix('input ')}, got "
            f"{first['input']!r}; re-export the bundle")


def _where(loc: tuple[int | str, ...]) -> str:
    """``manifest.json.inputs[0].shape[2]`` from a pydantic location (union member tags dropped)."""
    return MANIFEST_FILE + "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                                   for part in loc if isinstance(part, int) or part.isidentifier())
