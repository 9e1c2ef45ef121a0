"""Live sessions that refine: the canvas is refined while frames arrive, the viewer's deltas carry the
refined object, the final object matches a whole-scan refinement, and a close stops the refinement.

The scan is simulated with the oracle bundle's own probe (a session refines with the model's probe)
on jittered positions (a regular raster leaves periodic object/probe trades the data cannot fix, so
two refinements of it that fit the data equally well differ by their path). The oracle network knows
nothing about objects, so the refinements start flat unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest

from ptycho_torch.metrics import evaluate_reconstruction
from ptycho_torch.pipeline import Reconstruction, reconstruct
from ptycho_torch.plan import ReconstructOptions
from ptycho_torch.simulation import make_object, simulate_scan
from serving.app import create_app
from serving.batching import DynamicBatcher
from serving.client import Client
from serving.engine import Engine
from serving.errors import InvalidRequest
from serving.sessions import Session, SessionLimits, SessionManager
from serving.sessions.live_refinement import ROUND_ITERATIONS

N = 32
SIZE = 80
AUTO_FLAT = {"scale_policy": "bundle", "refine_iterations": "auto", "refine_start": "flat"}
SAME = 0.01
"""The final object's SSIM (amplitude and phase, covered region) against the whole-scan refinement's is
at least 1 - SAME."""


@pytest.fixture(scope="module")
def scan(oracle_bundle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """256 patterns ``(S, N, N)`` float32 amplitudes, their positions ``(S, 2)`` and the true object."""
    rng = np.random.default_rng(0)
    obj = make_object("grf", SIZE, rng)
    centres = np.arange(N / 2, SIZE - N / 2 - 1, 3.0)
    x, y = (v.ravel() + rng.uniform(-1, 1, v.size) for v in np.meshgrid(centres, centres))
    raw = simulate_scan(obj, oracle_bundle.facts.probe[0], x, y, nphotons=1e5, seed=1)
    return raw.diff3d.astype(np.float32), raw.positions, obj


@pytest.fixture
def batcher(engine: Engine):
    batcher = DynamicBatcher(engine, max_queue_delay_us=0)
    yield batcher
    batcher.close()


def _covered(result: Reconstruction) -> tuple[slice, slice]:
    rows, cols = np.nonzero(result.coverage >= 1)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def _complex(result: Reconstruction) -> np.ndarray:
    return result.amplitude * np.exp(1j * result.phase)


def _ssim(image: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    return tuple(evaluate_reconstruction(image, reference, register_first=False).ssim)  # type: ignore[return-value]


def _truth(obj: np.ndarray, result: Reconstruction) -> np.ndarray:
    """The true object on ``result``'s canvas grid (canvas (col, row) = object pixel + origin)."""
    x0, y0 = (int(v) for v in result.origin)
    H, W = result.amplitude.shape
    return obj[-y0:-y0 + H, -x0:-x0 + W]


def _assert_matches_whole_scan(final: Reconstruction, whole: Reconstruction) -> None:
    assert final.origin == whole.origin and final.amplitude.shape == whole.amplitude.shape
    window = _covered(whole)
    amplitude, phase = _ssim(_complex(final)[window], _complex(whole)[window])
    assert amplitude >= 1 - SAME and phase >= 1 - SAME, (amplitude, phase)


def test_the_viewer_sees_the_refined_object_while_frames_arrive_and_the_end_matches_the_whole_scan(
        engine: Engine, serve, scan) -> None:
    patterns, positions, obj = scan
    half = len(patterns) // 2
    # object pixels well inside the first half's positions (a raster: the top rows of the scan)
    (x_lo, y_lo), (x_hi, y_hi) = np.ceil(positions[:half].min(axis=0)), np.floor(positions[:half].max(axis=0))
    region = slice(int(y_lo), int(y_hi) - 4), slice(int(x_lo), int(x_hi))
    server = serve(create_app(engine))
    messages: list[Any] = []
    with Client(server.url) as client:
        whole = client.reconstruct(patterns, positions, options=AUTO_FLAT)
        live = client.open_session(options=AUTO_FLAT, expected_frames=len(patterns))
        listener = threading.Thread(target=lambda: messages.extend(live.updates(max_hz=20, timeout_s=30)))
        listener.start()
        for chunk in np.array_split(np.arange(half), 4):
            live.send_frames(chunk, patterns[chunk], positions[chunk])
        # (1) before the second half is sent, the deltas pasted together show the refined object there
        # (a flat start stitches amplitude 1, phase 0: the network-only canvas of this session)
        deadline = time.monotonic() + 15
        while min(seen := _ssim(_pasted(messages)[region], obj[region])) < 0.9:
            assert time.monotonic() < deadline, (seen, live.status()["refinement"])
            time.sleep(0.05)
        status = live.status()
        for chunk in np.array_split(np.arange(half, len(patterns)), 4):
            live.send_frames(chunk, patterns[chunk], positions[chunk])
        final = live.close()
        listener.join(timeout=30)
    assert not listener.is_alive()
    assert max(_ssim(np.ones_like(obj[region]), obj[region])) < 0.5
    assert status["refinement"]["frames_kept"] == half and status["refinement"]["rounds"] >= 1

    # (2) the final object is the whole-scan refinement's, and says how it was made
    _assert_matches_whole_scan(final, whole)
    window, truth = _covered(whole), _truth(obj, final)
    assert min(_ssim(_complex(final)[window], truth[window])) >= min(_ssim(_complex(whole)[window], truth[window])) - SAME
    summary = final.refinement
    assert summary["final"] and summary["frames"] == len(patterns) and summary["start"] == "flat"
    assert summary["stop_reason"] == "converged" and 0 < summary["iterations"] <= whole.refinement["iterations"]
    assert len(final.data_fit["nll"]) == len(patterns) and final.data_fit["probe"] == "model"
    assert final.probe is None and final.positions is None
    assert final.n_patterns == len(patterns)


def _pasted(messages: list[Any]) -> np.ndarray:
    """The WebSocket updates pasted in order onto the object's grid (``(SIZE, SIZE)``, 1 where none landed)."""
    canvas = np.ones((SIZE, SIZE), np.complex64)
    for header, amplitude, phase in list(messages):
        (h, w), x, y = header["shape"], header["x"], header["y"]  # x, y: object pixel of the top-left corner
        rows, cols = slice(max(y, 0), min(y + h, SIZE)), slice(max(x, 0), min(x + w, SIZE))
        part = (amplitude * np.exp(1j * phase))[rows.start - y:rows.stop - y, cols.start - x:cols.stop - x]
        canvas[rows, cols] = part
    return canvas


def test_a_refined_probe_and_positions_end_where_the_whole_scan_ends(batcher, scan) -> None:
    patterns, positions, _ = scan
    options = ReconstructOptions(**AUTO_FLAT, refine_probe=True, refine_positions=True)
    whole = reconstruct(batcher, patterns, positions, options=options)

    async def scenario() -> Reconstruction:
        manager = SessionManager(lambda model, version: batcher)
        session = manager.create(options=options)
        for chunk in np.array_split(np.random.default_rng(1).permutation(len(patterns)), 6):  # any order
            await manager.add_frames(session, chunk, patterns[chunk], positions[chunk])
            await asyncio.sleep(0.1)
        final = await manager.close(session)
        await manager.shutdown()
        return final

    final = asyncio.run(scenario())
    _assert_matches_whole_scan(final, whole)
    assert final.probe is not None and final.probe.shape == whole.probe.shape
    # rows in scan-index order, as a whole-scan request sent in index order has them
    assert final.positions.shape == positions.shape
    assert np.abs(final.positions - positions).max() <= 8 and np.abs(final.positions - whole.positions).max() < 0.5
    assert final.refinement["refine_probe"] and final.refinement["refine_positions"]
    assert final.refinement["position_correction_px"]["rms"] < 1
    # a close without cancel: the final round ran to its end and says why it stopped (the solver's reason)
    assert final.refinement["final"] and final.refinement["stop_reason"] in {"converged", "iterations", "time_limit"}
    assert final.refinement["asked"] == {"iterations": "auto", "refine_probe": True, "refine_positions": True}
    assert not any("had no effect" in warning for warning in final.refinement["warnings"])


def test_a_refinement_ended_before_its_final_round_says_it_was_cancelled(batcher, scan) -> None:
    """Closed with cancel, or expired: the summary is the last live round's (object only, its iterations),
    says the final round did not run and the refinement was cancelled, and names the refinement asked for."""
    patterns, positions, _ = scan
    options = ReconstructOptions(**AUTO_FLAT, refine_probe=True, refine_positions=True)
    asked = {"iterations": "auto", "refine_probe": True, "refine_positions": True}
    now = [0.0]

    async def end(manager: SessionManager, how: str) -> tuple[dict[str, Any], Reconstruction]:
        """The summary while the session refines live, and the result once it ended ``how``."""
        session = manager.create(options=options)
        await manager.add_frames(session, np.arange(len(patterns)), patterns, positions)
        await _until(lambda: session.status()["refinement"]["frames_shown"] is not None)
        live = session.reconstruction().refinement
        if how == "cancel":
            return live, await manager.close(session, cancel=True)
        await _until(lambda: session.counts()["reconstructed"] == len(patterns))  # then idle
        now[0] += 61
        await _until(lambda: manager.expire_idle() is not None and session.closed == "expired")  # or the reaper
        assert session.refiner.join(timeout=5)
        return live, session.reconstruction()

    async def scenario() -> dict[str, tuple[dict[str, Any], Reconstruction]]:
        manager = SessionManager(lambda model, version: batcher, SessionLimits(idle_timeout_s=60), clock=lambda: now[0])
        ended = {how: await end(manager, how) for how in ("cancel", "expire")}
        await manager.shutdown()
        return ended

    for how, (live, result) in asyncio.run(scenario()).items():
        # while open: a live round's state, no stop reason (the refinement goes on)
        assert (live["stop_reason"], live["stopped"], live["final"], live["asked"]) == (None, None, False, asked)
        summary = result.refinement
        assert summary["stop_reason"] == "cancelled" and summary["asked"] == asked and not summary["final"], summary
        # the object returned is a live round's: object only, that round's iterations
        assert (summary["refine_probe"], summary["refine_positions"]) == (False, False)
        assert summary["iterations"] == ROUND_ITERATIONS and 0 < summary["frames"] <= len(patterns)
        assert result.probe is None and result.positions is None
        why = "the session was closed with cancel" if how == "cancel" else "the session expired (idle for too long)"
        stopped = summary["stopped"]
        assert stopped.startswith(f"cancelled: {why} before the refinement asked for (refine_iterations='auto', "
                                  "refine_probe=true, refine_positions=true) ended"), stopped
        assert ("the final round did not run: the object is the last live round's (object only, "
                f"{ROUND_ITERATIONS} iterations over {summary['frames']} frames)") in stopped
        assert [w.split(":")[0] for w in summary["warnings"]] == ["`refine_probe` had no effect",
                                                                  "`refine_positions` had no effect"]


def test_a_session_that_refines_from_a_flat_object_never_runs_the_network(batcher, scan) -> None:
    patterns, positions, _ = scan

    class NoNetwork:
        bundle = batcher.bundle

        def submit(self, diffraction, scale) -> Future:
            raise AssertionError("the network ran")

    session = Session("s", NoNetwork(), options=ReconstructOptions(**AUTO_FLAT))
    session.add_frames(np.arange(40), patterns[:40], positions[:40])

    async def pump() -> None:
        from serving.sessions.pump import Pumps

        pumps = Pumps()
        pumps.start(session)
        await pumps.drain(session)

    asyncio.run(pump())
    assert session.counts()["reconstructed"] == 40 and session.status()["frames"]["failed"] == 0
    final = session.finish_refinement().result(timeout=15)
    assert final is not None and final.final and len(final.indices) == 40
    session.close("deleted")


def test_closing_stops_the_refinement_at_once_live_or_final(batcher, scan) -> None:
    patterns, positions, _ = scan
    long = ReconstructOptions(scale_policy="bundle", refine_iterations=1000, refine_start="flat")

    async def scenario() -> None:
        manager = SessionManager(lambda model, version: batcher)
        # cancelled while it refines live
        session = manager.create(options=long)
        await manager.add_frames(session, np.arange(len(patterns)), patterns, positions)
        await _until(lambda: session.refiner.progress()["rounds"] >= 1)
        begin = time.monotonic()
        result = await manager.close(session, cancel=True)
        assert session.refiner.join(timeout=5) and time.monotonic() - begin < 5
        assert session.refiner.progress()["state"] == "cancelled" and result.n_patterns > 0
        # a server shutdown during the final round: the close returns the object as last shown
        session = manager.create(options=long)
        await manager.add_frames(session, np.arange(len(patterns)), patterns, positions)
        closing = asyncio.create_task(manager.close(session))
        await _until(lambda: session.refiner.progress()["state"] == "finishing")
        with pytest.raises(InvalidRequest, match="is closing"):
            session.add_frames([0], patterns[:1])
        begin = time.monotonic()
        await manager.shutdown()
        result = await asyncio.wait_for(closing, timeout=5)
        assert time.monotonic() - begin < 5 and not session.refiner._thread.is_alive()
        assert session.closed == "cancelled at server shutdown" and session.refiner.progress()["state"] == "cancelled"
        assert result.refinement["stop_reason"] == "cancelled", result.refinement
        assert result.refinement["stopped"].startswith("cancelled: the server shut down before the refinement asked "
                                                       "for (refine_iterations=1000, ")
        assert result.amplitude.shape == (session.canvas.stitcher.geometry[1])

    asyncio.run(scenario())


def test_a_refining_session_keeps_its_frames_within_the_limit(batcher, scan) -> None:
    patterns, positions, _ = scan
    manager = SessionManager(lambda model, version: batcher, SessionLimits(max_refine_bytes=100 * (4 * N * N + 24)))
    with pytest.raises(InvalidRequest, match=r"`expected_frames` must be at most 100 for a session that refines"):
        manager.create(options=ReconstructOptions(**AUTO_FLAT), expected_frames=101)
    session = manager.create(options=ReconstructOptions(**AUTO_FLAT))
    receipt = session.add_frames(np.arange(98, 102), patterns[:4], positions[:4])
    assert receipt.accepted == 2 and {(r["what"], r["index"]) for r in receipt.rejected} == {
        (what, index) for what in ("frame", "position") for index in (100, 101)}
    plain = manager.create(options=ReconstructOptions(scale_policy="bundle"))
    assert plain.status()["refinement"] is None and plain.refiner is None
    for open_session in (session, plain):
        open_session.close("deleted")


async def _until(condition: Any, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
