"""``/v1/sessions`` over a real uvicorn server on 127.0.0.1: the Python client, the WebSocket, errors."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
from oracle import write_oracle_bundle

from ptycho_torch.bundle import load_bundle
from ptycho_torch.pipeline import reconstruct
from ptycho_torch.plan import ReconstructOptions
from serving.app import create_app
from serving.client import Client
from serving.engine import Engine
from serving.errors import InvalidRequest, Overloaded, SessionNotFound, Unauthorized
from serving.npz_wire import encode_arrays, encode_reconstruct_request
from serving.sessions import SessionLimits

N = 32
BUNDLE = ReconstructOptions(scale_policy="bundle")


def _scan(seed: int = 0, count: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((count, N, N), np.float32) + 0.1, rng.uniform(-20, 60, (count, 2))


def _complex(result) -> np.ndarray:
    return result.amplitude * np.exp(1j * result.phase)


def _assert_same_object(got, expected) -> None:
    """Equal within the sessions' stated tolerance (see tests/serving/test_sessions.py: 1e-6 of max |object|)."""
    assert got.origin == expected.origin and got.amplitude.shape == expected.amplitude.shape
    assert np.abs(_complex(got) - _complex(expected)).max() <= 1e-6 * np.abs(_complex(expected)).max()


def test_shuffled_chunks_with_late_positions_over_http_equal_reconstruct(engine: Engine, serve) -> None:
    server = serve(create_app(engine))
    patterns, positions = _scan()
    rng = np.random.default_rng(1)
    with Client(server.url) as client:
        whole = client.reconstruct(patterns, positions, options=BUNDLE)
        live = client.open_session(expected_frames=48)
        assert live.model == {"name": "oracle", "version": "1"}
        for chunk in np.array_split(rng.permutation(48), 5):
            receipt = live.send_frames(chunk, patterns[chunk])
            assert receipt["accepted"] == len(chunk) and receipt["paired"] == 0
        live.send_frames([3, 4], patterns[[3, 4]])  # a resend: idempotent
        for chunk in np.array_split(rng.permutation(48), 3):
            time.sleep(0.05)  # the position stream lags the detector
            assert live.send_positions(chunk, positions[chunk])["paired"] == len(chunk)
        final = live.close()
        _assert_same_object(final, whole)
        assert final.n_patterns == 48
        with pytest.raises(SessionNotFound, match="deleted"):
            live.status()


def test_status_and_object_while_the_scan_runs(engine: Engine, serve) -> None:
    server = serve(create_app(engine))
    patterns, positions = _scan(2, 20)
    with Client(server.url) as client:
        live = client.open_session()
        live.send_frames(np.arange(10), patterns[:10], positions[:10])
        live.send_frames(np.arange(10, 20), patterns[10:])
        deadline = time.monotonic() + 20
        while (status := live.status())["frames"]["reconstructed"] < 10:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert status["frames"]["pending"]["waiting_for_position"] == 10
        assert status["model"] == {"name": "oracle", "version": "1"} and status["state"] == "open"
        partial = live.object()
        expected = client.reconstruct(patterns[:10], positions[:10], options=BUNDLE)
        _assert_same_object(partial, expected)
        assert [s["session_id"] for s in httpx.get(f"{server.url}/v1/sessions").json()["sessions"]] == [live.id]
        assert live.close(cancel=True).n_patterns == 10


def test_websocket_pushes_changed_sub_rectangles_that_rebuild_the_object(engine: Engine, serve) -> None:
    server = serve(create_app(engine))
    patterns, positions = _scan(3, 60)
    positions = np.column_stack([np.arange(60) * 3.0, np.zeros(60)])  # a line scan: changes are local
    messages: list = []
    with Client(server.url) as client:
        live = client.open_session()
        listener = threading.Thread(target=lambda: messages.extend(live.updates(max_hz=20, timeout_s=30)))
        listener.start()
        time.sleep(0.3)
        for chunk in np.array_split(np.arange(60), 6):
            live.send_frames(chunk, patterns[chunk], positions[chunk])
            time.sleep(0.15)
        final = live.close()
        listener.join(timeout=30)
    assert not listener.is_alive() and len(messages) >= 3
    H, W = final.amplitude.shape
    assert all(h * w < H * W for h, w in (m[0]["shape"] for m in messages[1:]))  # never the whole canvas again
    # paste every update into the final geometry: the result is the final object
    canvas = np.zeros((H, W), np.complex64)
    for header, amplitude, phase in messages:
        dx = int(final.origin[0] - header["origin"][0])
        col, row = header["offset"][0] + dx, header["offset"][1]
        canvas[row:row + header["shape"][0], col:col + header["shape"][1]] = amplitude * np.exp(1j * phase)
    np.testing.assert_allclose(canvas, _complex(final), atol=1e-5)
    assert messages[-1][0]["counts"]["reconstructed"] == 60


def test_a_session_inpaints_the_models_bad_pixels_as_reconstruct_does(engine: Engine, serve, tmp_path) -> None:
    """A bundle with a bad-pixel mask: the session inpaints those pixels in every message, and its object
    equals /v1/reconstruct's on the same frames, which differs from the object of the raw pixels."""
    bad = np.zeros((N, N), bool)
    bad[[15, 16, 18], [16, 17, 12]] = True  # inside the stitched central crop (M = 8 of N = 32)
    masked = Engine(load_bundle(write_oracle_bundle(tmp_path / "masked", N=N, bad_pixels=bad)), max_batch_size=16,
                    providers=["cpu"], intra_op_threads=1)
    server = serve(create_app(masked))
    patterns, positions = _scan(8, 30)
    patterns[:, bad] = 0.0  # dead pixels: no rule across the scan (hot pixels, sentinels) would find them
    with Client(server.url) as client:
        whole = client.reconstruct(patterns, positions, options=BUNDLE)
        live = client.open_session()
        for chunk in np.array_split(np.random.default_rng(3).permutation(30), 3):
            live.send_frames(chunk, patterns[chunk], positions[chunk])
        final = live.close()
    _assert_same_object(final, whole)
    raw = reconstruct(engine, patterns, positions, options=BUNDLE)  # the same oracle model, no mask
    assert np.abs(_complex(raw) - _complex(whole)).max() > 0.01 * np.abs(_complex(whole)).max()


def test_a_session_stays_on_its_model_through_a_hot_swap(engine: Engine, serve, tmp_path) -> None:
    app = create_app(engine)
    server = serve(app)
    v2 = Engine(load_bundle(write_oracle_bundle(tmp_path / "v2", N=N, version=2, training_scale=2.0)),
                max_batch_size=16, providers=["cpu"], intra_op_threads=1)
    patterns, positions = _scan(4, 30)
    with Client(server.url) as client:
        expected_v1 = client.reconstruct(patterns, positions, options=BUNDLE)
        pinned = client.open_session()
        pinned.send_frames(np.arange(15), patterns[:15], positions[:15])
        old_batcher = app.state.serving.swap_engine(v2)  # the server now serves version 2
        assert client.model_metadata("oracle")["versions"] == ["2"]
        pinned.send_frames(np.arange(15, 30), patterns[15:], positions[15:])
        assert pinned.status()["model"]["version"] == "1"
        _assert_same_object(pinned.close(), expected_v1)
        fresh = client.open_session()
        assert fresh.model["version"] == "2"
        fresh.send_frames(np.arange(30), patterns, positions)
        assert not np.allclose(fresh.close().amplitude, expected_v1.amplitude)
    old_batcher.close()


def test_session_errors_are_clear_4xx_and_503(engine: Engine, serve) -> None:
    server = serve(create_app(engine, sessions=SessionLimits(max_sessions=1, max_pending_frames=4)))
    patterns, positions = _scan(5, 6)
    with Client(server.url) as client:
        with pytest.raises(InvalidRequest, match="scale_policy"):
            client.open_session(options={"scale_policy": "scan"})
        with pytest.raises(InvalidRequest, match=r"unknown options \['colour'\]; known options are"):  # as /v1/reconstruct
            client.open_session(options={"colour": 1})
        live = client.open_session()
        with pytest.raises(Overloaded, match="limit is 1"):
            client.open_session()
        with pytest.raises(Overloaded, match="limit of 4"):
            live.send_frames(np.arange(6), patterns)
        with pytest.raises(InvalidRequest, match=r"must hold \['indices', 'patterns'\]"):
            client._request("POST", f"{live.path}/frames", content=encode_arrays({"patterns": patterns}))
        with pytest.raises(InvalidRequest, match="NPZ archive"):
            client._request("POST", f"{live.path}/positions", content=b"not an npz")
        with pytest.raises(SessionNotFound, match="no session has that id"):
            client._request("GET", "/v1/sessions/nope")
    response = httpx.post(f"{server.url}/v1/sessions", json={"model": "oracle", "colour": "red"})
    assert response.status_code == 400 and "colour" in response.json()["error"]
    response = httpx.post(f"{server.url}/v1/sessions", json={"model": "other"})
    assert response.status_code == 404 and "not served here" in response.json()["error"]
    for body in ({"version": "7"}, {"model": "oracle", "version": "7"}):  # no model: the default one, that version
        response = httpx.post(f"{server.url}/v1/sessions", json=body)
        assert response.status_code == 404 and "has no version `7`" in response.json()["error"], body


@pytest.mark.parametrize(("options", "status", "message"), [
    ({"stitch_M": "8"}, 400, "`stitch_M` must be a non-negative integer, got '8'"),
    ({"units": "photons"}, 400, "`units` must be one of ['amplitude', 'counts'], got 'photons'"),
    ({"stich_M": 8}, 400, "unknown options ['stich_M']; known options are"),
    ({"scale": 1e-35}, 422, "`scale` must be in [1e-30, 1e+30], got 1e-35"),
    ({"scale": 0.02, "scale_policy": "bundle"}, 400, "`scale` and `scale_policy` 'bundle' contradict each other"),
])
def test_a_session_and_a_whole_scan_answer_an_option_alike(engine: Engine, serve, options: dict, status: int,
                                                           message: str) -> None:
    """Both read options with ReconstructOptions.from_mapping: same status, same message (a session's used
    to go through pydantic, which coerced "8" to 8 and named no value)."""
    server = serve(create_app(engine))
    patterns, positions = _scan()
    session = httpx.post(f"{server.url}/v1/sessions", json={"options": options})
    whole = httpx.post(f"{server.url}/v1/reconstruct",
                       content=encode_reconstruct_request(patterns, positions, options=options))
    assert (session.status_code, whole.status_code) == (status, status)
    assert session.json()["error"] == whole.json()["error"] and message in session.json()["error"]


def test_sessions_and_their_websocket_need_the_token(engine: Engine, serve) -> None:
    server = serve(create_app(engine, token="s3cret"))
    with Client(server.url) as anonymous, pytest.raises(Unauthorized):
        anonymous.open_session()
    patterns, positions = _scan(6, 4)
    with Client(server.url, token="s3cret") as client:
        live = client.open_session()
        live.send_frames(np.arange(4), patterns, positions)
        updates = live.updates(timeout_s=10)
        header, amplitude, _ = next(updates)
        assert header["counts"]["received"] == 4 and amplitude.size > 0
        updates.close()
        from websockets.exceptions import ConnectionClosed, InvalidStatus
        from websockets.sync.client import connect
        url = server.url.replace("http", "ws") + f"{live.path}/updates"
        with pytest.raises((InvalidStatus, ConnectionClosed)):
            with connect(url, open_timeout=10) as socket:
                socket.recv(timeout=10)
        with connect(url + "?token=s3cret", open_timeout=10) as socket:
            assert isinstance(socket.recv(timeout=10), bytes)
        live.close()


def _metric(text: str, name: str) -> float:
    import re

    return sum(float(v) for v in re.findall(rf"^{re.escape(name)} (\S+)$", text, re.M))


def test_idle_sessions_expire_on_a_running_server_and_metrics_count_frames(engine: Engine, serve) -> None:
    server = serve(create_app(engine, sessions=SessionLimits(idle_timeout_s=1.5)))
    patterns, positions = _scan(7, 8)
    with Client(server.url) as client:
        live = client.open_session()
        live.send_frames(np.arange(8), patterns, positions)
        live.send_frames([8], patterns[:1])  # no position will come: it stays pending
        deadline = time.monotonic() + 20
        while live.status()["frames"]["reconstructed"] < 8:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        text = httpx.get(f"{server.url}/metrics").text
        assert _metric(text, "ptychopinn_sessions_open") == 1
        assert _metric(text, "ptychopinn_session_pending_frames") == 1
        assert _metric(text, 'ptychopinn_session_frames_total{outcome="reconstructed"}') == 8
        time.sleep(3.0)  # idle past the timeout: the reaper closes it
        with pytest.raises(SessionNotFound, match="expired"):
            live.status()
        text = httpx.get(f"{server.url}/metrics").text
        assert _metric(text, "ptychopinn_sessions_open") == 0
        assert _metric(text, 'ptychopinn_session_frames_total{outcome="received"}') == 9
