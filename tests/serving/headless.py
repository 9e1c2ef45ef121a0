"""A real headless chromium driven over the DevTools protocol (a WebSocket), for the viewer test.

Only what the test needs: start the browser, open a page, evaluate JavaScript. Chromium is Debian's
package (``apt-get install chromium``); CI installs it (``.ci/run``) and sets
``PTYCHOPINN_REQUIRE_CHROMIUM=1`` so that a missing browser fails instead of skipping.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0"]


def chromium_or_skip() -> str:
    """The chromium executable; skips the test when absent, unless CI requires it."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if os.environ.get("PTYCHOPINN_REQUIRE_CHROMIUM") == "1":
        pytest.fail("chromium is required (PTYCHOPINN_REQUIRE_CHROMIUM=1) but not on PATH: apt-get install chromium")
    pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs this test")


class Browser:
    """One headless chromium with one page; a context manager."""

    def __init__(self, executable: str, *, timeout_s: float = 60.0) -> None:
        # chromium's helper processes may still write the profile for a moment after the browser exits
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True)
        self.process = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        self._stack = contextlib.ExitStack()
        self._socket = self._stack.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout_s))
        self._ids = itertools.count(1)
        self.timeout_s = timeout_s

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that arrive meanwhile are skipped)."""
        request_id = next(self._ids)
        self._socket.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv(timeout=self.timeout_s))
            if message.get("id") == request_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"`{expression}` stayed falsy for {timeout_s} s")
            time.sleep(0.1)
        return value

    def close(self) -> None:
        if hasattr(self, "_stack"):
            self._stack.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        for _ in range(50):  # up to 5 s for the helpers to let go of the profile, then whatever is left stays
            shutil.rmtree(self._profile.name, ignore_errors=True)
            if not os.path.exists(self._profile.name):
                break
            time.sleep(0.1)
        self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
