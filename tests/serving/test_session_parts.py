"""The parts a live session composes: message checks, the frame table, the stream canvas, and the
fields of its status, receipts and updates (which clients and the viewer read)."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import write_oracle_bundle

from ptycho_torch.bundle import load_bundle
from ptycho_torch.errors import DataContractError
from ptycho_torch.plan import ReconstructOptions, resolve
from serving.errors import InvalidRequest
from serving.sessions import Session
from serving.sessions.frame_table import FrameTable
from serving.sessions.messages import IndexRange, read_frames, read_positions
from serving.sessions.stream_canvas import StreamCanvas

N = 32
RANGE = IndexRange.of(None, 100)


class _BundleOnly:
    """A runner stand-in: only the bundle is read (the test stitches fixed outputs itself)."""

    def __init__(self, bundle) -> None:
        self.bundle = bundle


def test_frames_are_inpainted_where_the_model_marks_bad_pixels_and_the_callers_array_is_untouched(tmp_path) -> None:
    bad = np.zeros((N, N), bool)
    bad[10, 10] = True
    plan = resolve(load_bundle(write_oracle_bundle(tmp_path / "b", N=N, bad_pixels=bad)).facts, stream=True)
    patterns = np.ones((2, N, N), np.float32)
    patterns[:, 10, 10] = 50.0
    patterns[1, 9, 10] = 3.0  # a neighbour of the bad pixel: the mean of the 8 good ones is (7 + 3) / 8
    message = read_frames(plan, [0, 1], patterns, None, RANGE)
    assert message.amplitudes[:, 10, 10].tolist() == [1.0, 1.25]
    assert patterns[0, 10, 10] == 50.0  # the caller's float32 array, which to_amplitudes does not copy
    assert message.amplitudes[1, 9, 10] == 3.0 and message.reasons.tolist() == [None, None]


def test_a_message_reports_each_items_first_problem_and_refuses_a_malformed_one(oracle_bundle) -> None:
    plan = resolve(oracle_bundle.facts, stream=True)
    patterns = np.ones((3, N, N), np.float32)
    patterns[0, 0, 0] = np.nan
    patterns[2, 0, 0] = -1.0
    reasons = read_frames(plan, [100, 1, 2], patterns, None, RANGE).reasons.tolist()
    assert reasons == ["index must be < 100, this server's largest scan (give expected_frames)", None,
                       "pattern holds negative values (amplitudes or counts must be >= 0)"]
    placed = read_positions([-1, 1], [[np.inf, 0.0], [np.inf, 0.0]], RANGE)
    assert placed.reasons.tolist() == ["index must be >= 0", "position holds NaN/inf"]
    with pytest.raises(InvalidRequest, match=r"`positions` must be real numbers of shape \(3, 2\)"):
        read_frames(plan, [0, 1, 2], np.ones((3, N, N)), np.ones((2, 2)), RANGE)
    with pytest.raises(DataContractError, match="float32 would overflow"):
        read_frames(plan, [0], np.full((1, N, N), 1e30, np.float32), None, RANGE)
    with pytest.raises(InvalidRequest, match=r"`expected_frames` must be an integer in \[1, 100\], got 0"):
        IndexRange.of(0, 100)


def test_the_table_pairs_by_index_and_a_refused_batch_goes_back_to_the_head_of_the_queue(oracle_bundle) -> None:
    plan = resolve(oracle_bundle.facts, stream=True)
    table = FrameTable(100)
    patterns = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, N, N), np.float32)
    taken = table.add_frames(read_frames(plan, [3, 1, 2, 0], patterns, None, RANGE))
    assert (taken.accepted, taken.kept.tolist(), table.waiting) == (4, [3, 1, 2, 0], 4)
    placed = table.add_positions(read_positions([0, 1, 2], [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], RANGE),
                                 reserve=lambda pos: None)
    assert placed.accepted == 3 and table.pair(np.array([0, 1, 2])) == 3 and (table.waiting, table.queued) == (1, 3)
    indices, amplitudes, positions = table.take(2)
    assert indices.tolist() == [0, 1] and table.in_flight == 2 and table.pending == 4
    assert [a[0, 0] for a in amplitudes] == [3.0, 1.0] and positions.tolist() == [[0.0, 0.0], [1.0, 0.0]]
    table.requeue(indices, np.stack(amplitudes))
    assert table.in_flight == 0 and table.take(5)[0].tolist() == [0, 1, 2]


def test_the_canvas_admits_positions_only_while_the_object_fits_and_marks_each_viewers_changes() -> None:
    canvas = StreamCanvas(M=8, tile=32, max_tiles=4, bounds=[[0, 100], [0, 100]])
    reasons = np.full(2, None, object)
    canvas.flag_outside(np.array([[50.0, 50.0], [150.0, 50.0]]), reasons)
    assert reasons[0] is None and "outside the canvas bounds" in reasons[1]
    assert canvas.reserve(np.array([[28.0, 28.0]])) is None  # its 8 x 8 crop spans 2 x 2 tiles of 32
    assert "past its limit of 4 tiles of 32x32" in canvas.reserve(np.array([[60.0, 4.0]]))  # a fifth tile
    assert "over the canvas limit of 4,096 px" in canvas.reserve(np.array([[20.0, 20.0], [99.0, 99.0]]))
    assert canvas.reserve(np.array([[20.0, 20.0]])) is None  # nothing was kept of the refused ones
    viewer = canvas.watch()
    assert viewer.dirty is None and not viewer.event.is_set()  # nothing on the canvas yet
    ones = np.ones((1, 1, 16, 16), np.float32)
    canvas.add(ones, 0 * ones, np.array([[10.0, 10.0]]))
    rect, patch, header = canvas.take_update(viewer)
    assert rect == (6, 6, 9, 9) and patch.shape == (9, 9) and header["version"] == 1
    assert canvas.take_update(viewer) is None and canvas.to_json()["shape"] == [9, 9]


def test_status_receipt_and_update_keep_their_fields(oracle_bundle) -> None:
    """The JSON a client reads: every field, by name (the viewer and replay read them)."""
    session = Session("s", _BundleOnly(oracle_bundle), expected_frames=4)
    patterns = np.ones((2, N, N), np.float32)
    receipt = session.add_frames([0, 1], patterns, [[0.0, 0.0], [3.0, 0.0]]).to_json()
    assert receipt == {"accepted": 2, "duplicates": 0, "rejected": [], "paired": 2,
                       "counts": {"received": 2, "paired": 2, "reconstructed": 0, "pending": 2, "rejected": 0}}
    watch = session.watch()
    work = session.take_work(8)
    session.finish_work(work, (work.diffraction, 0 * work.diffraction))
    header = session.take_update(watch)[2]
    assert list(header) == ["x", "y", "offset", "origin", "canvas_shape", "version", "counts"]
    status = session.status()
    assert list(status) == ["session_id", "state", "model", "expected_frames", "frames", "positions", "rejections",
                            "rates_per_s", "latency_s", "canvas", "options", "scale", "age_s", "idle_s",
                            "refinement"]
    assert status["refinement"] is None  # its plan does not refine (tests/serving/test_session_refinement.py)
    assert status["frames"] == {"received": 2, "duplicates": 0, "paired": 2, "reconstructed": 2, "rejected": 0,
                                "failed": 0, "pending": {"waiting_for_position": 0, "queued": 0, "in_flight": 0}}
    assert status["positions"] == {"received": 2, "duplicates": 0, "without_frame": 0}
    assert list(status["latency_s"]) == ["count", "p50", "p99"] and status["latency_s"]["count"] == 2
    assert list(status["canvas"]) == ["origin", "shape", "tiles", "bytes"]
    assert status["options"] == {"scale_policy": "bundle", "units": None, "stitch_M": 8}
    assert status["scale"] == session.plan.scale == oracle_bundle.training_scale
    assert Session("o", _BundleOnly(oracle_bundle), options=ReconstructOptions(scale=2.0)).status()["options"][
        "scale_policy"] == "explicit"
