"""The model repository: several models and versions served at once, loaded and unloaded while serving.

Triton's layout and semantics (model repository extension): ``ROOT/<model>/<version>/`` holds one
bundle folder per integer version (``ROOT/<model>/<version>.zip`` works too). ``load(model)`` reads
the model's folder again and serves every version found; a model already served is **replaced**, not
changed: the new versions are built and warmed up beside the old ones, then swapped in with one
assignment, so a request either runs wholly on the old version or wholly on the new one and none
fails. If anything in the new set fails to load, nothing is swapped: the old versions stay served
and the error says which file was wrong. Without a root (``ptychopinn serve --bundle``), the one
bundle's own path is what ``load`` reads again.

A :class:`ModelVersion` is immutable once built. Requests and live sessions hold a lease on the one
they started with; a replaced or unloaded version stops taking new requests at once and its batcher
is closed when the last lease ends (:meth:`ModelRepository.reap`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptycho_torch.bundle import Bundle, load_bundle
from ptycho_torch.bundle.triton import tensor_entry
from ptycho_torch.errors import PtychoError
from serving.batching import DynamicBatcher
from serving.engine import Engine
from serving.errors import InvalidRequest, ModelNotFound
from serving.protocol_v2 import TensorMetadata

__all__ = ["InferenceStats", "ModelLoadError", "ModelRepository", "ModelVersion", "bundle_versions"]

log = logging.getLogger(__name__)

BuildModel = Callable[[str, str, Bundle], "ModelVersion"]


class ModelLoadError(InvalidRequest):
    """A ``load`` that failed; the versions served before stay served."""


@dataclass
class _Counter:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += round(seconds * 1e9)

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class InferenceStats:
    """Triton's per-version inference statistics (statistics extension), thread-safe.

    ``success``/``fail``: infer requests and their end-to-end time; ``queue``: time in the batcher
    queue; ``compute_infer``: the batch execution each request took part in; batch statistics per
    executed batch size. Times in nanoseconds, ``last_inference`` in ms since the epoch.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.success, self.fail, self.queue, self.compute_infer = _Counter(), _Counter(), _Counter(), _Counter()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self._batches: dict[int, _Counter] = {}

    def observe_request(self, ok: bool, seconds: float) -> None:
        with self._lock:
            (self.success if ok else self.fail).add(seconds)
            self.last_inference_ms = int(time.time() * 1000)

    def observe_batch(self, size: int, queue_s: list[float], compute_s: float) -> None:
        """The batcher's observer: ``size`` items of ``len(queue_s)`` requests ran in ``compute_s``."""
        with self._lock:
            self.inference_count += size
            self.execution_count += 1
            for seconds in queue_s:
                self.queue.add(seconds)
            self.compute_infer.add(compute_s * len(queue_s), len(queue_s))
            self._batches.setdefault(size, _Counter()).add(compute_s)

    def to_json(self, name: str, version: str) -> dict[str, Any]:
        zero = {"count": 0, "ns": 0}
        with self._lock:
            return {
                "name": name, "version": version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {"success": self.success.to_json(), "fail": self.fail.to_json(),
                                    "queue": self.queue.to_json(), "compute_input": dict(zero),
                                    "compute_infer": self.compute_infer.to_json(), "compute_output": dict(zero)},
                "batch_stats": [{"batch_size": size, "compute_input": dict(zero), "compute_infer": c.to_json(),
                                 "compute_output": dict(zero)} for size, c in sorted(self._batches.items())],
            }


@dataclass(frozen=True, eq=False)
class ModelVersion:
    """One served version of a model: its engine, batcher, statistics and the metadata built once at load."""

    name: str
    version: str
    source: Path
    engine: Engine
    batcher: DynamicBatcher
    stats: InferenceStats
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]
    parameters: dict[str, Any]
    """OIP metadata ``parameters``: providers, max_batch_size and :meth:`ModelFacts.to_parameters`
    (N, gridsize, stitch_M, ...)."""
    _leases: list[int] = field(default_factory=lambda: [0], repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, name: str, version: str, source: Path, engine: Engine, batcher: DynamicBatcher,
               stats: InferenceStats) -> ModelVersion:
        """Describe ``engine`` (served through ``batcher``) as model ``name`` version ``version``: the OIP
        tensors are the manifest's, the ``parameters`` the serving knobs plus the model's facts."""
        manifest = engine.bundle.manifest
        return cls(
            name=name, version=version, source=Path(source), engine=engine, batcher=batcher, stats=stats,
            inputs=tuple(map(TensorMetadata.of, manifest.inputs)),
            outputs=tuple(map(TensorMetadata.of, manifest.outputs)),
            parameters={"providers": engine.providers, "max_batch_size": batcher.max_batch_size,
                        **engine.bundle.facts.to_parameters()},
        )

    @property
    def bundle(self) -> Bundle:
        return self.engine.bundle

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        """The OIP model metadata, listing the model's served ``versions``."""
        return {"name": self.name, "versions": versions, "platform": "onnxruntime_onnx",
                "inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs],
                "parameters": self.parameters}

    def config(self, versions: list[str]) -> dict[str, Any]:
        """Triton's model configuration (JSON form of ``config.pbtxt``, the same tensor entries) as served here."""
        manifest = self.bundle.manifest
        gpu = any(p != "CPUExecutionProvider" for p in self.engine.providers[:1])
        return {
            "name": self.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
            "max_batch_size": self.batcher.max_batch_size,
            "version_policy": {"specific": {"versions": [int(v) for v in versions]}},
            "input": [tensor_entry(t) for t in manifest.inputs], "output": [tensor_entry(t) for t in manifest.outputs],
            "dynamic_batching": {"max_queue_delay_microseconds": round(self.batcher.max_queue_delay_s * 1e6),
                                 "default_queue_policy": {"max_queue_size": self.batcher.max_queue_size}},
            "instance_group": [{"name": self.name, "kind": "KIND_GPU" if gpu else "KIND_CPU", "count": 1}],
            "parameters": {key: {"string_value": str(value)} for key, value in self.parameters.items()},
        }

    def _lease(self, delta: int) -> int:
        with self._lock:
            self._leases[0] += delta
            return self._leases[0]

    @property
    def leases(self) -> int:
        return self._lease(0)


def bundle_versions(model_dir: Path) -> dict[str, Path]:
    """The versions in a repository model folder: integer-named bundle folders or ``<version>.zip`` files."""
    found: dict[str, Path] = {}
    for entry in sorted(model_dir.iterdir()):
        version = entry.stem if entry.suffix == ".zip" else entry.name
        if version.isdigit() and (entry.is_dir() or entry.suffix == ".zip"):
            found[str(int(version))] = entry
    return found


def _by_version(versions: dict[str, ModelVersion]) -> list[str]:
    return sorted(versions, key=int)


class ModelRepository:
    """Served models by name and version. ``build(name, version, bundle)`` makes a :class:`ModelVersion`;
    ``root`` is the repository folder (None: only the models given in ``models``, reloaded from their
    own paths). ``in_use(model)`` tells whether something outside HTTP requests (a live session) still
    runs on a retired model."""

    def __init__(self, build: BuildModel, models: list[ModelVersion], *, root: Path | None = None,
                 in_use: Callable[[ModelVersion], bool] = lambda model: False) -> None:
        if not models:
            raise InvalidRequest("a model repository needs at least one model to serve at start")
        self._build = build
        self.root = root
        self._in_use = in_use
        self._served: dict[str, dict[str, ModelVersion]] = {}
        for model in models:
            self._served.setdefault(model.name, {})[model.version] = model
        self.default_name = models[0].name
        """The model ``/v1/reconstruct`` and live sessions use when none is named."""
        self._sources = {m.name: {m.version: m.source} for m in models}
        self._retired: list[ModelVersion] = []
        self._load_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._reasons: dict[str, str] = {}

    # --- serving ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._served)

    def versions(self, name: str) -> list[str]:
        return _by_version(self._served.get(name, {}))

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The served model (latest version when ``version`` is None); :class:`ModelNotFound` otherwise."""
        versions = self._served.get(name)  # one read of the current mapping: a swap replaces it whole
        if not versions:
            raise ModelNotFound(f"model `{name}` is not served here; served models: {self.names()}")
        if version is None:
            return versions[_by_version(versions)[-1]]
        try:
            return versions[version]
        except KeyError:
            raise ModelNotFound(f"model `{name}` has no version `{version}`; served versions: "
                                f"{_by_version(versions)}") from None

    def models(self, name: str) -> list[ModelVersion]:
        """Every served version of ``name``, oldest first; :class:`ModelNotFound` if none is."""
        latest = self.get(name)
        versions = self._served.get(name, {latest.version: latest})
        return [versions[v] for v in _by_version(versions)]

    def default(self) -> ModelVersion:
        """The first model served at start, or (once it is unloaded) the first by name."""
        if self.default_name in self._served:
            return self.get(self.default_name)
        served = self.all()
        if not served:
            raise ModelNotFound("no model is loaded; load one with POST /v2/repository/models/{name}/load")
        return served[0]

    def all(self) -> list[ModelVersion]:
        served = self._served
        return [served[name][v] for name in sorted(served) for v in _by_version(served[name])]

    @contextmanager
    def lease(self, name: str | None, version: str | None = None) -> Iterator[ModelVersion]:
        """The model a request runs on, kept open (not closed by a swap) until the block ends."""
        with self._state_lock:
            model = self.default() if name is None else self.get(name, version)
            model._lease(+1)
        try:
            yield model
        finally:
            model._lease(-1)
            if self._retired:
                self.reap()

    # --- repository extension -------------------------------------------------------------------

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index: every served version ``READY``, known but unloaded models
        ``UNAVAILABLE`` with the reason."""
        entries = [{"name": m.name, "version": m.version, "state": "READY", "reason": ""} for m in self.all()]
        known = set(self._served)
        for name in sorted(set(self._sources) | set(self._on_disk()) - known):
            if name not in known:
                entries.append({"name": name, "version": "", "state": "UNAVAILABLE",
                                "reason": self._reasons.get(name, "unloaded")})
        return entries

    def load_all(self) -> None:
        """Load every model of the repository folder not served yet (Triton's start-up behaviour)."""
        for name in self._on_disk():
            if name not in self._served:
                self.load(name)

    def _on_disk(self) -> list[str]:
        if self.root is None or not self.root.is_dir():
            return []
        return [d.name for d in sorted(self.root.iterdir()) if d.is_dir() and bundle_versions(d)]

    def _find(self, name: str) -> dict[str, Path]:
        if self.root is not None and (self.root / name).is_dir():
            versions = bundle_versions(self.root / name)
            if versions:
                return versions
            raise ModelLoadError(f"model folder `{self.root / name}` holds no version: put bundles in integer-"
                                 "named subfolders (`1/`, `2/`) or as `<version>.zip`")
        if name in self._sources:
            return self._sources[name]
        where = f"in {self.root}" if self.root is not None else "(no --model-repository given)"
        raise ModelNotFound(f"model `{name}` is not in the model repository {where}; known models: "
                            f"{sorted(set(self._sources) | set(self._on_disk()))}")

    def load(self, name: str) -> list[str]:
        """(Re)load every version of ``name``; returns them. On failure the served versions stay."""
        with self._load_lock:
            sources = self._find(name)
            fresh: dict[str, ModelVersion] = {}
            try:
                for version, path in sources.items():
                    fresh[version] = self._build(name, version, load_bundle(path))
            except (PtychoError, OSError) as error:
                for model in fresh.values():
                    model.batcher.close()
                self._reasons[name] = f"load failed: {error}"
                kept = self.versions(name)
                raise ModelLoadError(f"failed to load model `{name}`: {error}; "
                                     + (f"still serving versions {kept}" if kept else "the model is not served")
                                     ) from None
            self.swap(name, fresh)
            self._sources[name] = dict(sources)
        return _by_version(fresh)

    def swap(self, name: str, fresh: dict[str, ModelVersion]) -> None:
        """Serve ``fresh`` (version -> model) as ``name`` from now on, in one step; the versions served
        before retire (closed once no request or session uses them)."""
        with self._state_lock:
            old = self._served.get(name, {})
            self._served = {**self._served, name: dict(fresh)}
            self._retired.extend(m for m in old.values() if m not in fresh.values())
        self._reasons.pop(name, None)
        log.info("serving model %s versions %s%s", name, _by_version(fresh),
                 f" (replacing {_by_version(old)})" if old else "")
        self.reap()

    def unload(self, name: str) -> None:
        """Stop serving ``name``: new requests get 404, requests in progress finish."""
        with self._load_lock, self._state_lock:
            if name not in self._served:
                raise ModelNotFound(f"model `{name}` is not loaded; loaded models: {self.names()}")
            served = {k: v for k, v in self._served.items() if k != name}
            self._retired.extend(self._served[name].values())
            self._served = served
            self._reasons[name] = "unloaded"
        log.info("unloaded model %s", name)
        self.reap()

    def reap(self) -> None:
        """Close the batchers of retired versions that no request or session uses any more."""
        with self._state_lock:
            done = [m for m in self._retired if m.leases == 0 and not self._in_use(m)]
            self._retired = [m for m in self._retired if m not in done]
        for model in done:
            model.batcher.close()
            log.info("closed %s v%s", model.name, model.version)

    def close(self) -> None:
        """Close every batcher (served and retired): the app is shutting down."""
        with self._state_lock:
            models = [*self.all(), *self._retired]
            self._served, self._retired = {}, []
        for model in models:
            model.batcher.close()
