"""The ``/ui`` viewer in a real headless chromium: a live canvas that changes as frames arrive."""

from __future__ import annotations

import re
import time

import numpy as np
from headless import Browser, chromium_or_skip

from serving.app import create_app
from serving.client import Client
from serving.engine import Engine

N = 32

# pixels of a canvas that are not black, and a checksum of all of them
PIXELS = """(() => {{
  const c = document.getElementById('{id}'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0, sum = 0;
  for (let i = 0; i < d.length; i += 4) {{
    if (d[i] + d[i + 1] + d[i + 2] > 0) lit++;
    sum += d[i] * 3 + d[i + 1] * 5 + d[i + 2] * 7;
  }}
  return {{width: c.width, height: c.height, lit, sum}};
}})()"""


def _frames(seed: int, count: int, x0: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    patterns = rng.random((count, N, N), np.float32) + 0.1
    positions = np.column_stack([x0 + 4.0 * np.arange(count), 10.0 + 2.0 * (np.arange(count) % 3)])
    return patterns, positions


def test_the_page_loads_nothing_from_outside_the_server(engine: Engine, serve) -> None:
    server = serve(create_app(engine))
    with Client(server.url) as client:
        page = client._http.get("/ui").text
    assert "<canvas" in page and "viewerState" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no CDN, no external fonts
    assert not re.search(r"""@import|url\(\s*["']?https?:""", page)


def test_viewer_in_headless_chromium_shows_a_live_canvas_that_changes(engine: Engine, serve) -> None:
    executable = chromium_or_skip()
    server = serve(create_app(engine))
    with Client(server.url) as client, Browser(executable) as browser:
        live = client.open_session()
        patterns, positions = _frames(0, 10, 0.0)
        live.send_frames(np.arange(10), patterns, positions)
        browser.send("Page.navigate", url=f"{server.url}/ui#session={live.id}")
        browser.wait_for("window.viewerState && viewerState.updates >= 1")
        first = browser.wait_for(PIXELS.format(id="amplitude") + ".lit > 0 && " + PIXELS.format(id="amplitude"))
        phase = browser.evaluate(PIXELS.format(id="phase"))
        assert first["lit"] > 100 and phase["lit"] > 100  # drawn, not blank
        assert browser.evaluate(PIXELS.format(id="amplitude-bar"))["lit"] > 200  # the colour bars
        assert browser.evaluate(PIXELS.format(id="phase-bar"))["lit"] > 200
        assert browser.wait_for(f"document.querySelector('tr.selected')?.dataset.id === '{live.id}'")

        more, more_positions = _frames(1, 10, 40.0)  # further along the scan: the canvas grows and changes
        live.send_frames(np.arange(10, 20), more, more_positions)
        browser.wait_for("viewerState.header.counts.reconstructed === 20", timeout_s=30)
        time.sleep(0.3)  # the render follows the update in the same task; leave it a frame
        second = browser.evaluate(PIXELS.format(id="amplitude"))
        assert second["width"] > first["width"] and second["lit"] > first["lit"] and second["sum"] != first["sum"]
        counts = browser.evaluate("document.getElementById('counts').textContent")
        assert "20 frames received, 20 on canvas" in counts and "frames/s" in counts
        live.close()
        assert "deleted" in browser.wait_for(
            "document.getElementById('counts').textContent.includes('deleted') && "
            "document.getElementById('counts').textContent")


def test_both_panels_fit_a_1000_pixel_window(engine: Engine, serve) -> None:
    executable = chromium_or_skip()
    server = serve(create_app(engine))
    layout = """(() => {
      const box = id => document.getElementById(id).getBoundingClientRect();
      return {page: document.documentElement.clientWidth, scroll: document.documentElement.scrollWidth,
              amplitude: box('amplitude').toJSON(), phase: box('phase').toJSON(), bar: box('phase-bar').toJSON()};
    })()"""
    with Browser(executable) as browser:
        for width in (1000, 700):
            browser.send("Emulation.setDeviceMetricsOverride", width=width, height=800, deviceScaleFactor=1,
                         mobile=False)
            browser.send("Page.navigate", url=f"{server.url}/ui")
            browser.wait_for("document.readyState === 'complete' && !!document.getElementById('phase')")
            seen = browser.evaluate(layout)
            assert seen["scroll"] <= seen["page"] == width, seen  # nothing cut off, no sideways scrolling
            assert seen["bar"]["right"] <= width and seen["phase"]["width"] >= 240, seen
            beside = seen["phase"]["top"] == seen["amplitude"]["top"]
            assert beside == (width == 1000), seen  # side by side at 1000 px, wrapped below at 700 px
