"""The one error-to-status table: looked up along the class hierarchy by the app, inverted by the
client; a closed batcher is 503, a queue deadline 504, unknown outputs are refused before inference."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from ptycho_torch.errors import ConfigError, DataContractError, InvalidInput, InvalidValues, PtychoError
from serving.app import create_app
from serving.batching import DynamicBatcher
from serving.client import Client
from serving.engine import Engine
from serving.errors import (
    STATUS,
    DeadlineExceeded,
    InvalidRequest,
    Overloaded,
    ServerError,
    ServingError,
    Unauthorized,
    Unavailable,
    error_for_status,
    status_of,
)


class _NegativeCounts(InvalidValues):
    """A subclass nobody listed: found through its parent."""


@pytest.mark.parametrize(("error", "status"), [
    (InvalidInput("shape"), 400), (InvalidRequest("decode"), 400), (DataContractError("implausible scan"), 422),
    (ConfigError("bad option"), 400), (InvalidValues("NaN"), 422), (_NegativeCounts("-1"), 422),
    (Overloaded("full"), 503), (Unavailable("closed"), 503), (DeadlineExceeded("late"), 504),
    (Unauthorized("token"), 401), (PtychoError("other refusal"), 400), (RuntimeError("bug"), 500),
])
def test_status_is_looked_up_along_the_class_hierarchy(error: Exception, status: int) -> None:
    assert status_of(error) == status


def test_the_client_inverse_comes_from_the_same_table() -> None:
    for status in sorted(set(STATUS.values())):
        cls = error_for_status(status)
        assert status_of(cls("x")) == status, cls
    assert error_for_status(400) is InvalidRequest and issubclass(error_for_status(400), InvalidInput)
    assert error_for_status(422) is InvalidValues and error_for_status(503) is Overloaded
    assert error_for_status(500) is ServerError and error_for_status(502) is ServerError
    assert error_for_status(418) is ServingError


def test_a_server_error_reaches_the_client_as_a_500_not_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(500, json={"error": "internal server error"}))
    client = Client("http://127.0.0.1:9")
    monkeypatch.setattr(client, "_http", httpx.Client(base_url="http://127.0.0.1:9", transport=transport))
    with pytest.raises(ServerError, match="HTTP 500 .* internal server error") as caught:
        client.model_metadata("oracle")
    assert caught.value.status_code == 500 and not isinstance(caught.value, InvalidInput)


def test_a_closed_batcher_is_unavailable(engine: Engine) -> None:
    batcher = DynamicBatcher(engine)
    batcher.close()
    with pytest.raises(Unavailable, match="the inference queue is closed") as caught:
        batcher.submit(np.ones((1, 1, 32, 32), np.float32), np.ones(1, np.float32))
    assert caught.value.status_code == 503


class _SlowEngine:
    """The oracle engine, 0.3 s per batch: the second request waits behind the first."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.bundle, self.max_batch_size, self.input_shape = engine.bundle, engine.max_batch_size, engine.input_shape
        self.check_inputs = engine.check_inputs

    def run(self, diffraction: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(0.3)
        return self._engine.run(diffraction, scale)


def test_a_request_past_the_queue_deadline_is_refused_504_without_running(engine: Engine) -> None:
    batcher = DynamicBatcher(_SlowEngine(engine), max_queue_delay_us=0, max_queue_wait_s=0.1)  # type: ignore[arg-type]
    try:
        x, s = np.ones((2, 1, 32, 32), np.float32), np.ones(2, np.float32)
        first = batcher.submit(x, s)
        time.sleep(0.05)  # the first is running (0.3 s)
        second = batcher.submit(x, s)
        assert first.result(timeout=10)[0].shape == x.shape
        with pytest.raises(DeadlineExceeded, match=r"waited 0\.\d+ s in the inference queue, over the server's "
                                                    r"deadline of 0\.1 s") as caught:
            second.result(timeout=10)
        assert caught.value.status_code == 504
    finally:
        batcher.close()
    with pytest.raises(ConfigError, match="`max_queue_wait_s` must be a positive number"):
        DynamicBatcher(engine, max_queue_wait_s=0)


def test_unknown_outputs_are_refused_before_inference(engine: Engine, serve) -> None:
    runs = []
    run = engine.run
    engine.run = lambda d, s: runs.append(len(d)) or run(d, s)  # type: ignore[method-assign]
    server = serve(create_app(engine))
    body = {"inputs": [{"name": "diffraction", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [1.0] * 1024},
                       {"name": "scale", "shape": [1], "datatype": "FP32", "data": [1.0]}],
            "outputs": [{"name": "amplitude"}, {"name": "nope"}]}
    response = httpx.post(f"{server.url}/v2/models/oracle/infer", json=body)
    assert response.status_code == 400
    assert "requested outputs ['nope'] do not exist" in response.json()["error"]
    assert runs == []  # no inference ran for it
    body["outputs"] = [{"name": "phase"}]
    assert httpx.post(f"{server.url}/v2/models/oracle/infer", json=body).status_code == 200 and runs == [1]


def test_core_shape_errors_of_a_grouped_model_are_400(oracle_bundle_g2) -> None:
    from ptycho_torch.pipeline import reconstruct
    from ptycho_torch.plan import ReconstructOptions

    engine = Engine(oracle_bundle_g2, providers=["cpu"], warmup=False)
    patterns, positions = np.ones((12, 32, 32), np.float32), np.random.default_rng(0).uniform(20, 60, (12, 2))
    with pytest.raises(InvalidInput, match=r"`neighbor_count` must be >= gridsize\*\*2 = 4 for this model, got 3") as a:
        reconstruct(engine, patterns, positions, options=ReconstructOptions(neighbor_count=3))
    with pytest.raises(InvalidInput, match=r"`patterns` must hold more than gridsize\*\*2 = 4 patterns") as b:
        reconstruct(engine, patterns[:4], positions[:4])
    assert status_of(a.value) == status_of(b.value) == 400
