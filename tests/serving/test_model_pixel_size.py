"""A model's training pixel size travels from the manifest to the OIP metadata and every reconstruct
path, and a scan at another pixel size is refused before inference (400 over HTTP)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from oracle import write_oracle_bundle

from ptycho_torch.bundle import load_bundle, summarize
from ptycho_torch.errors import InvalidInput
from ptycho_torch.pipeline import reconstruct
from ptycho_torch.plan import ReconstructOptions
from serving.app import create_app
from serving.client import Client, RemoteRunner
from serving.engine import Engine
from serving.npz_wire import encode_reconstruct_request

N = 32
PIXEL = 1.0e-8


@pytest.fixture(scope="module")
def engine_10nm(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    bundle = load_bundle(write_oracle_bundle(tmp_path_factory.mktemp("px") / "bundle", N=N, pixel_size_m=PIXEL))
    return Engine(bundle, max_batch_size=8, providers=["cpu"], intra_op_threads=1)


def _scan() -> tuple[np.ndarray, np.ndarray]:
    positions = np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2) * 4.0 + 20
    return np.full((len(positions), N, N), 0.8, np.float32), positions


def test_the_manifest_pixel_size_reaches_the_result_and_a_mismatch_is_refused(engine_10nm: Engine) -> None:
    patterns, positions = _scan()
    assert engine_10nm.bundle.pixel_size_m == PIXEL
    assert "pixel      1e-08 m" in summarize(engine_10nm.bundle)
    assert reconstruct(engine_10nm, patterns, positions).pixel_size_m == PIXEL  # the scan does not say: the model's
    same = reconstruct(engine_10nm, patterns, positions, options=ReconstructOptions(pixel_size_m=1.004e-8))
    assert same.pixel_size_m == 1.004e-8  # within 1 %: the scan's own value
    with pytest.raises(InvalidInput, match=r"scan's object pixel size 2e-08 m differs from model oracle's training pixel "
                                           r"size 1e-08 m \(ratio 2.000\)"):
        reconstruct(engine_10nm, patterns, positions, options=ReconstructOptions(pixel_size_m=2e-8))
    with pytest.raises(InvalidInput, match="`pixel_size_m` must be the object pixel size in metres"):
        ReconstructOptions(pixel_size_m=-1.0)


def test_over_http_the_metadata_publishes_it_and_a_mismatch_is_a_400(engine_10nm: Engine, serve) -> None:
    server = serve(create_app(engine_10nm))
    patterns, positions = _scan()
    with Client(server.url) as client:
        model = client.model_facts("oracle")
        assert model.pixel_size_m == PIXEL
        remote = reconstruct(RemoteRunner(model, client), patterns, positions)
        assert remote.pixel_size_m == PIXEL
        assert client.reconstruct(patterns, positions).pixel_size_m == PIXEL
    body = encode_reconstruct_request(patterns, positions, options={"pixel_size_m": 3e-8})
    response = httpx.post(f"{server.url}/v1/reconstruct", content=body)
    assert response.status_code == 400
    assert "differs from model oracle's training pixel size 1e-08 m" in response.json()["error"]


def test_a_bundle_without_a_pixel_size_checks_nothing(engine, tmp_path: Path) -> None:
    patterns, positions = _scan()
    assert engine.bundle.pixel_size_m is None
    result = reconstruct(engine, patterns, positions, options=ReconstructOptions(pixel_size_m=5e-8))
    assert result.pixel_size_m == 5e-8
    assert reconstruct(engine, patterns, positions).pixel_size_m is None
