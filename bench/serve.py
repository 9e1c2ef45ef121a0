"""Serving throughput and latency: in-process engine vs HTTP (binary OIP, JSON OIP, /v1/reconstruct).

One run measures every path at several client concurrencies against the same bundle: (a) the
in-process dynamic batcher (what Ptychodus' in-process reconstructor uses), (b) OIP infer with binary
tensors, (c) OIP infer with JSON tensors, (d) ``POST /v1/reconstruct`` (whole scans: inference +
stitching). The server runs as ``ptychopinn serve`` (uvicorn) in a subprocess, so client and server
do not share a GIL (they do share the CPU). An untrained generator of the real architecture is
exported to a temporary bundle (speed does not depend on the weights); onnxruntime picks the best
provider it has (CUDA/TensorRT on a GPU host). Run with ``python -m bench serve [--quick]``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.server import running_server
from ptycho_torch.bundle import Bundle
from serving.batching import DynamicBatcher
from serving.client import Client
from serving.engine import Engine

SIZES = {
    "smoke": {"concurrency": (1,), "requests": 4, "items": 8, "scan": 16, "n_filters_scale": 1},
    "quick": {"concurrency": (1, 4), "requests": 12, "items": 16, "scan": 32, "n_filters_scale": 1},
    "full": {"concurrency": (1, 4, 16), "requests": 24, "items": 16, "scan": 64, "n_filters_scale": 2},
}
N = 64
MAX_BATCH_SIZE = 64
MAX_QUEUE_DELAY_US = 2000


def export_untrained(out: Path, N: int, n_filters_scale: int) -> Bundle:
    """Export a randomly initialised generator (real architecture) as a bundle; needs torch."""
    import torch

    from export.bundle_writer import ExportOptions, export_bundle
    from ptycho_torch.checkpoint import CheckpointRecord
    from ptycho_torch.config import ModelConfig, TrainingConfig
    from ptycho_torch.model import PtychoPINNGenerator

    torch.manual_seed(0)
    generator = PtychoPINNGenerator(ModelConfig(N=N, gridsize=1, n_filters_scale=n_filters_scale)).eval()
    diffraction = np.random.default_rng(0).random((8, 1, N, N), np.float32)
    record = CheckpointRecord(training=TrainingConfig(model=generator.config), training_scale=1.0,
                              intensity_scale=1.0)
    return export_bundle(generator, out, record=record, probe=np.ones((N, N), np.complex64),
                         diffraction=diffraction, inputs_label="random patterns (benchmark)",
                         options=ExportOptions(name="bench"))


def measure(call: Callable[[int], None], concurrency: int, requests: int, items: int) -> dict[str, float]:
    """Run ``requests`` calls from ``concurrency`` threads after one warm-up call per thread;
    items/s over the timed calls and latency percentiles (p50 = median)."""
    latencies: list[float] = []

    def one(index: int) -> None:
        start = time.perf_counter()
        call(index)
        latencies.append(time.perf_counter() - start)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm the connections and the batcher
        latencies.clear()
        start = time.perf_counter()
        list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    return {"patterns_per_s": requests * items / wall, "p50_ms": 1e3 * float(np.percentile(latencies, 50)),
            "p99_ms": 1e3 * float(np.percentile(latencies, 99))}


def run(mode: str) -> dict[str, Any]:
    """Throughput and latency of the four paths at each concurrency of ``mode``."""
    size = SIZES[mode]
    rng = np.random.default_rng(0)
    diffraction = rng.random((size["items"], 1, N, N), np.float32)
    scale = np.ones(size["items"], np.float32)
    patterns = rng.random((size["scan"], N, N), np.float32)
    side = int(np.ceil(np.sqrt(size["scan"])))
    positions = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:size["scan"]] * 5.0
    json_body = {"inputs": [
        {"name": "diffraction", "shape": list(diffraction.shape), "datatype": "FP32", "data": diffraction.ravel().tolist()},
        {"name": "scale", "shape": [size["items"]], "datatype": "FP32", "data": scale.tolist()}]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_untrained(Path(tmp) / "bundle", N, size["n_filters_scale"])
        engine = Engine(bundle, max_batch_size=MAX_BATCH_SIZE)
        batcher = DynamicBatcher(engine, max_queue_delay_us=MAX_QUEUE_DELAY_US)
        try:
            with running_server(bundle.source, max_batch_size=MAX_BATCH_SIZE,
                                max_queue_delay_us=MAX_QUEUE_DELAY_US) as url, \
                    Client(url) as client, httpx.Client(base_url=url, timeout=300) as http:
                def json_infer(_: int) -> None:
                    response = http.post(f"/v2/models/{bundle.name}/infer", json=json_body)
                    response.raise_for_status()
                    response.json()

                paths = {
                    "(a) in-process batcher": (lambda _: batcher.infer(diffraction, scale), size["items"]),
                    "(b) HTTP OIP binary": (lambda _: client.infer(bundle.name, diffraction, scale), size["items"]),
                    "(c) HTTP OIP JSON": (json_infer, size["items"]),
                    "(d) HTTP /v1/reconstruct": (lambda _: client.reconstruct(patterns, positions), size["scan"]),
                }
                for concurrency in size["concurrency"]:
                    for name, (call, items) in paths.items():
                        rows.append({"path": name, "concurrency": concurrency, "items": items,
                                     **measure(call, concurrency, size["requests"], items)})
        finally:
            batcher.close()
    return {"setup": {"N": N, "gridsize": 1, "n_filters_scale": size["n_filters_scale"],
                      "providers": engine.providers, "max_batch_size": MAX_BATCH_SIZE,
                      "max_queue_delay_us": MAX_QUEUE_DELAY_US, "requests_per_cell": size["requests"]},
            "rows": rows}


def table(result: dict[str, Any]) -> str:
    """Markdown table of :func:`run`'s result."""
    lines = ["| path | concurrency | patterns/request | patterns/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['path']} | {r['concurrency']} | {r['items']} | {r['patterns_per_s']:.1f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    setup = result["setup"]
    return "\n".join(lines) + (f"\n\nProviders {setup['providers']}, N={setup['N']}, n_filters_scale="
                               f"{setup['n_filters_scale']}, {setup['requests_per_cell']} requests per cell.")
