"""The bundle reader: validate a bundle directory or ``.zip`` and hold its parts.

Reading uses numpy and onnx (onnxruntime only to ask whether it can load the graph). Nothing is ever unpickled: ``.npy`` files load with
``allow_pickle=False`` and files with pickle suffixes are refused; symbolic links are refused (a
bundle is plain files). A ``.zip`` is extracted (after checking every member name and the total
size) into a temporary directory that lives as long as the :class:`Bundle`: it is removed when the
bundle is garbage-collected or the process exits (normally, on SIGTERM through the server's
graceful shutdown, on Ctrl+C), and a copy left behind by a killed process is removed by the next
``.zip`` load on the machine (:func:`remove_stale_extractions`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

import numpy as np

from ptycho_torch.bundle.dtypes import by_onnx
from ptycho_torch.bundle.runtime import DEFAULT_DOMAIN, check_runtime, graph_requirements
from ptycho_torch.bundle.schema import (
    BAD_PIXELS_FILE,
    BATCH_DIM,
    MANIFEST_FILE,
    ONNX_FILE,
    PARAMS_FILE,
    PROBE_FILE,
    Manifest,
    TensorSpec,
    triton_model_path,
)
from ptycho_torch.bundle.signing import SIGNATURE_FILE, trusted_keys_from_env, verify_signature
from ptycho_torch.checksums import sha256_file
from ptycho_torch.errors import BundleError
from ptycho_torch.grouping import default_neighbor_count
from ptycho_torch.model_facts import ModelFacts

PICKLE_SUFFIXES: Final = (".pkl", ".pickle", ".pt", ".pth", ".dill", ".joblib", ".ckpt")
MAX_ZIP_BYTES: Final = 4 << 30
EXTRACTION_PREFIX: Final = "ptychopinn-bundle-"
"""Unpacked ``.zip`` bundles live in ``$TMPDIR/ptychopinn-bundle-<pid>-<random>``."""

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
    signed: bool = False
    """The bundle carries ``manifest.json.sig``."""
    signed_by: str | None = None
    """Id of the trusted key that verified the signature (None: not verified, no trusted keys given)."""
    bad_pixels: np.ndarray | None = None
    """The detector's bad-pixel mask, (N, N) bool, from ``bad_pixels.npy`` when the bundle has one:
    masked in every scan reconstructed with this model (:func:`ptycho_torch.pipeline.reconstruct`)."""

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def N(self) -> int:  # the project-wide name of the patch size
        return self.manifest.N

    @property
    def gridsize(self) -> int:
        return self.manifest.gridsize

    @property
    def channels(self) -> int:
        return self.manifest.channels

    @property
    def training_scale(self) -> float:
        """The normalisation scalar measured on the training data (the ``bundle`` policy)."""
        return self.manifest.normalization.training_scale

    @property
    def intensity_scale(self) -> float:
        return self.manifest.intensity_scale

    @property
    def stitch_M(self) -> int:
        return self.manifest.stitch_M

    @property
    def neighbor_count(self) -> int:
        """K the model was trained with (the reconstruct default): the manifest's, or
        :func:`~ptycho_torch.grouping.default_neighbor_count` of C for bundles that do not record it."""
        m = self.manifest
        return default_neighbor_count(m.channels) if m.neighbor_count is None else m.neighbor_count

    @property
    def pixel_size_m(self) -> float | None:
        """Object pixel size of the training data in metres, or None when unknown."""
        return self.manifest.pixel_size_m

    @property
    def onnx_path(self) -> Path:
        return self.root / ONNX_FILE

    @functools.cached_property
    def facts(self) -> ModelFacts:
        """What reconstructing with this bundle needs (the pipeline's and the plan's view of it)."""
        m = self.manifest
        return ModelFacts(name=m.name, version=str(m.version), N=m.N, gridsize=m.gridsize, stitch_M=m.stitch_M,
                          training_scale=m.normalization.training_scale, neighbor_count=self.neighbor_count,
                          default_scale_policy=m.normalization.default_policy, pixel_size_m=m.pixel_size_m,
                          probe=self.probe, bad_pixels=self.bad_pixels)


def load_bundle(path: str | Path, *, trusted_keys: Sequence[str | Path] | None = None) -> Bundle:
    """Read and validate a bundle directory or ``.zip``; raise :class:`BundleError` on any problem.

    ``trusted_keys``: Ed25519 public key files (default: ``$PTYCHOPINN_TRUSTED_KEYS``); when there
    are any, the bundle must carry a signature one of them verifies (:mod:`.signing`).

    Checks, in order: the signature (with trusted keys); the manifest's schema and format version; that no file needs unpickling; that
    every listed file exists with its recorded sha256 and no unlisted file is present; the ONNX
    graph's inputs/outputs against the manifest, and that the installed onnxruntime can load it
    (:mod:`.runtime`); the probe's dtype and shape; the params snapshot.
    """
    source = Path(path)
    keys = tuple(trusted_keys_from_env() if trusted_keys is None else trusted_keys)
    if source.is_dir():
        return _load_dir(source, source, keys)
    if source.is_file() and source.suffix == ".zip":
        remove_stale_extractions()
        tmp = Path(tempfile.mkdtemp(prefix=f"{EXTRACTION_PREFIX}{os.getpid()}-"))
        try:
            _extract_zip(source, tmp)
            bundle = _load_dir(tmp, source, keys)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        weakref.finalize(bundle, shutil.rmtree, tmp, True)
        return bundle
    if source.exists():
        raise BundleError(f"bundle `{source}` must be a directory or a .zip file; pass the folder written by "
                          "`ptychopinn export` or its --zip archive")
    raise BundleError(f"bundle `{source}` does not exist; check the path")


def remove_stale_extractions(directory: str | Path | None = None) -> list[Path]:
    """Delete the unpacked ``.zip`` bundles left in ``directory`` (default: the temporary directory)
    by processes that no longer run (killed with SIGKILL, out of memory, power loss); returns them.

    Each extraction is named after its process id, so a live process' copy is never touched.
    """
    removed = []
    for folder in Path(directory or tempfile.gettempdir()).glob(f"{EXTRACTION_PREFIX}*-*"):
        pid = folder.name[len(EXTRACTION_PREFIX):].partition("-")[0]
        if pid.isdigit() and not _process_alive(int(pid)) and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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


def _load_dir(root: Path, source: Path, trusted_keys: tuple[str | Path, ...]) -> Bundle:
    present = _present_files(root)
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{source}: missing file {MANIFEST_FILE}; pass the folder written by `ptychopinn export`")
    manifest_bytes = manifest_path.read_bytes()
    signed_by = verify_signature(root, manifest_bytes, trusted_keys, source=source) if trusted_keys else None
    manifest = Manifest.from_json(manifest_bytes.decode("utf-8", errors="replace"))
    _check_files(root, manifest, present)
    for rel in (ONNX_FILE, *manifest.variants.values()):
        _check_onnx(root / rel, manifest)
    probe = _load_probe(root / PROBE_FILE, manifest.N)
    params = _load_params(root / PARAMS_FILE, manifest)
    bad_pixels = _load_bad_pixels(root / BAD_PIXELS_FILE, manifest.N) if BAD_PIXELS_FILE in manifest.files else None
    return Bundle(root=root, manifest=manifest, probe=probe, params=params, source=source,
                  signed=(root / SIGNATURE_FILE).is_file(), signed_by=signed_by, bad_pixels=bad_pixels)


def _present_files(root: Path) -> set[str]:
    """Bundle-relative paths of every file under ``root``; a symbolic link anywhere is refused."""
    present: set[str] = set()
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(folder, name)
            if path.is_symlink():
                raise BundleError(f"{path.relative_to(root).as_posix()}: symbolic links are never followed in a "
                                  "bundle; copy the bundle with real files (cp -rL) or re-export it")
        present.update(Path(folder, name).relative_to(root).as_posix() for name in files)
    return present - {MANIFEST_FILE, SIGNATURE_FILE}


def _check_files(root: Path, manifest: Manifest, present: set[str]) -> None:
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
    except Exception as error:  # noqa: BLE001 - onnx raises DecodeError and friends, no common base
        raise BundleError(f"{rel}: cannot be parsed as ONNX ({error}); re-export the bundle") from None
    if any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer):
        raise BundleError(f"{rel}: must hold its weights inline, got external data references; "
                          "re-export (the exporter writes external_data=False)")
    manifest.check_graph(rel, [_onnx_spec(v) for v in model.graph.input], [_onnx_spec(v) for v in model.graph.output])
    check_runtime(model, rel)
    _check_opset(model, rel, manifest.opset)


def _check_opset(model: Any, rel: str, declared: int) -> None:
    """Refuse a graph whose default-domain (``ai.onnx``) opset is not the manifest's ``opset``."""
    ir_version, opsets = graph_requirements(model)
    stamped = dict(opsets).get(DEFAULT_DOMAIN)
    if stamped != declared:
        raise BundleError(f"{rel}: {MANIFEST_FILE} says ONNX opset {declared}, the graph is stamped with opset "
                          f"{stamped} (IR version {ir_version}); re-export the bundle (ptychopinn export --opset N)")


def _onnx_spec(value: Any) -> TensorSpec:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else BATCH_DIM
                 for d in tensor.shape.dim)
    dtype = by_onnx(tensor.elem_type)
    return TensorSpec(name=value.name, shape=dims, dtype=str(tensor.elem_type) if dtype is None else dtype.name)


def _load_probe(path: Path, N: int) -> np.ndarray:
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


def _load_bad_pixels(path: Path, N: int) -> np.ndarray:
    try:
        mask = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise BundleError(f"{BAD_PIXELS_FILE}: cannot be read as a plain .npy ({error}); re-export the bundle") from None
    if mask.dtype != np.bool_ or mask.shape != (N, N):
        raise BundleError(f"{BAD_PIXELS_FILE}: must be a bool ({N}, {N}) mask, got {mask.dtype} {mask.shape}; "
                          "re-export the bundle with --bad-pixel-mask")
    return mask


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
        f"geometry   N={m.N} gridsize={m.gridsize} C={m.channels} stitch_M={m.stitch_M} "
        f"neighbor_count={bundle.neighbor_count}{'' if m.neighbor_count is not None else ' (default, not recorded)'}",
        *(f"input      {s.name} {s.dtype} {list(s.shape)}" for s in m.inputs),
        *(f"output     {s.name} {s.dtype} {list(s.shape)}" for s in m.outputs),
        f"scale      {m.normalization.rule}; training value {m.normalization.training_scale:.6g}, "
        f"default policy {m.normalization.default_policy}",
        f"intensity  {m.intensity_scale:.6g}",
        f"probe      {bundle.probe.shape[0]} mode(s), {bundle.probe.shape[1]}x{bundle.probe.shape[2]} complex64",
        f"coords     {m.coordinates}",
        f"pixel      {'unknown' if m.pixel_size_m is None else f'{m.pixel_size_m:.4g} m'} (object pixel size of the training data)",
        f"made       {p.created} by ptychopinn-serve {p.package_version} (torch {p.torch_version}, onnx "
        f"{p.onnx_version}, commit {p.git_commit or 'unknown'})",
        f"trained on sha256 {p.train_data_sha256 or 'unknown'}",
        f"verified   on {m.verification.n_samples} samples of {m.verification.inputs}, tolerance "
        f"{m.verification.tolerance:g}:",
        *(f"  {engine:<18} max|d amplitude| {e.amplitude:.3g}  max|d phase| {e.phase:.3g}"
          for engine, e in sorted(m.verification.errors.items())),
        f"variants   {', '.join(f'{k}={v}' for k, v in sorted(m.variants.items())) or 'none'}",
        f"files      {len(m.files)} checksummed: {', '.join(sorted(m.files))}",
        "signature  " + (f"verified, trusted key {bundle.signed_by}" if bundle.signed_by else
                         "present, not verified (no trusted keys given)" if bundle.signed else "none"),
    ]
    return "\n".join(lines)

