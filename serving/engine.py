"""One onnxruntime session per bundle: providers chosen at start, fixed batch shapes, warm-up.

The engine runs ``diffraction (B, C, N, N)`` + ``scale (B,)`` -> ``amplitude``, ``phase`` for any
``B``: it cuts the input into chunks of at most ``max_batch_size`` and pads a short chunk up to the
next of its :attr:`Engine.batch_sizes` (powers of two, plus ``max_batch_size``), so the session only
ever sees shapes it ran during warm-up. That matters on GPUs, where the first run of a new shape
pays cuDNN's algorithm search or a TensorRT engine build (seconds); on a CPU the padding costs at
most one partly empty batch per call. ``Session.run`` is thread-safe, and so is the engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from ptycho_torch.bundle import BATCH_DIM, TensorSpec
from ptycho_torch.bundle.dtypes import by_ort
from ptycho_torch.bundle.runtime import runtime_version, short_reason
from ptycho_torch.errors import BundleError, ConfigError
from serving.config import DEFAULTS, ServingConfig
from serving.errors import InvalidRequest

if TYPE_CHECKING:
    from ptycho_torch.bundle import Bundle
    from ptycho_torch.model_facts import ModelFacts

__all__ = ["AUTO_PROVIDERS", "Engine", "select_providers"]

log = logging.getLogger(__name__)

AUTO_PROVIDERS: tuple[str, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
"""Preference order when no providers are given: the first ones this onnxruntime build has win."""

_SHORT_NAMES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
                "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def select_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Execution providers in priority order: ``requested`` (checked) or the best available.

    Short names ``tensorrt``/``cuda``/``cpu`` are accepted. CPU is always appended as the fallback
    for nodes a GPU provider cannot run.
    """
    available = ort.get_available_providers()
    if not requested:
        chosen = [p for p in AUTO_PROVIDERS if p in available]
    else:
        chosen = [_SHORT_NAMES.get(p.lower(), p) for p in requested]
        missing = [p for p in chosen if p not in available]
        if missing:
            raise ConfigError(
                f"`providers` must be available in this onnxruntime build, got {missing}; available: "
                f"{available} (install the `gpu` extra, onnxruntime-gpu, for CUDA/TensorRT)"
            )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    sizes = {max_batch_size}
    size = 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


class Engine:
    """An onnxruntime session for one bundle, with the bundle's I/O contract checked at load.

    ``providers``: execution providers in priority order (``None``: TensorRT, CUDA, CPU, whichever
    are available). ``intra_op_threads``: onnxruntime's intra-op pool (``None``: its default, one per
    physical core). ``cpu_mem_arena``: keep onnxruntime's CPU arena (faster first allocations, much
    more resident memory after large batches). ``warmup``: run every batch shape once now. Defaults
    of the serving knobs: :data:`serving.config.DEFAULTS`; :meth:`from_config` reads a whole
    :class:`~serving.config.ServingConfig`.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        providers: Sequence[str] | None = DEFAULTS.providers,
        max_batch_size: int = DEFAULTS.max_batch_size,
        intra_op_threads: int | None = DEFAULTS.intra_op_threads,
        cpu_mem_arena: bool = False,
        cache_dir: str | Path | None = None,
        warmup: bool = True,
    ) -> None:
        if not (isinstance(max_batch_size, int) and max_batch_size >= 1):
            raise ConfigError(f"`max_batch_size` must be a positive integer, got {max_batch_size!r}")
        if intra_op_threads is not None and intra_op_threads < 1:
            raise ConfigError(f"`intra_op_threads` must be >= 1 or None (onnxruntime default), got {intra_op_threads!r}")
        self.bundle = bundle
        self.max_batch_size = max_batch_size
        self.batch_sizes = _batch_sizes(max_batch_size)
        self.input_shape = (bundle.channels, bundle.N, bundle.N)
        """Shape of one item of ``diffraction``: ``(C, N, N)``."""
        self.input_names = tuple(spec.name for spec in bundle.manifest.inputs)
        """The graph's inputs ``(diffraction, scale)`` by the manifest's names (the signature)."""
        self.output_names = [spec.name for spec in bundle.manifest.outputs]
        """The graph's outputs ``[amplitude, phase]`` by the manifest's names."""

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = cpu_mem_arena
        options.inter_op_num_threads = 1
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        # idle intra-op threads sleep instead of spinning: several sessions (or a busy host) share cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        requested = select_providers(providers)
        try:
            self.session = ort.InferenceSession(
                str(bundle.onnx_path), sess_options=options,
                providers=[(p, self._provider_options(p, cache_dir)) for p in requested],
            )
        except Exception as error:  # noqa: BLE001 - onnxruntime's pybind errors: one line, never its C++ trace
            raise BundleError(f"{bundle.onnx_path.name}: the installed {runtime_version()} cannot load the graph "
                              f"({short_reason(str(error))}); check the bundle with `ptychopinn inspect`, "
                              "upgrade onnxruntime or re-export the bundle") from None
        self.providers: list[str] = self.session.get_providers()
        """Providers the session actually uses, in priority order."""
        if providers and self.providers[0] != requested[0]:
            raise ConfigError(
                f"`providers` asked for {requested[0]} but onnxruntime fell back to {self.providers}; "
                f"check the CUDA/TensorRT libraries on this host or pass --providers cpu"
            )
        if self.providers[0] != requested[0]:
            log.warning("onnxruntime could not start %s; running on %s", requested[0], self.providers)
        self._check_io()
        log.info("engine %s v%s on %s, batch sizes %s", bundle.name, bundle.version, self.providers,
                 self.batch_sizes)
        self.warmup_s: float | None = None
        if warmup:
            self.warm_up()

    @classmethod
    def from_config(cls, bundle: Bundle, config: ServingConfig, **options: object) -> Engine:
        """The engine of ``bundle`` with ``config``'s providers, batch size and threads (``options``:
        the other keywords of the constructor)."""
        return cls(bundle, providers=config.providers, max_batch_size=config.max_batch_size,
                   intra_op_threads=config.intra_op_threads, **options)  # type: ignore[arg-type]

    def _provider_options(self, provider: str, cache_dir: str | Path | None) -> dict[str, object]:
        if provider != "TensorrtExecutionProvider":
            return {}
        shapes = {size: _trt_shapes(self.bundle.manifest.inputs, size) for size in (1, self.max_batch_size)}
        options: dict[str, object] = {
            "trt_profile_min_shapes": shapes[1],
            "trt_profile_opt_shapes": shapes[self.max_batch_size],
            "trt_profile_max_shapes": shapes[self.max_batch_size],
        }
        if cache_dir is not None:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        return options

    def _check_io(self) -> None:
        """The session's inputs and outputs must be the manifest's (the reader's check, :class:`BundleError`)."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.bundle.manifest.check_graph(self.bundle.onnx_path.name, [_session_spec(a) for a in inputs],
                                         [_session_spec(a) for a in outputs])

    def warm_up(self) -> float:
        """Run every batch shape once (so no request pays a first-shape cost); returns seconds taken."""
        start = time.perf_counter()
        for size in self.batch_sizes:
            self._run_padded(np.full((size, *self.input_shape), 0.5, np.float32), np.ones(size, np.float32))
        self.warmup_s = time.perf_counter() - start
        log.info("warm-up of %d batch shapes took %.2f s", len(self.batch_sizes), self.warmup_s)
        return self.warmup_s

    def check_inputs(self, diffraction: np.ndarray, scale: np.ndarray) -> None:
        """Raise :class:`InvalidRequest` unless ``diffraction`` is ``(B, C, N, N)`` float32 and ``scale`` ``(B,)``."""
        diffraction_name, scale_name = self.input_names
        if diffraction.dtype != np.float32 or scale.dtype != np.float32:
            raise InvalidRequest(f"`{diffraction_name}` and `{scale_name}` must be float32 (FP32), got "
                                 f"{diffraction.dtype} and {scale.dtype}")
        if diffraction.ndim != 4 or diffraction.shape[1:] != self.input_shape:
            raise InvalidRequest(
                f"`{diffraction_name}` must have shape (B, {', '.join(map(str, self.input_shape))}) for model "
                f"{self.bundle.name!r}, got {list(diffraction.shape)}"
            )
        if scale.shape != (diffraction.shape[0],):
            raise InvalidRequest(f"`{scale_name}` must have shape ({diffraction.shape[0]},), one value per "
                                 f"{diffraction_name} item, got {list(scale.shape)}")

    def run(
        self, diffraction: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """``amplitude, phase`` ``(B, C, N, N)`` for ``diffraction`` ``(B, C, N, N)`` and ``scale`` ``(B,)``."""
        self.check_inputs(diffraction, scale)
        diffraction, scale = np.ascontiguousarray(diffraction), np.ascontiguousarray(scale)
        B = diffraction.shape[0]
        if B <= self.max_batch_size:
            return self._run_padded(diffraction, scale)
        amplitude = np.empty(diffraction.shape, np.float32)
        phase = np.empty(diffraction.shape, np.float32)
        for start in range(0, B, self.max_batch_size):
            chunk = slice(start, start + self.max_batch_size)
            amplitude[chunk], phase[chunk] = self._run_padded(diffraction[chunk], scale[chunk])
        return amplitude, phase

    infer = run
    """Same as :meth:`run`; the name the pipeline calls on an engine or a batcher."""

    @property
    def model(self) -> ModelFacts:
        """The served model's facts (what the pipeline's :class:`~ptycho_torch.pipeline.Runner` has)."""
        return self.bundle.facts

    def _run_padded(
        self, diffraction: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        B = diffraction.shape[0]
        if B == 0:
            empty = np.empty((0, *self.input_shape), np.float32)
            return empty, empty.copy()
        size = next(s for s in self.batch_sizes if s >= B)
        if size != B:
            diffraction = np.concatenate([diffraction, np.zeros((size - B, *self.input_shape), np.float32)])
            scale = np.concatenate([scale, np.ones(size - B, np.float32)])
        feeds = dict(zip(self.input_names, (diffraction, scale), strict=True))
        amplitude, phase = self.session.run(self.output_names, feeds)
        return amplitude[:B], phase[:B]


def _trt_shapes(specs: Sequence[TensorSpec], size: int) -> str:
    """TensorRT's profile shapes of ``specs`` at batch ``size``: ``diffraction:8x1x64x64,scale:8``."""
    return ",".join(f"{spec.name}:" + "x".join(str(size if d == BATCH_DIM else d) for d in spec.shape)
                    for spec in specs)


def _session_spec(arg: ort.NodeArg) -> TensorSpec:
    """An onnxruntime input or output as the manifest writes it (a dynamic axis as ``"B"``)."""
    dtype = by_ort(arg.type)
    return TensorSpec(name=arg.name, dtype=arg.type if dtype is None else dtype.name,
                      shape=tuple(d if isinstance(d, int) and d > 0 else BATCH_DIM for d in arg.shape))
