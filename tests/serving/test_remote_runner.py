"""A scan larger than the server's request limit: one /v1/reconstruct request gets 413, the remote
runner sends it as bounded OIP requests and gets the in-process object exactly."""

from __future__ import annotations

import numpy as np
import pytest

from ptycho_torch.model_facts import ModelFacts
from ptycho_torch.pipeline import reconstruct
from serving.app import create_app
from serving.client import Client, RemoteRunner
from serving.config import Limits
from serving.engine import Engine
from serving.errors import RequestTooLarge

N = 32


def test_a_scan_over_the_request_limit_goes_out_in_chunks_and_equals_in_process(engine: Engine, serve) -> None:
    rng = np.random.default_rng(1)
    positions = np.stack(np.meshgrid(np.arange(20), np.arange(20)), -1).reshape(-1, 2) * 3.0 + 20
    patterns = rng.uniform(0, 2, (len(positions), N, N)).astype(np.float32)  # 400 x 4 KiB = 1.6 MiB
    server = serve(create_app(engine, limits=Limits(max_body_bytes=1 << 20)))
    with Client(server.url) as client:
        with pytest.raises(RequestTooLarge, match="413"):
            client.reconstruct(patterns, positions)
        model = client.model_facts("oracle")
        calls = []
        infer = client.infer
        client.infer = lambda *args: calls.append(len(args[1])) or infer(*args)  # type: ignore[method-assign]
        remote = reconstruct(RemoteRunner(model, client, batch_size=96, progress=True), patterns, positions)
    assert calls == [96, 96, 96, 96, 16]  # 400 groups, no request over 96 x 4 KiB
    local = reconstruct(engine, patterns, positions)
    np.testing.assert_array_equal(remote.amplitude, local.amplitude)
    np.testing.assert_array_equal(remote.phase, local.phase)
    np.testing.assert_array_equal(remote.coverage, local.coverage)


def test_the_served_model_publishes_its_neighbor_count(oracle_bundle_g2, serve) -> None:
    """K travels in the model metadata, so a remote reconstruction groups as the server's bundle says;
    metadata from a server that does not publish it means max(4, C)."""
    engine = Engine(oracle_bundle_g2, providers=["cpu"], warmup=False)
    with Client(serve(create_app(engine)).url) as client:
        metadata = client.model_metadata("oracle2")
    assert metadata["parameters"]["neighbor_count"] == oracle_bundle_g2.neighbor_count == 4
    metadata["parameters"]["neighbor_count"] = 7
    assert ModelFacts.from_parameters("oracle2", metadata["parameters"]).neighbor_count == 7
    del metadata["parameters"]["neighbor_count"]
    assert ModelFacts.from_parameters("oracle2", metadata["parameters"]).neighbor_count == 4


@pytest.mark.parametrize("batch_size", [0, -3, True])
def test_a_runner_refuses_a_batch_size_that_is_no_positive_integer(batch_size: object) -> None:
    """-3 ran no request and returned uninitialised memory as the object (the CLI checked its flag only)."""
    from ptycho_torch.errors import ConfigError

    model = ModelFacts(name="m", N=N, gridsize=1, stitch_M=8, training_scale=1.0, neighbor_count=4)
    with Client("http://127.0.0.1:9") as client, pytest.raises(ConfigError, match="`batch_size` must be a positive"):
        RemoteRunner(model, client, batch_size=batch_size)  # type: ignore[arg-type]
