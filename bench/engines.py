"""Inference engines on one bundle: torch eager vs TorchScript vs onnxruntime (CPU), patterns/s.

The script exports one bundle (random weights, or ``--checkpoint``) and times the generator it came
from (torch eager), the bundle's ``model.ts`` and its ``model.onnx`` on the same real patterns (the
Siemens-star scan cropped to N), with the same thread count for every engine, one engine at a time
(ORT's spinning threads would otherwise steal cores). It also measures the optional offline copy of
the graph optimised by onnxruntime (``ORT_ENABLE_ALL`` saved to disk): session load time and speed.

    .venv/bin/python -m bench.engines --quick          # one timed call per batch size (2 warm-ups)
    .venv/bin/python -m bench.engines                  # >= 3 calls and >= 2 s per cell, best call
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.bundle_writer import ExportOptions, export_bundle
from export.verify import verification_inputs
from ptycho_torch.config import ModelConfig
from ptycho_torch.model import PtychoPINNGenerator

SCAN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "siemens-star-small.npz.bz2"
BATCHES = (1, 16, 64, 256)
Run = Callable[[np.ndarray, np.ndarray], object]


def ort_session(path: Path, threads: int, level: ort.GraphOptimizationLevel, save_to: Path | None = None
                ) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (optionally saving the optimised graph)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = level
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def load_seconds(make: Callable[[], object], repeat: int = 3) -> float:
    """Median wall time of ``make()`` (session construction)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        make()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def patterns_per_second(run: Run, diffraction: np.ndarray, scale: np.ndarray, batch: int, *,
                        min_calls: int, min_seconds: float) -> float:
    """Patterns/s of the fastest call at ``batch``, after two warm-up calls (TorchScript's profiling
    executor optimises a graph on its second call at a shape)."""
    x, s = diffraction[:batch], scale[:batch]
    for _ in range(2):
        run(x, s)
    best, calls, spent = float("inf"), 0, 0.0
    while calls < min_calls or spent < min_seconds:
        start = time.perf_counter()
        run(x, s)
        elapsed = time.perf_counter() - start
        best, calls, spent = min(best, elapsed), calls + 1, spent + elapsed
    return batch * x.shape[1] / best


def torch_runner(module: torch.nn.Module) -> Run:
    def run(x: np.ndarray, s: np.ndarray) -> object:
        with torch.inference_mode():
            return module(torch.from_numpy(x), torch.from_numpy(s))
    return run


def ort_runner(session: ort.InferenceSession) -> Run:
    return lambda x, s: session.run(None, {"diffraction": x, "scale": s})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one timed call per batch size")
    parser.add_argument("--n", type=int, default=64, help="patch size N (default 64)")
    parser.add_argument("--n-filters-scale", type=int, default=2, help="width multiplier (default 2)")
    parser.add_argument("--gridsize", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="benchmark this checkpoint's generator")
    args = parser.parse_args()
    min_calls, min_seconds = (1, 0.0) if args.quick else (3, 2.0)
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        from training.module import PtychoPINNModule

        generator, hparams, probe = PtychoPINNModule.load_generator(args.checkpoint)
    else:
        torch.manual_seed(0)
        config = ModelConfig(N=args.n, gridsize=args.gridsize, n_filters_scale=args.n_filters_scale)
        generator = PtychoPINNGenerator(config)
        hparams = {"model_config": dataclasses.asdict(config), "input_scale": 1.0, "intensity_scale": 1.0}
        probe = np.ones((args.n, args.n), np.complex64)
    config = generator.config
    groups = verification_inputs(SCAN, config.N, config.gridsize, n_groups=max(BATCHES))
    diffraction = np.ascontiguousarray(np.resize(groups, (max(BATCHES), *groups.shape[1:])))
    scale = np.full(len(diffraction), 1.0, np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_bundle(generator.eval(), Path(tmp) / "bundle", hparams=hparams, probe=probe,
                               diffraction=diffraction[:16], inputs_label="siemens-star (bench)",
                               options=ExportOptions())
        optimised = Path(tmp) / "model.opt.onnx"
        ort_session(bundle.onnx_path, args.threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, save_to=optimised)
        load = {
            "onnxruntime (online ORT_ENABLE_ALL)": load_seconds(lambda: ort_session(
                bundle.onnx_path, args.threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)),
            "onnxruntime offline-optimised copy": load_seconds(lambda: ort_session(
                optimised, args.threads, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)),
        }
        engines: dict[str, Callable[[], Run]] = {
            "torch eager": lambda: torch_runner(generator.eval()),
            "TorchScript (frozen)": lambda: torch_runner(torch.jit.load(str(bundle.root / "model.ts"))),
            "onnxruntime CPU": lambda: ort_runner(ort_session(
                bundle.onnx_path, args.threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)),
            "onnxruntime CPU, offline-optimised": lambda: ort_runner(ort_session(
                optimised, args.threads, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)),
        }
        rates: dict[str, list[float]] = {}
        for name, make in engines.items():  # one engine at a time, each freed before the next
            run = make()
            rates[name] = [patterns_per_second(run, diffraction, scale, b, min_calls=min_calls,
                                               min_seconds=min_seconds) for b in BATCHES]
            del run

    print(f"N={config.N} gridsize={config.gridsize} n_filters_scale={config.n_filters_scale}, "
          f"{args.threads} threads, {'quick' if args.quick else 'full'} mode; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, {platform.machine()} {platform.processor() or ''}\n")
    print("| engine | " + " | ".join(f"batch {b}" for b in BATCHES) + " |")
    print("|---|" + "---:|" * len(BATCHES))
    eager = rates["torch eager"]
    for name, values in rates.items():
        cells = [f"{v:,.1f}" + ("" if name == "torch eager" else f" ({v / e:.2f}x)") for v, e in zip(values, eager)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nsession load (median of 3): " + "; ".join(f"{k} {v * 1e3:.0f} ms" for k, v in load.items()))


if __name__ == "__main__":
    main()
