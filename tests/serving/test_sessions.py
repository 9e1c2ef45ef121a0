"""Live sessions in-process: pairing by index, duplicates, limits, expiry, and the whole-scan equality."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from oracle import write_oracle_bundle

from ptycho_torch.bundle import load_bundle
from ptycho_torch.errors import InvalidInput
from ptycho_torch.pipeline import reconstruct
from ptycho_torch.plan import ReconstructOptions
from serving.batching import DynamicBatcher
from serving.engine import Engine
from serving.errors import InvalidRequest, Overloaded, SessionNotFound
from serving.sessions import Session, SessionLimits, SessionManager

N = 32
BUNDLE = ReconstructOptions(scale_policy="bundle")
TOLERANCE = 1e-6
"""Session object vs /v1/reconstruct: max |difference| of the complex objects relative to max |object|.
Same patches, same splat; only the float64 running sums are added in arrival order instead of scan
order (~1e-15 relative), which can move a float32 output by one rounding step (~6e-8)."""


def _scan(seed: int = 0, count: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((count, N, N), np.float32) + 0.1, rng.uniform(-30, 40, (count, 2))


@pytest.fixture
def batcher(engine: Engine):
    batcher = DynamicBatcher(engine, max_queue_delay_us=0)
    yield batcher
    batcher.close()


def _drain(session: Session) -> None:
    """Infer and stitch every paired frame synchronously (what the manager's pump does on the loop)."""
    while (work := session.take_work(16)) is not None:
        session.finish_work(work, session.runner.submit(work.diffraction, work.scale).result())


def _assert_same_object(session_result, whole) -> None:
    assert session_result.origin == whole.origin
    assert session_result.amplitude.shape == whole.amplitude.shape
    ours = session_result.amplitude * np.exp(1j * session_result.phase)
    theirs = whole.amplitude * np.exp(1j * whole.phase)
    assert np.abs(ours - theirs).max() <= TOLERANCE * np.abs(theirs).max()
    np.testing.assert_allclose(session_result.coverage, whole.coverage, rtol=1e-6, atol=1e-9)


def test_shuffled_chunks_with_late_positions_equal_reconstruct_on_the_whole_scan(batcher) -> None:
    patterns, positions = _scan()
    whole = reconstruct(batcher, patterns, positions, options=BUNDLE)
    rng = np.random.default_rng(2)
    session = Session("s", batcher)
    order = rng.permutation(len(patterns))
    frame_chunks = np.array_split(order, 6)
    position_chunks = np.array_split(rng.permutation(len(patterns)), 4)
    # frames first (nothing can be inferred), then positions late and in another order, one resend
    for chunk in frame_chunks:
        receipt = session.add_frames(chunk, patterns[chunk])
        assert receipt.accepted == len(chunk) and receipt.paired == 0
    assert session.take_work(16) is None and session.status()["frames"]["pending"]["waiting_for_position"] == 60
    for chunk in position_chunks[:2]:
        receipt = session.add_positions(chunk, positions[chunk])
        assert receipt.paired == len(chunk)
        _drain(session)
    partial = session.reconstruction()
    assert 0 < partial.n_patterns < 60
    resend = session.add_frames(frame_chunks[0], patterns[frame_chunks[0]])
    assert resend.accepted == 0 and resend.duplicates == len(frame_chunks[0])
    for chunk in position_chunks[2:]:
        session.add_positions(chunk, positions[chunk])
    _drain(session)
    status = session.status()
    assert status["frames"]["reconstructed"] == 60 and status["frames"]["duplicates"] == len(frame_chunks[0])
    assert status["latency_s"]["count"] == 60 and status["latency_s"]["p99"] >= status["latency_s"]["p50"] > 0
    _assert_same_object(session.reconstruction(), whole)


def test_frames_carrying_their_positions_equal_reconstruct(batcher) -> None:
    patterns, positions = _scan(3, 40)
    whole = reconstruct(batcher, patterns, positions, options=BUNDLE)
    session = Session("s", batcher)
    for chunk in np.array_split(np.arange(40)[::-1], 5):
        assert session.add_frames(chunk, patterns[chunk], positions[chunk]).paired == len(chunk)
        _drain(session)
    _assert_same_object(session.reconstruction(), whole)


def test_bad_items_are_rejected_one_by_one_with_reasons(batcher) -> None:
    patterns, positions = _scan(4, 6)
    patterns[1, 0, 0] = np.nan
    patterns[2, 3, 3] = -1
    session = Session("s", batcher, expected_frames=5)
    receipt = session.add_frames(np.arange(6), patterns)
    assert receipt.accepted == 3
    reasons = {r["index"]: r["reason"] for r in receipt.rejected}
    assert "NaN" in reasons[1] and "negative" in reasons[2] and "expected_frames = 5" in reasons[5]
    changed = patterns[0] + 1
    assert "different data" in session.add_frames([0], changed[None]).rejected[0]["reason"]
    receipt = session.add_positions([0, 3, 4, 4], [[1.0, 2.0], [np.inf, 0], [3, 4], [5, 6]])
    assert receipt.accepted == 2 and receipt.paired == 2
    reasons = [r["reason"] for r in receipt.rejected]
    assert "NaN/inf" in reasons[0] and "sent before as [3.0, 4.0]" in reasons[1]
    status = session.status()
    assert status["frames"]["rejected"] == 6 and len(status["rejections"]) == 6
    with pytest.raises(InvalidRequest, match=r"shape \(2, 32, 32\)"):
        session.add_frames([7, 8], np.ones((2, 16, 16), np.float32))
    with pytest.raises(InvalidRequest, match="1-D integer"):
        session.add_positions([0.5], [[1.0, 2.0]])


def test_an_index_repeated_in_a_message_is_taken_as_if_its_rows_came_one_by_one(batcher) -> None:
    """A message is checked whole (numpy over the chunk); an index it repeats is decided row by row."""
    patterns, _ = _scan(10, 3)
    session = Session("s", batcher)
    rows = [patterns[0], patterns[1], patterns[1], patterns[0], patterns[1] + 1, patterns[2]]
    receipt = session.add_frames([0, 1, 1, 0, 1, 2], np.stack(rows))
    assert (receipt.accepted, receipt.duplicates) == (3, 2)
    assert receipt.rejected == [{"what": "frame", "index": 1,
                                 "reason": "frame index sent before with different data; the first frame is kept"}]
    # 3: refused (NaN), then kept; 0: kept, then resent changed (refused); 1 kept; 3 has no frame yet
    receipt = session.add_positions([3, 0, 3, 0, 1], [[np.nan, 0.0], [1.0, 2.0], [4.0, 5.0], [1.5, 2.0], [1.0, 2.0]])
    assert (receipt.accepted, receipt.duplicates, receipt.paired) == (3, 0, 2)
    assert [(r["index"], r["reason"]) for r in receipt.rejected] == [
        (3, "position holds NaN/inf"),
        (0, "position index sent before as [1.0, 2.0], now [1.5, 2.0]; the first is kept")]
    status = session.status()
    assert status["positions"] == {"received": 3, "duplicates": 0, "without_frame": 1}
    assert status["frames"]["pending"]["waiting_for_position"] == 1 and status["frames"]["paired"] == 2
    work = session.take_work(16)
    assert work.indices.tolist() == [0, 1]
    np.testing.assert_array_equal(work.positions, [[1.0, 2.0], [1.0, 2.0]])
    np.testing.assert_array_equal(work.diffraction[:, 0], patterns[:2])


def test_positions_that_fit_the_canvas_only_in_part_are_taken_in_order(batcher) -> None:
    """The whole message would outgrow the canvas: each row is then checked after the ones before it."""
    session = Session("s", batcher, max_tiles=1, tile=64)
    receipt = session.add_positions([0, 1, 2, 3], [[10.0, 10.0], [100.0, 20.0], [20.0, 20.0], [100.0, 20.0]])
    assert receipt.accepted == 2 and [r["index"] for r in receipt.rejected] == [1, 3]
    assert receipt.rejected[0]["reason"] == ("position [100.0, 20.0] would grow the canvas past its limit of 1 tiles "
                                             "of 64x64 pixels; check the position units (object pixels)")
    assert session.add_positions([1], [[15.0, 15.0]]).accepted == 1  # refused before, so not held


def test_sessions_refuse_the_scan_scale_policy_and_grouped_models(batcher, oracle_bundle_g2) -> None:
    with pytest.raises(InvalidInput, match="scale_policy.*'bundle'"):
        Session("s", batcher, options=ReconstructOptions(scale_policy="scan"))
    engine = Engine(oracle_bundle_g2, max_batch_size=4, providers=["cpu"], intra_op_threads=1)
    grouped = DynamicBatcher(engine)
    try:
        with pytest.raises(InvalidInput, match="gridsize 1"):
            Session("s", grouped)
    finally:
        grouped.close()


def test_sessions_refuse_options_they_would_silently_ignore(batcher, tmp_path) -> None:
    """A mismatching pixel_size_m was accepted and had no effect."""
    sized = Engine(load_bundle(write_oracle_bundle(tmp_path / "b", N=N, pixel_size_m=1e-8)), max_batch_size=4,
                   providers=["cpu"], intra_op_threads=1)
    runner = DynamicBatcher(sized)
    try:
        with pytest.raises(InvalidInput, match=r"2e-08 m differs from model oracle's training pixel "
                                                    r"size 1e-08 m"):
            Session("s", runner, options=ReconstructOptions(scale_policy="bundle", pixel_size_m=2e-8))
        assert Session("s", runner, options=ReconstructOptions(scale_policy="bundle", pixel_size_m=1e-8))
    finally:
        runner.close()


def test_positions_outside_the_bounds_or_the_canvas_limit_are_rejected(batcher) -> None:
    session = Session("s", batcher, bounds=[[0, 100], [0, 100]], max_tiles=4, tile=64)
    receipt = session.add_positions([0, 1, 2], [[50, 50], [150, 50], [60, 60]])
    assert receipt.accepted == 2 and "outside the canvas bounds" in receipt.rejected[0]["reason"]
    wide = Session("w", batcher, max_tiles=1, tile=64)
    receipt = wide.add_positions([0, 1, 2], [[10, 10], [20, 20], [100, 20]])
    assert receipt.accepted == 2 and "limit of 1 tiles" in receipt.rejected[0]["reason"]


@pytest.mark.parametrize("far", [1e4, 1e9, 1e300, -1e300])
def test_a_far_position_is_rejected_by_the_objects_bounding_box_not_only_its_tiles(batcher, far) -> None:
    """Two patches far apart touch few tiles, but the object comes back on their bounding box: a 500
    (array too big) or an empty object with frames silently lost before this was checked."""
    patterns, positions = _scan(count=8)
    session = Session("s", batcher, max_tiles=16, tile=64)  # 65,536 px: about 256 x 256
    wild = positions.copy()
    wild[3] = [far, 0.0]
    receipt = session.add_frames(np.arange(8), patterns, wild)
    assert receipt.accepted == 8 and len(receipt.rejected) == 1
    assert receipt.rejected[0]["index"] == 3 and "over the canvas limit of 65,536 px" in receipt.rejected[0]["reason"]
    _drain(session)
    result = session.reconstruction()
    keep = np.arange(8) != 3
    whole = reconstruct(batcher, patterns[keep], positions[keep], options=BUNDLE)
    _assert_same_object(result, whole)
    assert session.counts()["reconstructed"] == 7


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_manager_limits_sessions_and_pending_frames_and_expires_idle_ones(batcher) -> None:
    clock = _Clock()
    limits = SessionLimits(max_sessions=2, max_pending_frames=10, idle_timeout_s=60)
    manager = SessionManager(lambda model, version: batcher, limits, clock=clock)
    first = manager.create()
    manager.create()
    with pytest.raises(Overloaded, match="limit is 2"):
        manager.create()
    patterns, _ = _scan(5, 12)
    asyncio.run(manager.add_frames(first, np.arange(8), patterns[:8]))
    with pytest.raises(Overloaded, match="limit of 10"):
        asyncio.run(manager.add_frames(first, np.arange(8, 12), patterns[8:]))
    assert first.status()["frames"]["received"] == 8  # the refused message left nothing behind
    clock.now = 30
    first.add_positions([0], [[0.0, 0.0]])
    clock.now = 61
    assert len(manager.expire_idle()) == 1  # the other one, idle since 0
    clock.now = 200
    assert manager.expire_idle() == [first.id]
    with pytest.raises(SessionNotFound, match="expired"):
        manager.get(first.id)
    with pytest.raises(InvalidRequest, match="closed"):
        first.add_positions([1], [[0.0, 0.0]])


def test_manager_pumps_paired_frames_and_close_drains_or_cancels(batcher) -> None:
    patterns, positions = _scan(6, 50)
    whole = reconstruct(batcher, patterns, positions, options=BUNDLE)

    async def scenario() -> None:
        manager = SessionManager(lambda model, version: batcher)
        session = manager.create()
        for chunk in np.array_split(np.arange(50), 5):
            await manager.add_frames(session, chunk, patterns[chunk], positions[chunk])
        final = await manager.close(session)
        _assert_same_object(final, whole)
        assert session.closed == "deleted"

        cancelled = manager.create()
        await manager.add_frames(cancelled, np.arange(50), patterns)
        result = await manager.close(cancelled, cancel=True)
        assert result.n_patterns == 0 and cancelled.status()["frames"]["pending"]["waiting_for_position"] == 0
        await manager.shutdown()

    asyncio.run(scenario())


def test_without_expected_frames_indices_are_bounded_by_the_server_limit(batcher) -> None:
    patterns, _ = _scan(7, 2)
    session = Session("s", batcher, max_frames=100)
    receipt = session.add_frames([99, 100], patterns)
    assert receipt.accepted == 1 and "largest scan" in receipt.rejected[0]["reason"]
    with pytest.raises(InvalidRequest, match=r"\[1, 100\]"):
        Session("t", batcher, expected_frames=101, max_frames=100)


def test_session_limits_are_checked() -> None:
    from ptycho_torch.errors import ConfigError

    with pytest.raises(ConfigError, match="max_sessions"):
        SessionLimits(max_sessions=0)
    with pytest.raises(ConfigError, match="idle_timeout_s"):
        SessionLimits(idle_timeout_s=0)


def test_cancelling_a_session_cancels_its_inference_at_once(batcher) -> None:
    """Batches still queued in the batcher are cancelled, so it drops them without computing them."""
    from concurrent.futures import Future

    submitted: list[Future] = []

    class Stalled:  # a runner whose batches never finish: they sit in its queue
        bundle = batcher.bundle
        max_batch_size = 4

        def submit(self, diffraction, scale) -> Future:
            submitted.append(Future())
            return submitted[-1]

    patterns, positions = _scan(8, 12)

    async def scenario() -> None:
        manager = SessionManager(lambda model, version: Stalled())
        session = manager.create()
        await manager.add_frames(session, np.arange(12), patterns, positions)
        await asyncio.sleep(0.05)
        assert len(submitted) == 2 and session.status()["frames"]["pending"]["queued"] == 4
        result = await asyncio.wait_for(manager.close(session, cancel=True), timeout=5)
        await asyncio.sleep(0.01)
        assert result.n_patterns == 0 and all(future.cancelled() for future in submitted)
        await manager.shutdown()

    asyncio.run(scenario())


def test_a_full_inference_queue_delays_frames_and_a_failed_batch_rejects_them_with_the_reason(batcher) -> None:
    from concurrent.futures import Future

    calls: list[str] = []

    class Flaky:  # first submit: queue full; second: the batch fails; then the real batcher
        bundle = batcher.bundle
        max_batch_size = 5

        def submit(self, diffraction, scale) -> Future:
            calls.append("submit")
            if len(calls) == 1:
                raise Overloaded("queue full")
            if len(calls) == 2:
                failed: Future = Future()
                failed.set_exception(RuntimeError("CUDA out of memory"))
                return failed
            return batcher.submit(diffraction, scale)

    patterns, positions = _scan(9, 10)

    async def scenario() -> None:
        manager = SessionManager(lambda model, version: Flaky())
        session = manager.create()
        await manager.add_frames(session, np.arange(10), patterns, positions)
        final = await manager.close(session)
        status = session.status()
        assert final.n_patterns == 5 and status["frames"]["failed"] == 5 and status["frames"]["rejected"] == 5
        assert all("inference failed: CUDA out of memory" in r["reason"] for r in status["rejections"])
        assert len(calls) == 3
        await manager.shutdown()

    asyncio.run(scenario())
