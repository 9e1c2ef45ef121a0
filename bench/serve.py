"""Serving throughput and latency: in-process engine vs HTTP (binary OIP, JSON OIP, /v1/reconstruct).

One run measures every path at several client concurrencies against the same bundle: (a) the
in-process dynamic batcher (what Ptychodus' in-process reconstructor uses), (b) OIP infer with binary
tensors, (c) OIP infer with JSON tensors, (d) ``POST /v1/reconstruct`` (whole scans: inference +
stitching). The server runs as ``ptychopinn serve`` in a subprocess, so client and server do not
share a GIL (they do share the CPU). Without ``--bundle`` an untrained generator of the real
architecture is exported to a temporary bundle (speed does not depend on the weights)::

    .venv/bin/python bench/serve.py --quick
    .venv/bin/python bench/serve.py --bundle out/bundle --concurrency 1,4,16 --requests 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.batching import DynamicBatcher  # noqa: E402
from serving.bundle import Bundle, load_bundle  # noqa: E402
from serving.client import Client  # noqa: E402
from serving.engine import Engine  # noqa: E402


def _export_untrained(out: Path, N: int, n_filters_scale: int) -> Bundle:
    """Export a randomly initialised generator (real architecture) as a bundle; needs torch."""
    import torch

    from export.bundle_writer import ExportOptions, export_bundle
    from ptycho_torch.config import ModelConfig
    from ptycho_torch.model import PtychoPINNGenerator

    torch.manual_seed(0)
    config = ModelConfig(N=N, gridsize=1, n_filters_scale=n_filters_scale)
    generator = PtychoPINNGenerator(config).eval()
    diffraction = np.random.default_rng(0).random((8, 1, N, N), np.float32)
    hparams = {"model_config": {"N": N, "gridsize": 1, "n_filters_scale": n_filters_scale},
               "input_scale": 1.0, "intensity_scale": 1.0}
    probe = np.ones((N, N), np.complex64)
    return export_bundle(generator, out, hparams=hparams, probe=probe, diffraction=diffraction,
                         inputs_label="random patterns (benchmark)", options=ExportOptions(name="bench"))


def _measure(call: Callable[[int], None], concurrency: int, requests: int, items: int) -> dict[str, float]:
    """Run ``requests`` calls from ``concurrency`` threads; latency percentiles and items/s."""
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


def _start_server(bundle: Bundle, args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "ptycho_torch.cli", "serve", "--bundle", str(bundle.source), "--port", str(port),
               "--max-batch-size", str(args.max_batch_size), "--max-queue-delay-us", str(args.max_queue_delay_us)]
    if args.providers:
        command += ["--providers", args.providers]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not become ready in 120 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run (CI/smoke): N=64, few requests")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle to serve (default: untrained export)")
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--n-filters-scale", type=int, default=2)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=64, help="requests per (path, concurrency) cell")
    parser.add_argument("--items", type=int, default=16, help="patterns per OIP request")
    parser.add_argument("--scan", type=int, default=64, help="patterns per /v1/reconstruct scan")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--providers", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.requests, args.items, args.scan, args.n_filters_scale = "1,4", 12, 16, 32, 1

    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle(args.bundle) if args.bundle else _export_untrained(Path(tmp) / "bundle", args.N,
                                                                                args.n_filters_scale)
        N = bundle.N
        rng = np.random.default_rng(0)
        diffraction = rng.random((args.items, bundle.channels, N, N), np.float32)
        scale = np.ones(args.items, np.float32)
        patterns = rng.random((args.scan, N, N), np.float32)
        side = int(np.ceil(np.sqrt(args.scan)))
        positions = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:args.scan] * 5.0

        engine = Engine(bundle, max_batch_size=args.max_batch_size,
                        providers=args.providers.split(",") if args.providers else None)
        batcher = DynamicBatcher(engine, max_queue_delay_us=args.max_queue_delay_us)
        process, url = _start_server(bundle, args)
        json_body = {"inputs": [
            {"name": "diffraction", "shape": list(diffraction.shape), "datatype": "FP32",
             "data": diffraction.ravel().tolist()},
            {"name": "scale", "shape": [args.items], "datatype": "FP32", "data": scale.tolist()}]}
        rows = []
        try:
            with Client(url) as client, httpx.Client(base_url=url, timeout=300) as http:
                def json_infer(_: int) -> None:
                    response = http.post(f"/v2/models/{bundle.name}/infer", json=json_body)
                    response.raise_for_status()
                    response.json()

                paths = {
                    "(a) in-process batcher": (lambda _: batcher.infer(diffraction, scale), args.items),
                    "(b) HTTP OIP binary": (lambda _: client.infer(bundle.name, diffraction, scale), args.items),
                    "(c) HTTP OIP JSON": (json_infer, args.items),
                    "(d) HTTP /v1/reconstruct": (lambda _: client.reconstruct(patterns, positions), args.scan),
                }
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    for name, (call, items) in paths.items():
                        figures = _measure(call, concurrency, args.requests, items)
                        rows.append({"path": name, "concurrency": concurrency, "items": items, **figures})
                        print(f"{name:<26} c={concurrency:<3} {figures['patterns_per_s']:8.1f} patterns/s  "
                              f"p50 {figures['p50_ms']:8.1f} ms  p99 {figures['p99_ms']:8.1f} ms", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
            batcher.close()

    header = (f"bundle {bundle.name} N={N} C={bundle.channels}, providers {engine.providers}, "
              f"max_batch_size {args.max_batch_size}, max_queue_delay_us {args.max_queue_delay_us}, "
              f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print("\n" + header + "\n")
    print("| path | concurrency | patterns/request | patterns/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['path']} | {row['concurrency']} | {row['items']} | {row['patterns_per_s']:.1f} | "
              f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
