"""The deployment bundle: its manifest schema (the only definition of it) and its reader.

A bundle is a directory, or the same content as one ``.zip``::

    manifest.json                       this schema, with the sha256 of every other file
    model.onnx                          diffraction (B,C,N,N), scale (B,) -> amplitude, phase (B,C,N,N)
    model.ts                            TorchScript (never opened here: serving has no torch)
    params.json                         the params.cfg snapshot
    probe.npy                           the training probe, complex64, (N,N) or (P,N,N)
    triton/<name>/config.pbtxt          a ready Triton model repository
    triton/<name>/<version>/model.onnx

Reading uses numpy and onnx only. Nothing is ever unpickled: ``.npy`` files load with
``allow_pickle=False`` and files with pickle suffixes are refused. A ``.zip`` is extracted (after
checking every member name) into a temporary directory that lives as long as the :class:`Bundle`.
``export`` imports the dataclasses below to write bundles, so reader and writer share one schema.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

import numpy as np

from ptycho_torch.checksums import sha256_file
from ptycho_torch.errors import BundleError

FORMAT: Final = "ptychopinn-bundle"
FORMAT_VERSION: Final = 1
MANIFEST_FILE: Final = "manifest.json"
ONNX_FILE: Final = "model.onnx"
TORCHSCRIPT_FILE: Final = "model.ts"
PARAMS_FILE: Final = "params.json"
PROBE_FILE: Final = "probe.npy"
REQUIRED_FILES: Final = (ONNX_FILE, PARAMS_FILE, PROBE_FILE)
INPUT_NAMES: Final = ("diffraction", "scale")
OUTPUT_NAMES: Final = ("amplitude", "phase")
BATCH_DIM: Final = "B"
NORMALIZATION_RULE: Final = "x_norm = x * sqrt((N/2)^2 / mean_over_scan sum_hw x^2)"
COORDINATE_CONVENTION: Final = "object pixels, patch centre, x = column, y = row, float"
PICKLE_SUFFIXES: Final = (".pkl", ".pickle", ".pt", ".pth", ".dill", ".joblib", ".ckpt")
MAX_ZIP_BYTES: Final = 4 << 30

_ONNX_DTYPES: Final = {1: "float32", 10: "float16", 11: "float64"}


def triton_config_path(name: str) -> str:
    """Bundle-relative path of the Triton ``config.pbtxt`` for model ``name``."""
    return f"triton/{name}/config.pbtxt"


def triton_model_path(name: str, version: int) -> str:
    """Bundle-relative path of the Triton copy of ``model.onnx``."""
    return f"triton/{name}/{version}/model.onnx"


# --------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; ``shape`` uses ``"B"`` for the dynamic batch axis."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class Normalization:
    """How the host computes the ``scale`` input, and the value measured on the training data."""

    rule: str
    training_scale: float
    default_policy: str = "scan"
    """``scan``: computed from the request's own patterns; ``bundle``: ``training_scale``."""


@dataclass(frozen=True)
class Provenance:
    """Where the bundle came from."""

    package_version: str
    torch_version: str
    onnx_version: str
    created: str
    """ISO-8601 UTC creation time."""
    git_commit: str | None = None
    train_data_sha256: str | None = None
    checkpoint: str | None = None


@dataclass(frozen=True)
class EngineError:
    """Max absolute difference of one engine's outputs from torch eager."""

    amplitude: float
    phase: float


@dataclass(frozen=True)
class Verification:
    """Parity measured at export time on real inputs (see ``export.verify``)."""

    inputs: str
    """What was run: the training data's own patterns, or the scan file given."""
    n_samples: int
    tolerance: float
    """Max abs error allowed for the float32 graphs (amplitude and phase)."""
    errors: dict[str, EngineError]
    """engine (``onnxruntime_cpu``, ``torchscript``, ``batch_1_vs_n``...) -> measured errors."""
    fp16_tolerance: float | None = None
    """Max abs error allowed for the float16 variant (None: no fp16 variant)."""


@dataclass(frozen=True)
class Manifest:
    """Everything a host needs to run the bundle; serialised as ``manifest.json``."""

    name: str
    version: int
    N: int
    gridsize: int
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
    variants: dict[str, str] = dataclasses.field(default_factory=dict)
    """Optional extra ONNX graphs with the same signature: ``fp16``, ``ort_optimized`` -> file."""
    coordinates: str = COORDINATE_CONVENTION
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The manifest as indented, key-sorted JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

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
        manifest = _build(cls, data, MANIFEST_FILE)
        manifest._check_consistent()
        return manifest

    def _check_consistent(self) -> None:
        expected = {
            "diffraction": (BATCH_DIM, self.channels, self.N, self.N),
            "scale": (BATCH_DIM,),
            "amplitude": (BATCH_DIM, self.channels, self.N, self.N),
            "phase": (BATCH_DIM, self.channels, self.N, self.N),
        }
        if self.channels != self.gridsize**2:
            raise BundleError(f"{MANIFEST_FILE}: `channels` must be gridsize**2 = {self.gridsize**2}, got "
                              f"{self.channels}; the manifest was edited by hand, re-export the bundle")
        for group, names in (("inputs", INPUT_NAMES), ("outputs", OUTPUT_NAMES)):
            specs = getattr(self, group)
            if tuple(s.name for s in specs) != names:
                raise BundleError(f"{MANIFEST_FILE}: `{group}` must be named {list(names)}, got "
                                  f"{[s.name for s in specs]}; re-export the bundle")
            for spec in specs:
                if spec.shape != expected[spec.name] or spec.dtype != "float32":
                    raise BundleError(f"{MANIFEST_FILE}: `{group}.{spec.name}` must be float32 "
                                      f"{list(expected[spec.name])} for N={self.N}, C={self.channels}, got "
                                      f"{spec.dtype} {list(spec.shape)}; re-export the bundle")
        if not 1 <= self.stitch_M <= self.N // 2:
            raise BundleError(f"{MANIFEST_FILE}: `stitch_M` must be in [1, N/2 = {self.N // 2}], got {self.stitch_M}")
        missing = [f for f in (*REQUIRED_FILES, *self.variants.values()) if f not in self.files]
        if missing:
            raise BundleError(f"{MANIFEST_FILE}: `files` must list {list(REQUIRED_FILES)}, missing {missing}; "
                              "re-export the bundle")


def _build(cls: type, data: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from JSON ``data``, strictly (no unknown or missing keys)."""
    if not isinstance(data, dict):
        raise BundleError(f"{MANIFEST_FILE}: `{where}` must be an object, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BundleError(f"{MANIFEST_FILE}: unknown keys {unknown} in `{where}`; known keys are {sorted(fields)}")
    missing = sorted(n for n, f in fields.items()
                     if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise BundleError(f"{MANIFEST_FILE}: `{where}` is missing keys {missing}; re-export the bundle")
    hints = _FIELD_TYPES[cls]
    return cls(**{name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()})


def _convert(kind: Any, value: Any, where: str) -> Any:
    """Check/convert one JSON value against the small type language of ``_FIELD_TYPES``."""
    def fail(expected: str) -> BundleError:
        return BundleError(f"{MANIFEST_FILE}: `{where}` must be {expected}, got {value!r}; re-export the bundle")

    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _build(kind, value, where)
    if kind is str or kind == "str?":
        if value is None and kind == "str?":
            return None
        if not isinstance(value, str):
            raise fail("a string" + (" or null" if kind == "str?" else ""))
        return value
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail("an integer")
        return value
    if kind == "float?" and value is None:
        return None
    if kind is float or kind == "float?":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
            raise fail("a finite number")
        return float(value)
    if kind == "shape":
        if not isinstance(value, list) or not all(
                v == BATCH_DIM or (isinstance(v, int) and not isinstance(v, bool) and v > 0) for v in value):
            raise fail(f'a list of positive integers or "{BATCH_DIM}"')
        return tuple(value)
    if isinstance(kind, tuple) and kind[0] == "list":
        if not isinstance(value, list):
            raise fail("a list")
        return tuple(_convert(kind[1], v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(kind, tuple) and kind[0] == "dict":
        if not isinstance(value, dict):
            raise fail("an object")
        return {str(k): _convert(kind[1], v, f"{where}.{k}") for k, v in value.items()}
    raise AssertionError(f"no converter for {kind!r}")  # schema bug, not user input


_FIELD_TYPES: Final[dict[type, dict[str, Any]]] = {
    TensorSpec: {"name": str, "shape": "shape", "dtype": str},
    Normalization: {"rule": str, "training_scale": float, "default_policy": str},
    Provenance: {"package_version": str, "torch_version": str, "onnx_version": str, "created": str,
                 "git_commit": "str?", "train_data_sha256": "str?", "checkpoint": "str?"},
    EngineError: {"amplitude": float, "phase": float},
    Verification: {"inputs": str, "n_samples": int, "tolerance": float, "errors": ("dict", EngineError),
                   "fp16_tolerance": "float?"},
    Manifest: {"name": str, "version": int, "N": int, "gridsize": int, "channels": int, "opset": int,
               "inputs": ("list", TensorSpec), "outputs": ("list", TensorSpec),
               "normalization": Normalization, "intensity_scale": float, "stitch_M": int,
               "provenance": Provenance, "verification": Verification, "files": ("dict", str),
               "variants": ("dict", str),
               "coordinates": str, "format": str, "format_version": int},
}


# --------------------------------------------------------------------------------------- reader


@dataclass(frozen=True, eq=False)
class Bundle:
    """A validated bundle on disk (for a ``.zip``: its extracted copy, deleted when this object is)."""

    root: Path
    manifest: Manifest
    probe: np.ndarray
    """complex64, (P, N, N)."""
    params: dict[str, Any]
    source: Path
    """The directory or ``.zip`` the bundle was loaded from."""

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def N(self) -> int:  # noqa: N802 - the project-wide name of the patch size
        return self.manifest.N

    @property
    def gridsize(self) -> int:
        return self.manifest.gridsize

    @property
    def channels(self) -> int:
        return self.manifest.channels

    @property
    def input_scale(self) -> float:
        """The normalisation scalar measured on the training data (the ``bundle`` policy)."""
        return self.manifest.normalization.training_scale

    @property
    def intensity_scale(self) -> float:
        return self.manifest.intensity_scale

    @property
    def stitch_M(self) -> int:  # noqa: N802
        return self.manifest.stitch_M

    @property
    def onnx_path(self) -> Path:
        return self.root / ONNX_FILE


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate a bundle directory or ``.zip``; raise :class:`BundleError` on any problem.

    Checks, in order: the manifest's schema and format version; that no file needs unpickling; that
    every listed file exists with its recorded sha256 and no unlisted file is present; the ONNX
    graph's inputs/outputs against the manifest; the probe's dtype and shape; the params snapshot.
    """
    source = Path(path)
    if source.is_dir():
        return _load_dir(source, source)
    if source.is_file() and source.suffix == ".zip":
        tmp = Path(tempfile.mkdtemp(prefix="ptychopinn-bundle-"))
        try:
            _extract_zip(source, tmp)
            bundle = _load_dir(tmp, source)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        weakref.finalize(bundle, shutil.rmtree, tmp, True)
        return bundle
    if source.exists():
        raise BundleError(f"bundle `{source}` must be a directory or a .zip file; pass the folder written by "
                          "`ptychopinn export` or its --zip archive")
    raise BundleError(f"bundle `{source}` does not exist; check the path")


def _extract_zip(archive: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            total = sum(m.file_size for m in members)
            if total > MAX_ZIP_BYTES:
                raise BundleError(f"{archive.name}: uncompressed size must be <= {MAX_ZIP_BYTES} bytes, got {total}")
            for member in members:
                name = PurePosixPath(member.filename)
                if name.is_absolute() or ".." in name.parts or "\\" in member.filename:
                    raise BundleError(f"{archive.name}: member `{member.filename}` must be a relative path inside "
                                      "the bundle; the archive is not a ptychopinn bundle")
            zf.extractall(target)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise BundleError(f"{archive.name} is not a readable zip ({error}); the file is truncated or damaged, "
                          "copy it again or re-export with --zip") from None


def _load_dir(root: Path, source: Path) -> Bundle:
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{source}: missing file {MANIFEST_FILE}; pass the folder written by `ptychopinn export`")
    manifest = Manifest.from_json(manifest_path.read_text(encoding="utf-8", errors="replace"))
    _check_files(root, manifest)
    for rel in (ONNX_FILE, *manifest.variants.values()):
        _check_onnx(root / rel, manifest)
    probe = _load_probe(root / PROBE_FILE, manifest.N)
    params = _load_params(root / PARAMS_FILE, manifest)
    return Bundle(root=root, manifest=manifest, probe=probe, params=params, source=source)


def _check_files(root: Path, manifest: Manifest) -> None:
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {MANIFEST_FILE}
    for rel in sorted(present | set(manifest.files)):
        if rel.lower().endswith(PICKLE_SUFFIXES):
            raise BundleError(f"{rel}: pickle files are never loaded from a bundle (suffix "
                              f"{PurePosixPath(rel).suffix}); remove it and re-export")
    for rel in sorted(set(manifest.files) - present):
        raise BundleError(f"{rel}: missing file listed in {MANIFEST_FILE}; copy the whole bundle again")
    for rel in sorted(present - set(manifest.files)):
        raise BundleError(f"{rel}: file not listed in {MANIFEST_FILE} (no checksum to verify it); "
                          "remove it or re-export the bundle")
    triton = triton_model_path(manifest.name, manifest.version)
    if manifest.files.get(triton, manifest.files[ONNX_FILE]) != manifest.files[ONNX_FILE]:
        raise BundleError(f"{triton}: must be a copy of {ONNX_FILE} (same sha256 in {MANIFEST_FILE}); re-export")
    for rel, expected in sorted(manifest.files.items()):
        actual = sha256_file(root / rel)
        if actual != expected:
            raise BundleError(f"{rel}: checksum mismatch, sha256 must be {expected}, got {actual}; the file "
                              "was changed or truncated, copy the bundle again or re-export it")


def _check_onnx(path: Path, manifest: Manifest) -> None:
    import onnx  # numpy + onnx only; onnx is a core dependency

    rel = path.name
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and friends
        raise BundleError(f"{rel}: cannot be parsed as ONNX ({error}); re-export the bundle") from None
    if any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer):
        raise BundleError(f"{rel}: must hold its weights inline, got external data references; "
                          "re-export (the exporter writes external_data=False)")
    for group, declared, specs in (("inputs", model.graph.input, manifest.inputs),
                                   ("outputs", model.graph.output, manifest.outputs)):
        graph = [_onnx_spec(v) for v in declared]
        if [g.name for g in graph] != [s.name for s in specs]:
            raise BundleError(f"{rel}: graph {group} must be {[s.name for s in specs]} as in "
                              f"{MANIFEST_FILE}, got {[g.name for g in graph]}; re-export the bundle")
        for got, spec in zip(graph, specs):
            if got != spec:
                raise BundleError(f"{rel}: shape mismatch for `{spec.name}`, {MANIFEST_FILE} says "
                                  f"{spec.dtype} {list(spec.shape)}, the graph declares {got.dtype} "
                                  f"{list(got.shape)}; re-export the bundle")


def _onnx_spec(value: Any) -> TensorSpec:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else BATCH_DIM
                 for d in tensor.shape.dim)
    return TensorSpec(name=value.name, shape=dims, dtype=_ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type)))


def _load_probe(path: Path, N: int) -> np.ndarray:  # noqa: N803
    try:
        probe = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise BundleError(f"{PROBE_FILE}: must be a plain complex64 array, got one that needs pickle to load "
                          f"({error}); re-export the bundle") from None
    except OSError as error:
        raise BundleError(f"{PROBE_FILE}: cannot be read as .npy ({error}); re-export the bundle") from None
    if probe.dtype != np.complex64 or probe.ndim not in (2, 3) or probe.shape[-2:] != (N, N):
        raise BundleError(f"{PROBE_FILE}: shape mismatch, must be complex64 (N,N) or (P,N,N) with N={N}, got "
                          f"{probe.dtype} {probe.shape}; re-export the bundle")
    return probe.reshape((-1, N, N))


def _load_params(path: Path, manifest: Manifest) -> dict[str, Any]:
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{PARAMS_FILE}: is not valid JSON ({error}); re-export the bundle") from None
    if not isinstance(params, dict):
        raise BundleError(f"{PARAMS_FILE}: must hold a JSON object, got {type(params).__name__}")
    for key in ("N", "gridsize"):
        if key in params and params[key] != getattr(manifest, key):
            raise BundleError(f"{PARAMS_FILE}: `{key}` must equal the manifest's {getattr(manifest, key)}, got "
                              f"{params[key]!r}; re-export the bundle")
    return params


def summarize(bundle: Bundle) -> str:
    """Human-readable multi-line summary (``ptychopinn inspect BUNDLE``)."""
    m = bundle.manifest
    p = m.provenance
    lines = [
        f"bundle     {bundle.source}",
        f"model      {m.name} v{m.version} (format {m.format} v{m.format_version}, ONNX opset {m.opset})",
        f"geometry   N={m.N} gridsize={m.gridsize} C={m.channels} stitch_M={m.stitch_M}",
        *(f"input      {s.name} {s.dtype} {list(s.shape)}" for s in m.inputs),
        *(f"output     {s.name} {s.dtype} {list(s.shape)}" for s in m.outputs),
        f"scale      {m.normalization.rule}; training value {m.normalization.training_scale:.6g}, "
        f"default policy {m.normalization.default_policy}",
        f"intensity  {m.intensity_scale:.6g}",
        f"probe      {bundle.probe.shape[0]} mode(s), {bundle.probe.shape[1]}x{bundle.probe.shape[2]} complex64",
        f"coords     {m.coordinates}",
        f"made       {p.created} by ptychopinn-serve {p.package_version} (torch {p.torch_version}, onnx "
        f"{p.onnx_version}, commit {p.git_commit or 'unknown'})",
        f"trained on sha256 {p.train_data_sha256 or 'unknown'}",
        f"verified   on {m.verification.n_samples} samples of {m.verification.inputs}, tolerance "
        f"{m.verification.tolerance:g}:",
        *(f"  {engine:<18} max|d amplitude| {e.amplitude:.3g}  max|d phase| {e.phase:.3g}"
          for engine, e in sorted(m.verification.errors.items())),
        f"variants   {', '.join(f'{k}={v}' for k, v in sorted(m.variants.items())) or 'none'}",
        f"files      {len(m.files)} checksummed: {', '.join(sorted(m.files))}",
    ]
    return "\n".join(lines)

