"""Fixtures: the serving oracle bundle as a .zip, the oracle scan, settings, live servers.

The oracle bundle comes from ``tests/oracle.py`` and the live uvicorn server from ``tests/serving``
(one oracle, one server fixture for the whole suite).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SERVING_TESTS = Path(__file__).resolve().parents[1] / "serving"
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from ptychodus.api.settings import SettingsRegistry  # noqa: E402
from scans import OracleScan, oracle_bundle_zip, oracle_scan  # noqa: E402

from serving.ptychodus.settings import PtychoPINNServeSettings  # noqa: E402


def _serving_fixtures():
    spec = importlib.util.spec_from_file_location("serving_test_fixtures", SERVING_TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LiveServer = _serving_fixtures().LiveServer


@pytest.fixture(scope="session")
def oracle_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return oracle_bundle_zip(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="session")
def oracle_zip_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return oracle_bundle_zip(tmp_path_factory.mktemp("bundles64"), n=64)


@pytest.fixture(scope="session")
def oracle() -> OracleScan:
    return oracle_scan()


@pytest.fixture
def settings() -> PtychoPINNServeSettings:
    return PtychoPINNServeSettings(SettingsRegistry())


@pytest.fixture
def serve() -> Iterator[Callable[[Path], LiveServer]]:
    """Start ``ptychopinn serve`` of a bundle on a free 127.0.0.1 port (real uvicorn); stopped after the test."""
    from ptycho_torch.bundle import load_bundle
    from serving.app import create_app
    from serving.engine import Engine

    servers: list[LiveServer] = []

    def start(bundle: Path) -> LiveServer:
        engine = Engine(load_bundle(bundle), providers=["cpu"], max_batch_size=16, intra_op_threads=1)
        servers.append(LiveServer(create_app(engine)))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def oracle_server(oracle_zip: Path) -> Iterator[LiveServer]:
    """``ptychopinn serve`` of the oracle bundle on a free 127.0.0.1 port (real uvicorn)."""
    from ptycho_torch.bundle import load_bundle
    from serving.app import create_app
    from serving.engine import Engine

    engine = Engine(load_bundle(oracle_zip), providers=["cpu"], max_batch_size=8, intra_op_threads=1)
    server = LiveServer(create_app(engine, token="s3cret"))
    yield server
    server.stop()
