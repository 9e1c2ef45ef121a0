"""The PV Access source against a real pvapy server on loopback: every frame reaches the session."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest

from ptycho_torch.plan import ReconstructOptions
from serving.app import create_app
from serving.client import Client
from serving.engine import Engine

pva = pytest.importorskip("pvaccess", reason="the optional `pva` extra (pvapy) is not installed")

N = 32


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def loopback_pva():
    """PV Access confined to 127.0.0.1 on free ports (set before pvapy opens its first context)."""
    tcp, udp = str(_free_port(socket.SOCK_STREAM)), str(_free_port(socket.SOCK_DGRAM))
    settings = {"EPICS_PVA_ADDR_LIST": "127.0.0.1", "EPICS_PVA_AUTO_ADDR_LIST": "NO",
                "EPICS_PVA_SERVER_PORT": tcp, "EPICS_PVA_BROADCAST_PORT": udp,
                "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_PVAS_SERVER_PORT": tcp,
                "EPICS_PVAS_BROADCAST_PORT": udp}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    from serving.pva_source import positions_structure

    server = pva.PvaServer()
    server.addRecord("test:det:image", pva.NtNdArray())
    server.addRecord("test:scan:positions", pva.PvObject(positions_structure()))
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _publish_frame(server, index: int, pattern: np.ndarray) -> None:
    frame = pva.NtNdArray()
    frame["uniqueId"] = index
    frame["value"] = {"floatValue": pattern.astype(np.float32).ravel()}
    frame["dimension"] = [pva.PvDimension(pattern.shape[1], 0, pattern.shape[1], 1, False),
                          pva.PvDimension(pattern.shape[0], 0, pattern.shape[0], 1, False)]
    server.update("test:det:image", frame)


def test_pva_source_delivers_every_frame_and_the_object_equals_reconstruct(engine: Engine, serve,
                                                                           loopback_pva) -> None:
    from serving.pva_source import PvaSource, positions_structure

    server = serve(create_app(engine))
    rng = np.random.default_rng(0)
    patterns = rng.random((80, N, N), np.float32) + 0.1
    positions = rng.uniform(0, 50, (80, 2))
    with Client(server.url) as client:
        whole = client.reconstruct(patterns, positions, options=ReconstructOptions(scale_policy="bundle"))
        live = client.open_session(expected_frames=80)
        source = PvaSource(live, "test:det:image", "test:scan:positions", N=N, chunk=16).start()
        time.sleep(0.5)  # the monitors connect
        for index in rng.permutation(80).tolist():  # frames in a burst, out of scan order
            _publish_frame(loopback_pva, index, patterns[index])
        _publish_frame(loopback_pva, 99, np.ones((N, 2 * N), np.float32))  # a wrongly cropped frame
        for chunk in np.array_split(np.arange(80), 8):  # positions afterwards, in batches
            update = pva.PvObject(positions_structure())
            update["index"], update["x"], update["y"] = chunk.tolist(), positions[chunk, 0].tolist(), \
                positions[chunk, 1].tolist()
            loopback_pva.update("test:scan:positions", update)
            time.sleep(0.02)
        deadline = time.monotonic() + 30
        while live.status()["frames"]["reconstructed"] < 80:
            assert time.monotonic() < deadline, {k: live.status()[k] for k in ("frames", "positions", "rejections")}
            time.sleep(0.05)
        counts = source.stop()
        assert counts.frames == 80 and counts.positions == 80
        assert len(counts.skipped) == 1 and "[64, 32]" in counts.skipped[0]
        status = live.status()
        assert status["frames"]["received"] == 80 and status["frames"]["rejected"] == 0
        final = live.close()
    assert final.n_patterns == 80 and final.origin == whole.origin
    ours, theirs = final.amplitude * np.exp(1j * final.phase), whole.amplitude * np.exp(1j * whole.phase)
    assert np.abs(ours - theirs).max() <= 1e-6 * np.abs(theirs).max()


def test_ptychopinn_pva_source_runs_a_session_until_the_expected_frames(engine: Engine, serve, loopback_pva,
                                                                          capsys) -> None:
    import json
    import threading

    from ptychopinn.cli import main
    from serving.pva_source import positions_structure

    server = serve(create_app(engine))
    rng = np.random.default_rng(1)
    counts = rng.poisson(40.0, (12, N, N)).astype(np.float32)  # what a detector publishes
    codes: list[int] = []
    command = threading.Thread(target=lambda: codes.append(main(
        ["pva-source", "--server", server.url, "--frames", "test:det:image", "--positions", "test:scan:positions",
         "--expected-frames", "12", "--chunk", "4"])))
    command.start()
    time.sleep(1.5)  # session created, monitors connected
    update = pva.PvObject(positions_structure())
    update["index"], update["x"], update["y"] = list(range(12)), [3.0 * i for i in range(12)], [5.0] * 12
    loopback_pva.update("test:scan:positions", update)
    for index in range(12):
        _publish_frame(loopback_pva, index, counts[index])
    command.join(timeout=60)
    assert not command.is_alive() and codes == [0]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames_sent"] == 12 and summary["frames_on_canvas"] == 12
    # a new monitor first gets the record's current value: the previous test's wrongly cropped frame
    assert all(reason.startswith("frame 99:") for reason in summary["skipped"])
