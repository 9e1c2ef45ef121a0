"""serving never imports torch; ``ptychopinn serve`` starts a real server from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ptycho_torch.bundle import Bundle
from serving.client import Client

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'lightning', 'pytorch_lightning'):
            raise ImportError('serving must not import ' + name)
sys.meta_path.insert(0, Block())
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}


def test_importing_every_serving_module_does_not_import_torch() -> None:
    """Every module under serving/, the Ptychodus adapter included (``__main__`` would run the app)."""
    modules = sorted(".".join(p.relative_to(PROJECT_ROOT / "serving").with_suffix("").parts)
                     for p in (PROJECT_ROOT / "serving").rglob("*.py") if p.stem not in ("__init__", "__main__"))
    code = BLOCK_TORCH + "".join(f"import serving.{m}\n" for m in modules) + (
        "assert not any(m.split('.')[0] in ('torch', 'lightning') for m in sys.modules), 'torch was imported'\n"
        "print('ok', len(sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                            cwd=PROJECT_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
    assert {"app", "batching", "cli", "client", "engine", "protocol_v2", "ptychodus.http_reconstructor",
            "ptychodus.onnx_reconstructor"} <= set(modules)


def test_ptychopinn_serve_runs_a_server_with_a_token(oracle_bundle: Bundle, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a free port, released for the server to bind
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token_file = tmp_path / "token"
    token_file.write_text("t0ken\n")
    command = [sys.executable, "-c", BLOCK_TORCH + "from ptychopinn.cli import main; sys.exit(main())",
               "serve", "--bundle", str(oracle_bundle.source), "--port", str(port), "--max-batch-size", "8",
               "--token-file", str(token_file), "--providers", "cpu", "--max-request-mb", "1"]
    process = subprocess.Popen(command, env=_env(), cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        assert httpx.get(f"{url}/v2/models/oracle").status_code == 401
        with Client(url, token="t0ken") as client:
            metadata = client.model_metadata("oracle")
            assert metadata["parameters"]["max_batch_size"] == 8
            result = client.reconstruct(np.ones((5, 32, 32), np.float32), np.arange(10.0).reshape(5, 2))
            assert result.n_patterns == 5
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "serving oracle v1 on http://127.0.0.1" in output and "token required" in output


def test_serve_refuses_bad_arguments_with_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "ptychopinn", "serve", "--bundle", "/no/such/bundle"],
                            capture_output=True, text=True, env=_env(), cwd=PROJECT_ROOT, timeout=120)
    assert result.returncode == 2
    assert "ptychopinn serve: error: bundle `/no/such/bundle` does not exist" in result.stderr


@pytest.mark.parametrize("flag, message", [
    ("--max-request-mb=0", "`--max-request-mb` must be positive, got 0.0"),
    ("--max-request-memory-mb=-1", "`--max-request-memory-mb` must be positive, got -1.0"),
    ("--body-timeout-s=0", "`--body-timeout-s` must be positive, got 0.0"),
    ("--max-concurrent-reconstructs=0", "`--max-concurrent-reconstructs` must be positive, got 0"),
])
def test_serve_checks_limits(oracle_bundle: Bundle, flag: str, message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "ptychopinn", "serve", "--bundle", str(oracle_bundle.source),
                             flag], capture_output=True, text=True, env=_env(), cwd=PROJECT_ROOT, timeout=120)
    assert result.returncode == 2 and message in result.stderr
