"""The unpacked copy of a .zip bundle is removed on every stop of a real `ptychopinn serve`: SIGTERM
and Ctrl+C through the graceful shutdown; after SIGKILL, by the next .zip load on the machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from oracle import write_oracle_bundle, zip_bundle

from ptycho_torch.bundle import load_bundle
from ptycho_torch.bundle.reader import EXTRACTION_PREFIX, remove_stale_extractions

pytestmark = pytest.mark.slow
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle_zip(tmp_path: Path) -> Path:
    return zip_bundle(write_oracle_bundle(tmp_path / "bundle"), tmp_path / "bundle.zip")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_until_ready(bundle_zip: Path, tmpdir: Path) -> tuple[subprocess.Popen, Path]:
    """Start `ptychopinn serve --bundle X.zip` with its own $TMPDIR; return it and its extraction."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "ptychopinn", "serve", "--bundle", str(bundle_zip),
                                "--host", "127.0.0.1", "--port", str(_free_port())],
                               env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    for line in process.stderr:
        if "Application startup complete" in line:
            break
        assert time.monotonic() < deadline and process.poll() is None, line
    [extraction] = tmpdir.glob(f"{EXTRACTION_PREFIX}{process.pid}-*")
    assert (extraction / "model.onnx").is_file()
    return process, extraction


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_graceful_stop_removes_the_extraction(bundle_zip: Path, tmp_path: Path, signum: int) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    process, extraction = _serve_until_ready(bundle_zip, tmpdir)
    process.send_signal(signum)
    assert process.wait(timeout=60) == 128 + signum
    assert not extraction.exists() and not list(tmpdir.glob(f"{EXTRACTION_PREFIX}*"))


def test_a_killed_servers_extraction_is_removed_by_the_next_load(bundle_zip: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    process, extraction = _serve_until_ready(bundle_zip, tmpdir)
    process.kill()
    process.wait(timeout=60)
    assert extraction.is_dir()  # nothing runs after SIGKILL
    live = tmpdir / f"{EXTRACTION_PREFIX}{os.getpid()}-live"  # a running process' copy is kept
    live.mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    bundle = load_bundle(bundle_zip)
    assert not extraction.exists() and live.is_dir() and bundle.root.parent == tmpdir
    assert remove_stale_extractions(tmpdir) == []
