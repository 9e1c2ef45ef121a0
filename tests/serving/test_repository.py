"""Triton's extensions over a real socket, spoken to by tritonclient.http: model configuration,
statistics, the model repository (index, load, unload; several models and versions at once; a failed
load keeps the served versions), Triton's metric names and labels, the access log with request ids,
and hot reload under load with no failed request."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from google.protobuf import json_format, text_format
from oracle import PHASE_FACTOR, write_oracle_bundle
from tritonclient.grpc import model_config_pb2

from export.triton import triton_config
from ptycho_torch.bundle import load_bundle
from serving.app import create_app
from serving.client import Client
from serving.engine import Engine

N = 16


def _engine(bundle_dir: Path) -> Engine:
    return Engine(load_bundle(bundle_dir), max_batch_size=8, providers=["cpu"], intra_op_threads=1)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """``oracle/1`` and ``other/1`` (the same graph served under a second name)."""
    root = tmp_path / "models"
    write_oracle_bundle(root / "oracle" / "1", N=N)
    write_oracle_bundle(root / "other" / "1", N=N, name="other")
    return root


def _app(root: Path):
    return create_app(_engine(root / "oracle" / "1"), model_repository=root,
                      engine_factory=lambda bundle: Engine(bundle, max_batch_size=8, providers=["cpu"],
                                                           intra_op_threads=1))


def _infer(client, model: str, version: str = "") -> tuple[np.ndarray, str]:
    import tritonclient.http as triton

    x = np.random.default_rng(0).random((2, 1, N, N), dtype=np.float32)
    inputs = [triton.InferInput("diffraction", list(x.shape), "FP32"), triton.InferInput("scale", [2], "FP32")]
    inputs[0].set_data_from_numpy(x, binary_data=True)
    inputs[1].set_data_from_numpy(np.ones(2, np.float32), binary_data=True)
    result = client.infer(model, inputs, model_version=version)
    np.testing.assert_allclose(result.as_numpy("phase"), PHASE_FACTOR * x, rtol=1e-5)
    return result.as_numpy("amplitude"), result.get_response()["model_version"]


def test_tritonclient_repository_index_load_unload_config_and_statistics(repository: Path, serve) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    server = serve(_app(repository))
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert {"model_repository", "statistics", "model_configuration"} <= set(client.get_server_metadata()["extensions"])
    assert client.get_model_repository_index() == [  # every model of the folder is served from the start
        {"name": "oracle", "version": "1", "state": "READY", "reason": ""},
        {"name": "other", "version": "1", "state": "READY", "reason": ""}]
    assert client.is_model_ready("other") and _infer(client, "other")[1] == "1"  # several models at once
    write_oracle_bundle(repository / "oracle" / "2", N=N, version=2)
    client.load_model("oracle")  # a new version appears beside the first
    assert [_infer(client, "oracle", v)[1] for v in ("1", "2", "")] == ["1", "2", "2"]  # latest by default
    assert client.get_model_metadata("oracle")["versions"] == ["1", "2"]
    assert {(e["name"], e["version"], e["state"]) for e in client.get_model_repository_index()} == {
        ("oracle", "1", "READY"), ("oracle", "2", "READY"), ("other", "1", "READY")}

    # the configuration is a valid Triton ModelConfig and says what the bundle's own config.pbtxt says
    config = client.get_model_config("oracle")
    parsed = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    manifest = load_bundle(repository / "oracle" / "2").manifest  # what export writes as config.pbtxt
    shipped = text_format.Parse(triton_config("oracle", 2, manifest.inputs, manifest.outputs),
                                model_config_pb2.ModelConfig())
    assert (parsed.name, parsed.platform, parsed.max_batch_size) == ("oracle", "onnxruntime_onnx", 8)
    assert list(parsed.input) == list(shipped.input) and list(parsed.output) == list(shipped.output)
    assert list(parsed.version_policy.specific.versions) == [1, 2]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 100
    assert client.get_model_config("oracle", "1")["name"] == "oracle"

    stats = client.get_inference_statistics("oracle", "2")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("oracle", "2")]
    assert stats[0]["inference_stats"]["success"]["count"] == 2 and stats[0]["inference_count"] == 4
    assert stats[0]["execution_count"] >= 1 and stats[0]["inference_stats"]["compute_infer"]["ns"] > 0
    assert sum(b["compute_infer"]["count"] for b in stats[0]["batch_stats"]) == stats[0]["execution_count"]
    every = client.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in every} == {("oracle", "1"), ("oracle", "2"), ("other", "1")}

    # Triton's metric names and labels for every served version
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'nv_inference_request_success{model="oracle",version="2"} 2.0' in metrics
    assert 'nv_inference_count{model="oracle",version="2"} 4.0' in metrics
    assert 'nv_inference_exec_count{model="other",version="1"}' in metrics

    # a failed load keeps what was served
    shutil.copytree(repository / "oracle" / "2", repository / "oracle" / "3")
    (repository / "oracle" / "3" / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(InferenceServerException, match="failed to load model `oracle`.*still serving versions"):
        client.load_model("oracle")
    assert client.get_model_metadata("oracle")["versions"] == ["1", "2"] and _infer(client, "oracle")[1] == "2"
    shutil.rmtree(repository / "oracle" / "3")

    client.unload_model("other")
    with pytest.raises(InferenceServerException, match="not served here"):
        _infer(client, "other")
    assert {"name": "other", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"} in \
        client.get_model_repository_index()
    client.load_model("other")
    assert _infer(client, "other")[1] == "1"
    with pytest.raises(InferenceServerException, match="not in the model repository"):
        client.load_model("nope")
    with pytest.raises(InferenceServerException, match="unsupported parameters"):
        client.load_model("oracle", config="{}")
    client.close()


def test_access_log_has_one_line_per_request_with_its_id(repository: Path, serve,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    server = serve(_app(repository))
    x = np.ones((1, 1, N, N), np.float32)
    with caplog.at_level(logging.INFO, logger="serving.access"), Client(server.url) as client:
        client.infer("oracle", x, np.ones(1, np.float32))
        answer = httpx.get(f"{server.url}/v2/models/oracle", headers={"X-Request-ID": "beamline-42"})
        missing = httpx.get(f"{server.url}/v2/models/nope")
        # the line is written after the last body byte is sent, so the client can read its answer
        # first; wait inside at_level: once it exits, a late INFO line is below the logger's level
        deadline = time.monotonic() + 5
        while len(lines := [r.getMessage() for r in caplog.records if r.name == "serving.access"]) < 3 \
                and time.monotonic() < deadline:
            time.sleep(0.02)
    assert answer.headers["x-request-id"] == "beamline-42"
    assert len(missing.headers["x-request-id"]) == 16  # generated when the client sends none
    assert len(lines) == 3
    assert "method=POST path=/v2/models/oracle/infer status=200" in lines[0]
    assert "model=oracle version=1" in lines[0] and "bytes_in=" in lines[0]
    assert lines[1].startswith("request_id=beamline-42 ") and "status=200" in lines[1]
    assert f"request_id={missing.headers['x-request-id']} " in lines[2] and "status=404" in lines[2]


def test_hot_reload_under_load_fails_no_request(repository: Path, serve) -> None:
    """Four clients infer without pause while the model is reloaded with a new version five times."""
    server = serve(_app(repository))
    stop = threading.Event()
    answers: list[str] = []
    failures: list[str] = []

    def load() -> None:
        x = np.ones((2, 1, N, N), np.float32)
        with Client(server.url, timeout_s=30) as client:
            for _ in range(400):  # bounded, and stopped once the swaps are done
                if stop.is_set():
                    return
                try:
                    response = client._http.post("/v2/models/oracle/infer", json={
                        "inputs": [{"name": "diffraction", "shape": list(x.shape), "datatype": "FP32",
                                    "data": x.ravel().tolist()},
                                   {"name": "scale", "shape": [2], "datatype": "FP32", "data": [1.0, 1.0]}]})
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                    else:
                        answers.append(response.json()["model_version"])
                except httpx.HTTPError as error:
                    failures.append(repr(error))

    clients = [threading.Thread(target=load) for _ in range(4)]
    for thread in clients:
        thread.start()
    served = ["1"]
    with httpx.Client(base_url=server.url, timeout=60) as admin:
        for version in range(2, 7):
            time.sleep(0.3)
            shutil.rmtree(repository / "oracle" / str(version - 1))  # the new version replaces the old one
            write_oracle_bundle(repository / "oracle" / str(version), N=N, version=version)
            assert admin.post("/v2/repository/models/oracle/load").status_code == 200
            served.append(str(version))
            assert admin.get("/v2/models/oracle").json()["versions"] == [str(version)]
        time.sleep(0.3)
    stop.set()
    for thread in clients:
        thread.join(timeout=60)
    assert failures == []
    assert len(answers) >= 20 and set(answers) <= set(served) and answers[-1] == "6"
    assert len(set(answers)) >= 3  # requests really ran across the swaps


def test_serve_model_repository_starts_on_the_first_models_latest_version(repository: Path, tmp_path: Path) -> None:
    from ptycho_torch.errors import ConfigError
    from serving.cli import _first_in_repository

    write_oracle_bundle(repository / "oracle" / "10", N=N, version=10)  # versions are numbers: 10 > 2 > 1
    write_oracle_bundle(repository / "oracle" / "2", N=N, version=2)
    assert _first_in_repository(repository) == repository / "oracle" / "10"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no model"):
        _first_in_repository(tmp_path / "empty")


def test_a_session_opened_while_its_model_is_reloaded_keeps_the_version_it_resolved(repository: Path,
                                                                                    monkeypatch) -> None:
    """The session resolves v1's batcher; before it is registered, a reload swaps v1 out and reaps the
    retired versions. The reap must see the session (it waits for the registration), or it closes the
    batcher the session is about to pin. The interleaving is forced with events, not timing."""
    import serving.app
    from serving.repository import ModelRepository
    from serving.sessions import SessionManager

    managers: list[SessionManager] = []

    class Recorded(SessionManager):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            managers.append(self)

    resolved, go, reaping = threading.Event(), threading.Event(), threading.Event()
    session_runner, reap = serving.app._State.session_runner, ModelRepository.reap

    def paused(self, name, version):  # the session has its runner, not yet registered
        runner = session_runner(self, name, version)
        resolved.set()
        assert go.wait(10)
        return runner

    def reap_signalled(self) -> None:
        reaping.set()
        reap(self)

    monkeypatch.setattr(serving.app, "SessionManager", Recorded)
    monkeypatch.setattr(serving.app._State, "session_runner", paused)
    monkeypatch.setattr(ModelRepository, "reap", reap_signalled)
    app = _app(repository)
    repo = app.state.serving.repository
    before = repo.get("oracle")
    opened: list = []
    opener = threading.Thread(target=lambda: opened.append(managers[0].create("oracle")))
    reloader = threading.Thread(target=repo.load, args=("oracle",))
    try:
        opener.start()
        assert resolved.wait(10)
        reloader.start()
        assert reaping.wait(30)  # the swap is done: v1 is retired and being reaped
        reloader.join(1.0)  # with the race, the reap closes v1's batcher now; fixed, it waits for the session
    finally:
        go.set()
        opener.join(10)
        reloader.join(30)
    session = opened[0]
    assert repo.get("oracle") is not before and session.runner is before.batcher
    x = np.ones((2, 1, N, N), np.float32)
    amplitude, phase = session.runner.submit(x, np.ones(2, np.float32)).result(timeout=10)
    np.testing.assert_allclose(phase, PHASE_FACTOR * x, rtol=1e-5)
    repo.close()
