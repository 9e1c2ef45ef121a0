"""Fixtures: real uvicorn servers on free 127.0.0.1 ports (the oracle bundle and its engine come
from ``tests/conftest.py``)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # headless.py, hostile_inputs.py

from serving.engine import Engine


class LiveServer:
    """A uvicorn server for ``app`` in a thread, on a free port it binds itself (no race)."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.app = app
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
def serve() -> Iterator[Callable[..., LiveServer]]:
    """``serve(app)`` starts a live server; every server started is stopped after the test."""
    servers: list[LiveServer] = []

    def start(app: object) -> LiveServer:
        servers.append(LiveServer(app))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def oracle_app_server(engine: Engine) -> Iterator[LiveServer]:
    """One live server of the oracle engine with the default app settings, shared by a module."""
    from serving.app import create_app

    live = LiveServer(create_app(engine))
    yield live
    live.stop()
