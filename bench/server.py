"""A real ``ptychopinn serve`` (uvicorn) on 127.0.0.1 in a subprocess, for the benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.report import ROOT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(bundle: Path, *, max_batch_size: int = 64, max_queue_delay_us: int = 2000,
                   providers: str | None = None, intra_op_threads: int | None = None,
                   ready_timeout_s: float = 120.0) -> Iterator[str]:
    """Start ``ptychopinn serve --bundle BUNDLE`` on a free port; yield its URL once ready; stop it."""
    port = free_port()
    command = [sys.executable, "-m", "ptychopinn", "serve", "--bundle", str(bundle), "--port", str(port),
               "--max-batch-size", str(max_batch_size), "--max-queue-delay-us", str(max_queue_delay_us)]
    if providers:
        command += ["--providers", providers]
    if intra_op_threads:
        command += ["--intra-op-threads", str(intra_op_threads)]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server can never block on it
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"ptychopinn serve exited: {log.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ptychopinn serve did not become ready in {ready_timeout_s:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
