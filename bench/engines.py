"""Inference engines on one bundle: torch eager vs TorchScript vs onnxruntime (CPU, and CUDA when a
GPU is present), patterns/s.

One bundle is exported (random weights of the default architecture: speed does not depend on the
weights) and the generator it came from (torch eager), its ``model.ts`` and its ``model.onnx`` are
timed on the same real patterns (the Siemens-star scan cropped to N), with the same thread count,
one engine at a time (ORT's spinning threads would otherwise steal cores). It also measures the
offline copy of the graph optimised by onnxruntime (``ORT_ENABLE_ALL`` saved to disk): session
load time and speed. Run with ``python -m bench engines [--quick]``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from bench.machine import NO_GPU
from bench.timing import median_seconds
from export.bundle_writer import export_bundle
from export.default_bundle import REAL_SCAN
from export.options import ExportOptions
from export.verify import Run, ort_runner, torch_runner, verification_inputs
from ptycho_torch.checkpoint import CheckpointRecord
from ptycho_torch.config import ModelConfig, TrainingConfig
from ptycho_torch.model import PtychoPINNGenerator

SIZES = {"smoke": ((1, 16), 1, 0.0), "quick": ((1, 16, 64), 3, 0.0), "full": ((1, 16, 64, 128), 5, 1.0)}
"""Per mode: batch sizes, minimum timed calls per cell, minimum timed seconds per cell."""
MODEL = {"N": 64, "gridsize": 1, "n_filters_scale": 2}
THREADS = 2
WARMUP = 2  # TorchScript's profiling executor optimises a graph on its second call at a shape
CUDA_ROW = "onnxruntime CUDA"


def ort_session(path: Path, level: ort.GraphOptimizationLevel, *, provider: str = "CPUExecutionProvider",
                save_to: Path | None = None) -> ort.InferenceSession:
    """A session with :data:`THREADS` intra-op threads (optionally saving the optimised graph)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    options.graph_optimization_level = level
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
    return ort.InferenceSession(str(path), sess_options=options, providers=[provider])


def patterns_per_second(run: Run, diffraction: np.ndarray, scale: np.ndarray, batch: int, *,
                        min_calls: int, min_seconds: float) -> float:
    """Patterns/s of the median call at ``batch`` after :data:`WARMUP` calls (at least ``min_calls``
    timed calls and ``min_seconds`` of timed work)."""
    x, s = diffraction[:batch], scale[:batch]
    for _ in range(WARMUP):
        run(x, s)
    times: list[float] = []
    while len(times) < min_calls or sum(times) < min_seconds:
        start = time.perf_counter()
        run(x, s)
        times.append(time.perf_counter() - start)
    return batch * x.shape[1] / statistics.median(times)


def _has_cuda() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()


def run(mode: str) -> dict[str, Any]:
    """Patterns/s of every engine at every batch size of ``mode``, and session load times."""
    batches, min_calls, min_seconds = SIZES[mode]
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    config = ModelConfig(**MODEL)
    generator = PtychoPINNGenerator(config).eval()
    record = CheckpointRecord(training=TrainingConfig(model=config), training_scale=1.0, intensity_scale=1.0)
    groups = verification_inputs(REAL_SCAN, config.N, config.gridsize, n_groups=max(batches))
    diffraction = np.ascontiguousarray(np.resize(groups, (max(batches), *groups.shape[1:])))
    scale = np.ones(len(diffraction), np.float32)
    level_all, level_none = ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL

    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_bundle(generator, Path(tmp) / "bundle", record=record,
                               probe=np.ones((config.N, config.N), np.complex64), diffraction=diffraction[:16],
                               inputs_label="siemens-star (bench)", options=ExportOptions())
        optimised = Path(tmp) / "model.opt.onnx"
        ort_session(bundle.onnx_path, level_all, save_to=optimised)
        load_ms = {
            "onnxruntime (online ORT_ENABLE_ALL)": 1e3 * median_seconds(
                lambda: ort_session(bundle.onnx_path, level_all), repeat=3, warmup=0)[0],
            "onnxruntime offline-optimised copy": 1e3 * median_seconds(
                lambda: ort_session(optimised, level_none), repeat=3, warmup=0)[0],
        }
        engines: dict[str, Callable[[], Run]] = {
            "torch eager": lambda: torch_runner(generator),
            "TorchScript (frozen)": lambda: torch_runner(torch.jit.load(str(bundle.root / "model.ts"))),
            "onnxruntime CPU": lambda: ort_runner(ort_session(bundle.onnx_path, level_all)),
            "onnxruntime CPU, offline-optimised": lambda: ort_runner(ort_session(optimised, level_none)),
        }
        if _has_cuda():
            engines[CUDA_ROW] = lambda: ort_runner(ort_session(bundle.onnx_path, level_all,
                                                               provider="CUDAExecutionProvider"))
        rates: dict[str, list[float] | str] = {}
        for name, make in engines.items():  # one engine at a time, each freed before the next
            runner = make()
            rates[name] = [patterns_per_second(runner, diffraction, scale, b, min_calls=min_calls,
                                               min_seconds=min_seconds) for b in batches]
            del runner
    rates.setdefault(CUDA_ROW, NO_GPU)
    return {"setup": {**MODEL, "threads": THREADS, "batches": list(batches), "warmup_calls": WARMUP,
                      "min_timed_calls": min_calls, "min_timed_s": min_seconds, "statistic": "median call"},
            "patterns_per_s": rates, "session_load_ms": load_ms}


def table(result: dict[str, Any]) -> str:
    """Markdown table of :func:`run`'s result (ratios to torch eager at the same batch)."""
    batches = result["setup"]["batches"]
    eager = result["patterns_per_s"]["torch eager"]
    lines = ["| engine | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|" + "---:|" * len(batches)]
    for name, values in result["patterns_per_s"].items():
        if isinstance(values, str):
            lines.append(f"| {name} | {values} |" + " |" * (len(batches) - 1))
            continue
        cells = [f"{v:,.1f}" + ("" if name == "torch eager" else f" ({v / e:.2f}x)")
                 for v, e in zip(values, eager, strict=True)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    load = "; ".join(f"{name} {ms:.0f} ms" for name, ms in result["session_load_ms"].items())
    return "\n".join(lines) + f"\n\nSession load (median of 3): {load}."
