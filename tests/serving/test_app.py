"""The service over a real socket: a uvicorn server on 127.0.0.1, spoken to by httpx and tritonclient."""

from __future__ import annotations

import io
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from ptycho_torch.errors import InvalidValues
from ptycho_torch.pipeline import reconstruct
from ptycho_torch.plan import ReconstructOptions
from serving.app import create_app
from serving.client import Client
from serving.config import Limits
from serving.engine import Engine
from serving.errors import InvalidRequest, Overloaded, RequestTooLarge, Unauthorized
from serving.npz_wire import encode_reconstruct_request
from serving.protocol_v2 import HEADER_LENGTH

N = 32


def _scan(seed: int, count: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((count, N, N), np.float32), rng.uniform(0, 25, (count, 2))


def _batch(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((size, 1, N, N), np.float32), rng.random(size, np.float32) + 0.5


def _direct(engine: Engine, diffraction: np.ndarray, scale: np.ndarray) -> list[np.ndarray]:
    """onnxruntime run directly on the bundle's model.onnx, no project code in between."""
    session = ort.InferenceSession(str(engine.bundle.onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["amplitude", "phase"], {"diffraction": diffraction, "scale": scale})


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_reconstruct_over_http_equals_the_in_process_pipeline(engine: Engine, serve) -> None:
    server = serve(create_app(engine))
    patterns, positions = _scan(0)
    options = ReconstructOptions(scale_policy="bundle", stitch_M=10)
    local = reconstruct(engine, patterns, positions, options=options)
    with Client(server.url) as client:
        remote = client.reconstruct(patterns, positions, options=options, compress=True)
    np.testing.assert_array_equal(remote.amplitude, local.amplitude)
    np.testing.assert_array_equal(remote.phase, local.phase)
    np.testing.assert_array_equal(remote.coverage, local.coverage)
    assert remote.origin == local.origin and remote.scale == local.scale and remote.n_patterns == 30
    assert remote.timings["total"] > 0


def test_oip_json_and_binary_infer_equal_onnxruntime_directly(engine: Engine, serve) -> None:
    server = serve(create_app(engine))
    diffraction, scale = _batch(1, 5)
    expected_amplitude, expected_phase = _direct(engine, diffraction, scale)
    with Client(server.url) as client:
        amplitude, phase = client.infer("oracle", diffraction, scale)
    np.testing.assert_array_equal(amplitude, expected_amplitude)
    np.testing.assert_array_equal(phase, expected_phase)

    body = {"id": "json-1", "inputs": [
        {"name": "diffraction", "shape": list(diffraction.shape), "datatype": "FP32", "data": diffraction.ravel().tolist()},
        {"name": "scale", "shape": [5], "datatype": "FP32", "data": scale.tolist()}]}
    response = httpx.post(f"{server.url}/v2/models/oracle/versions/1/infer", json=body)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    outputs = {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in response.json()["outputs"]}
    assert response.json()["id"] == "json-1"
    np.testing.assert_array_equal(outputs["amplitude"], expected_amplitude)
    np.testing.assert_array_equal(outputs["phase"], expected_phase)


def test_tritonclient_reads_readiness_metadata_and_runs_binary_inference(engine: Engine, serve) -> None:
    import tritonclient.http as triton

    server = serve(create_app(engine))
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("oracle")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        metadata = client.get_model_metadata("oracle")
        assert metadata["inputs"][0] == {"name": "diffraction", "datatype": "FP32", "shape": [-1, 1, N, N]}
        assert metadata["parameters"]["providers"] == ["CPUExecutionProvider"]
        diffraction, scale = _batch(2, 4)
        inputs = [triton.InferInput("diffraction", list(diffraction.shape), "FP32"),
                  triton.InferInput("scale", [4], "FP32")]
        inputs[0].set_data_from_numpy(diffraction, binary_data=True)
        inputs[1].set_data_from_numpy(scale, binary_data=True)
        outputs = [triton.InferRequestedOutput(name, binary_data=True) for name in ("amplitude", "phase")]
        result = client.infer("oracle", inputs, outputs=outputs)
        expected_amplitude, expected_phase = _direct(engine, diffraction, scale)
        np.testing.assert_array_equal(result.as_numpy("amplitude"), expected_amplitude)
        np.testing.assert_array_equal(result.as_numpy("phase"), expected_phase)
        assert not client.is_model_ready("other")
    finally:
        client.close()


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_results(engine: Engine, serve) -> None:
    server = serve(create_app(engine, max_queue_delay_us=200_000))
    requests = [_batch(seed, 3) for seed in range(8)]
    with Client(server.url) as client, ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(lambda r: client.infer("oracle", *r), requests))
    for (diffraction, scale), (amplitude, phase) in zip(requests, results, strict=True):
        expected_amplitude, expected_phase = _direct(engine, diffraction, scale)
        np.testing.assert_array_equal(amplitude, expected_amplitude)
        np.testing.assert_array_equal(phase, expected_phase)
    metrics = httpx.get(f"{server.url}/metrics").text
    inferences = _metric(metrics, "ptychopinn_inference_count_total")
    executions = _metric(metrics, "ptychopinn_execution_count_total")
    assert inferences == 24
    assert inferences / executions > 3  # batches larger than any single request (3 items)
    assert _metric(metrics, 'ptychopinn_batch_size_bucket{le="4.0",model="oracle"}') < executions
    assert _metric(metrics, "ptychopinn_queue_duration_seconds_count") == 8
    assert 'ptychopinn_requests_total{route="/v2/models/{name}/infer",status="200"} 8.0' in metrics


def _npz(**arrays: object) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


GOOD_PATTERNS, GOOD_POSITIONS = _scan(3, 6)
BINARY_HEADER = json.dumps({"inputs": [
    {"name": "diffraction", "shape": [1, 1, N, N], "datatype": "FP32", "parameters": {"binary_data_size": 4 * N * N}},
    {"name": "scale", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}).encode()
BAD_REQUESTS = [
    # (method, path, body, headers, status, message)
    ("POST", "/v2/models/oracle/infer", b"{oops", {}, 400, "the JSON header does not parse"),
    ("POST", "/v2/models/oracle/infer", json.dumps({"inputs": [
        {"name": "diffraction", "shape": [1, 1, N, N], "datatype": "FP64", "data": [0.0] * N * N},
        {"name": "scale", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode(), {}, 400,
     "input `diffraction` must have datatype FP32, got FP64"),
    ("POST", "/v2/models/oracle/infer", json.dumps({"inputs": [
        {"name": "diffraction", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": [0.0] * 16},
        {"name": "scale", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode(), {}, 400,
     r"input `diffraction` must have shape \[-1, 1, 32, 32\]"),
    ("POST", "/v2/models/oracle/infer", json.dumps({"inputs": [
        {"name": "diffraction", "shape": [1, 1, N, N], "datatype": "FP32", "data": [float("nan")] * N * N},
        {"name": "scale", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode(), {}, 422,
     "input `diffraction` must be finite"),
    ("POST", "/v2/models/oracle/infer", BINARY_HEADER + b"\0" * 100, {HEADER_LENGTH: str(len(BINARY_HEADER))}, 400,
     "needs 4096 bytes of binary data"),
    ("POST", "/v2/models/nosuch/infer", b"{}", {}, 404, r"model `nosuch` is not served here; served models: \['oracle'\]"),
    ("GET", "/v2/models/oracle/versions/9", b"", {}, 404, "model `oracle` has no version `9`"),
    ("GET", "/v2/nosuch", b"", {}, 404, "Not Found: GET /v2/nosuch; endpoints are"),
    ("POST", "/v1/reconstruct", b"not an npz", {}, 400, "the request body must be an NPZ archive"),
    ("POST", "/v1/reconstruct", _npz(patterns=GOOD_PATTERNS), {}, 400, r"missing \['positions'\]"),
    ("POST", "/v1/reconstruct", _npz(patterns=GOOD_PATTERNS, positions=GOOD_POSITIONS,
                                     extra=np.array([1], dtype=object)), {}, 400, "no pickled objects"),
    ("POST", "/v1/reconstruct", _npz(patterns=GOOD_PATTERNS[:, :8, :8], positions=GOOD_POSITIONS), {}, 400,
     r"`patterns` must have shape \(S, 32, 32\)"),
    ("POST", "/v1/reconstruct", _npz(patterns=GOOD_PATTERNS, positions=GOOD_POSITIONS[:2]), {}, 400,
     r"`positions` must be real numbers of shape \(6, 2\)"),
    ("POST", "/v1/reconstruct", _npz(patterns=np.where(GOOD_PATTERNS > 0.99, np.nan, GOOD_PATTERNS),
                                     positions=GOOD_POSITIONS), {}, 422, "`patterns` must be finite"),
    ("POST", "/v1/reconstruct", encode_reconstruct_request(GOOD_PATTERNS, GOOD_POSITIONS, options={"speed": 11}), {},
     400, r"unknown options \['speed'\]"),
    ("POST", "/v1/reconstruct", _npz(patterns=GOOD_PATTERNS, positions=GOOD_POSITIONS, options=np.array("{")), {},
     400, "`options` must be a JSON object"),
    ("POST", "/v1/reconstruct", encode_reconstruct_request(GOOD_PATTERNS, GOOD_POSITIONS, probe=np.ones((4, 4))), {},
     400, r"`probe` must be complex \(N, N\)"),
    ("POST", "/v1/reconstruct", b"\0" * (2 << 20), {}, 413, "request body is over the limit of 1048576 bytes"),
]


def test_every_bad_input_gets_its_status_and_message_and_the_server_keeps_serving(engine: Engine, serve) -> None:
    server = serve(create_app(engine, limits=Limits(max_body_bytes=1 << 20)))
    with httpx.Client(base_url=server.url) as http, Client(server.url) as client:
        for method, path, body, headers, status, message in BAD_REQUESTS:
            response = http.request(method, path, content=body, headers=headers)
            assert response.status_code == status, (path, message, response.text)
            assert re.search(message, response.json()["error"]), (message, response.json())
            assert client.ready()
        amplitude, _ = client.infer("oracle", *_batch(4, 2))
        assert amplitude.shape == (2, 1, N, N)
        with pytest.raises(InvalidValues, match="HTTP 422 .* `patterns` must be non-negative"):
            client.reconstruct(-GOOD_PATTERNS, GOOD_POSITIONS)
        with pytest.raises(InvalidRequest, match="HTTP 400"):
            client.reconstruct(GOOD_PATTERNS[:, :4], GOOD_POSITIONS)
        with pytest.raises(RequestTooLarge, match="HTTP 413"):
            client.reconstruct(np.ones((400, N, N), np.float32), np.zeros((400, 2)))
    statuses = re.findall(r'ptychopinn_requests_total{route="[^"]*",status="(\d+)"}',
                          httpx.get(f"{server.url}/metrics").text)
    assert statuses and all(int(s) < 500 for s in statuses)


def test_a_full_queue_answers_503_with_retry_after(engine: Engine, serve) -> None:
    server = serve(create_app(engine, max_queue_delay_us=6_000_000, max_queue_size=1))
    with Client(server.url) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.infer, "oracle", *_batch(5, 1))  # waits 6 s in the queue for company (room for a loaded machine)
        while not re.search(r"ptychopinn_queue_length{model=\"oracle\"} 1.0",
                            httpx.get(f"{server.url}/metrics").text):
            time.sleep(0.01)
        response = httpx.post(f"{server.url}/v1/reconstruct", content=encode_reconstruct_request(*_scan(5, 4)))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "the inference queue is full" in response.json()["error"]
        with pytest.raises(Overloaded) as caught:
            client.infer("oracle", *_batch(6, 1))
        assert caught.value.retry_after_s == 1
        assert first.result(timeout=10)[0].shape == (1, 1, N, N)


def test_the_token_is_enforced_except_on_health_probes(engine: Engine, serve) -> None:
    server = serve(create_app(engine, token="s3cret"))
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    for path in ("/v2", "/v2/models/oracle", "/metrics"):
        response = httpx.get(f"{server.url}{path}")
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert "a bearer token is required" in response.json()["error"]
    wrong = httpx.get(f"{server.url}/v2", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]
    with Client(server.url, token="wrong") as client, pytest.raises(Unauthorized):
        client.reconstruct(*_scan(7, 4))
    with Client(server.url, token="s3cret") as client:
        assert client.reconstruct(*_scan(7, 4)).n_patterns == 4
        assert client.model_metadata("oracle")["name"] == "oracle"


def test_reconstruct_file_sends_a_real_scan_and_matches_in_process(engine: Engine, serve, data_dir) -> None:
    from ptycho_torch.data import load_scan
    from serving.client import reconstruct_file

    path = data_dir / "siemens-star-small.npz.bz2"
    server = serve(create_app(engine))
    remote = reconstruct_file(server.url, path, n=N)
    scan = load_scan(path, n=N)
    local = reconstruct(engine, scan.diff3d, scan.positions, probe=scan.probeGuess)
    assert remote.n_patterns == len(scan) == 516
    np.testing.assert_array_equal(remote.amplitude, local.amplitude)
    np.testing.assert_array_equal(remote.phase, local.phase)
    assert remote.probe_difference == local.probe_difference is not None
