"""Live sessions: ``ptychopinn replay`` of the shipped real scan against ``ptychopinn serve`` (default model).

First the engine's own rate is measured in this process (batches of 64 on the same bundle, the
server idle), and the session machinery's alone (pairing, batching and stitching the scan's frames
in-process with inference replaced by fixed outputs: the ceiling the sessions put on the rate).
Then the scan is replayed at half that rate (positions with the frames, and on a separate stream
0.5 s late), at it, and at twice it. For each replay the server's own ``/metrics`` give the engine's
busy fraction (onnxruntime seconds / replay seconds) and its rate while busy, so a shared, noisy
machine still shows whether inference or the session machinery set the pace. Figures: sustained
frames/s onto the canvas, the server's frame-to-canvas latency p50/p99, frames lost. Run with
``python -m bench.sessions [--repeat R]``; it prints a markdown table and writes
``out/bench-sessions.json``. ``--machinery-only`` measures the session machinery alone (no server),
per wall second and per CPU second of the bench process: on a shared machine, where a niced
process waits for the cores, the CPU figure is the one to compare between code versions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.server import ROOT, running_server
from ptycho_torch.bundle import load_bundle
from ptycho_torch.data import load_scan
from serving.cli import DEFAULT_BUNDLE
from serving.client import Client
from serving.engine import Engine
from serving.replay import replay

SCAN = ROOT / "data" / "siemens-star-small.npz.bz2"
CHUNK = 16


def engine_rate(seconds: float = 5.0) -> float:
    """Frames/s of the default bundle's onnxruntime engine alone, batches of 64 real patterns."""
    engine = Engine(load_bundle(DEFAULT_BUNDLE), max_batch_size=64)
    scan = load_scan(SCAN, n=engine.bundle.N)
    diffraction = scan.diff3d[:64, None]
    scale = np.full(64, engine.bundle.training_scale, np.float32)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.run(diffraction, scale)
        count += 64
    return count / (time.perf_counter() - start)


def _engine_totals(client: Client) -> tuple[float, float]:
    """``(items inferred, onnxruntime seconds)`` so far, from the server's Prometheus text."""
    text = client._http.get("/metrics").text
    items = sum(float(v) for v in re.findall(r"^ptychopinn_inference_count_total\{[^}]*\} (\S+)$", text, re.M))
    seconds = sum(float(v) for v in re.findall(r"^ptychopinn_compute_duration_seconds_sum\{[^}]*\} (\S+)$",
                                                text, re.M))
    return items, seconds


def machinery_rate(patterns: np.ndarray, positions: np.ndarray, repeat: int = 5,
                   bad_pixels: int = 0) -> dict[str, float]:
    """Frames/s through a :class:`~serving.sessions.Session` without inference or HTTP (chunks of
    ``CHUNK``, positions with the frames): pairing, duplicate hashing, bad-pixel inpainting, batching
    and stitching. ``bad_pixels``: give the model a detector mask of that many pixels (seeded), as a
    bundle exported with ``--bad-pixel-mask`` has. ``{"wall_fps", "cpu_fps"}``: medians over
    ``repeat`` fresh sessions of frames per wall second and per CPU second of this process."""
    from serving.sessions import Session

    bundle = load_bundle(DEFAULT_BUNDLE)
    if bad_pixels:
        mask = np.zeros(bundle.N * bundle.N, bool)
        mask[np.random.default_rng(0).choice(mask.size, bad_pixels, replace=False)] = True
        bundle = dataclasses.replace(bundle, bad_pixels=mask.reshape(bundle.N, bundle.N))
    no_inference = SimpleNamespace(bundle=bundle)  # what a Session reads of its runner besides submit

    outputs = np.ones((CHUNK, 1, *patterns.shape[1:]), np.float32)
    wall, cpu = [], []
    for _ in range(repeat):
        session = Session("bench", no_inference, expected_frames=len(patterns))  # type: ignore[arg-type]
        start, start_cpu = time.perf_counter(), time.process_time()
        for first in range(0, len(patterns), CHUNK):
            index = np.arange(first, min(first + CHUNK, len(patterns)))
            session.add_frames(index, patterns[index], positions[index])
            while (work := session.take_work(64)) is not None:
                session.finish_work(work, (outputs[: len(work.indices)], outputs[: len(work.indices)]))
        wall.append(len(patterns) / (time.perf_counter() - start))
        cpu.append(len(patterns) / (time.process_time() - start_cpu))
        assert session.status()["frames"]["reconstructed"] == len(patterns)
    return {"wall_fps": float(np.median(wall)), "cpu_fps": float(np.median(cpu))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="replay the 516-frame scan this many times")
    parser.add_argument("--machinery-only", action="store_true",
                        help="measure the session machinery alone (no engine, no server)")
    parser.add_argument("--bad-pixels", type=int, default=0,
                        help="with --machinery-only: a model whose detector mask has this many pixels (inpainted)")
    args = parser.parse_args(argv)
    scan = load_scan(SCAN, n=64)
    patterns = np.tile(scan.diff3d, (args.repeat, 1, 1))
    positions = np.tile(scan.positions, (args.repeat, 1))
    machinery = machinery_rate(patterns, positions, bad_pixels=args.bad_pixels)
    machinery_line = (f"session machinery alone (no inference, no HTTP): {machinery['wall_fps']:.0f} frames/s, "
                      f"{machinery['cpu_fps']:.0f} frames per CPU-second; {len(patterns)} frames, chunks of {CHUNK}"
                      + (f", {args.bad_pixels} bad pixels" if args.bad_pixels else ""))
    if args.machinery_only:
        print(machinery_line)
        return {"machinery": machinery, "frames": len(patterns), "chunk": CHUNK}
    rate = engine_rate()
    cases = [("0.5 x engine, positions with frames", 0.5 * rate, None),
             ("0.5 x engine, positions 0.5 s late", 0.5 * rate, 0.5),
             ("1 x engine, positions 0.5 s late", rate, 0.5),
             ("2 x engine, positions with frames", 2.0 * rate, None)]
    rows = []
    with running_server(DEFAULT_BUNDLE, max_batch_size=64, max_queue_delay_us=2000) as url, Client(url) as client:
        for name, requested, delay in cases:
            live = client.open_session()
            items, seconds = _engine_totals(client)
            figures = replay(client, live, patterns, positions, rate=requested, chunk=CHUNK, positions_delay=delay,
                             timeout_s=300)
            items_after, seconds_after = _engine_totals(client)
            busy = seconds_after - seconds
            rows.append({"case": name, **figures, "engine_busy_fraction": busy / figures["elapsed_s"],
                         "engine_fps_while_busy": (items_after - items) / busy})
    result = {"engine_fps": rate, "machinery": machinery, "frames": len(patterns), "chunk": CHUNK, "rows": rows}
    out = ROOT / "out" / "bench-sessions.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"engine alone: {rate:.1f} frames/s (batches of 64); {machinery_line}\n")
    print("| case | requested fps | sustained fps | engine busy | engine fps while busy | latency p50 ms | "
          "latency p99 ms | 503 retries | frames lost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['case']} | {row['requested_rate_fps']:.1f} | {row['sustained_fps']:.1f} | "
              f"{100 * row['engine_busy_fraction']:.0f} % | {row['engine_fps_while_busy']:.1f} | "
              f"{1e3 * row['latency_p50_s']:.0f} | {1e3 * row['latency_p99_s']:.0f} | {row['retries_503']} | "
              f"{row['frames_lost']} |")
    return result


if __name__ == "__main__":
    main()
