"""Peak memory of a real server process under hostile inputs stays within its stated budget.

The server runs in its own process (so its peak RSS, ``VmHWM``, is its own) with a 64 MiB
per-request budget, an 8 MiB body limit and 2 concurrent reconstructs; every hostile input that
used to cost gigabytes (canvas from far-apart positions, positions of 1e300, a forged ``.npy``
header, a gzip bomb, deep or huge JSON) is sent, some concurrently, between two legitimate requests.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from hostile_inputs import MiB, forged_header_npz, gzip_bomb
from oracle import write_oracle_bundle

from serving.npz_wire import encode_reconstruct_request

N = 32
BUDGET_MIB, BODY_MIB, CONCURRENT = 64, 8, 2

SERVER = """
import sys, uvicorn
from ptycho_torch.bundle import load_bundle
from serving.app import create_app
from serving.engine import Engine
from serving.limits import Limits
engine = Engine(load_bundle(sys.argv[1]), max_batch_size=16, providers=["cpu"], intra_op_threads=1)
limits = Limits(max_body_bytes={body} << 20, max_request_memory_bytes={budget} << 20, body_idle_timeout_s=1.0)
app = create_app(engine, limits=limits, max_concurrent_reconstructs={concurrent})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
""".format(body=BODY_MIB, budget=BUDGET_MIB, concurrent=CONCURRENT)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith(field + ":")))


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc for the peak RSS (VmHWM)")
def test_peak_memory_under_hostile_inputs_stays_within_the_budget(tmp_path: Path) -> None:
    bundle = write_oracle_bundle(tmp_path / "bundle", N=N)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                         os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(bundle), str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        rng = np.random.default_rng(0)
        legit_patterns = rng.random((1000, N, N), np.float32) + 0.5  # 4 MiB: a legitimate large request
        legit_positions = rng.uniform(0, 200, (1000, 2))
        legit = encode_reconstruct_request(legit_patterns, legit_positions)
        assert httpx.post(f"{url}/v1/reconstruct", content=legit, timeout=120).status_code == 200
        before = _status_kib(server.pid, "VmHWM")

        two = rng.random((2, N, N), np.float32) + 0.5
        hostile: list[tuple[bytes, dict[str, str], str, int]] = [
            (encode_reconstruct_request(two, np.array([[0.0, 0.0], [9000.0, 9000.0]])), {}, "/v1/reconstruct", 413),
            (encode_reconstruct_request(two, np.array([[0.0, 0.0], [1e300, 1e300]])), {}, "/v1/reconstruct", 413),
            (encode_reconstruct_request(two, np.array([[0.0, 0.0], [3000.0, 0.0]])), {}, "/v1/reconstruct", 200),
            (forged_header_npz((10**12, N, N)), {}, "/v1/reconstruct", 413),
            (gzip_bomb(1024 * MiB), {"Content-Encoding": "gzip"}, "/v1/reconstruct", 413),
            (gzip.compress(legit), {"Content-Encoding": "gzip"}, "/v1/reconstruct", 200),
            (("[" * 100_000 + "]" * 100_000).encode(), {}, "/v2/models/oracle/infer", 400),
            (json.dumps({"inputs": [{"name": "diffraction", "shape": [2000, 1, N, N], "datatype": "FP32",
                                     "data": [0.5] * 1_400_000}]}).encode(), {}, "/v2/models/oracle/infer", 413),
            (b"\0" * (BODY_MIB * MiB + 1), {}, "/v1/reconstruct", 413),
        ]

        def send(item: tuple[bytes, dict[str, str], str, int]) -> tuple[int, int]:
            body, headers, path, _ = item
            return httpx.post(f"{url}{path}", content=body, headers=headers, timeout=120).status_code, item[3]

        for item in hostile:
            status, expected = send(item)
            assert status == expected, (item[2], item[1], status)
        with ThreadPoolExecutor(CONCURRENT) as pool:  # the admitted maximum at once, twice over
            results = list(pool.map(send, hostile[:2] * CONCURRENT + hostile[4:6] * CONCURRENT))
        assert all(status in (expected, 503) for status, expected in results), results
        assert httpx.post(f"{url}/v1/reconstruct", content=legit, timeout=120).status_code == 200
        growth_mib = (_status_kib(server.pid, "VmHWM") - before) / 1024
        print(f"peak RSS growth under hostile inputs: {growth_mib:.1f} MiB "
              f"(budget {BUDGET_MIB} MiB x {CONCURRENT} concurrent)")
        assert growth_mib < CONCURRENT * BUDGET_MIB, growth_mib
    finally:
        server.terminate()
        server.wait(timeout=30)
