"""One model contract in serving: a served version's OIP metadata, its Triton configuration and the
client's view of it all come from the bundle's manifest and facts, and say the same thing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from oracle import write_oracle_bundle
from tritonclient.grpc import model_config_pb2

from export.triton import triton_config
from ptycho_torch.bundle import load_bundle
from ptycho_torch.bundle.triton import tensor_entry
from serving.app import create_app
from serving.client import Client
from serving.engine import Engine
from serving.repository import ModelVersion


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bad = np.zeros((16, 16), bool)
    bad[3, 5] = bad[10, 2] = True
    return write_oracle_bundle(tmp_path_factory.mktemp("contract") / "b", N=16, gridsize=2, pixel_size_m=2e-8,
                               bad_pixels=bad)


@pytest.fixture(scope="module")
def served(bundle_dir: Path) -> Iterator[ModelVersion]:
    app = create_app(Engine(load_bundle(bundle_dir), max_batch_size=4, providers=["cpu"]), max_queue_delay_us=0)
    repository = app.state.serving.repository
    yield repository.default()
    repository.close()


def test_metadata_tensors_and_parameters_are_the_manifests_and_the_facts(served: ModelVersion) -> None:
    metadata = served.metadata(["1"])
    assert metadata["inputs"] == [{"name": "diffraction", "datatype": "FP32", "shape": [-1, 4, 16, 16]},
                                  {"name": "scale", "datatype": "FP32", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": n, "datatype": "FP32", "shape": [-1, 4, 16, 16]} for n in ("amplitude", "phase")]
    facts = served.bundle.facts
    assert metadata["parameters"] == {"providers": ["CPUExecutionProvider"], "max_batch_size": 4,
                                      **facts.to_parameters()}
    assert metadata["parameters"]["bad_pixels"] == [[3, 5], [10, 2]]
    assert metadata["parameters"]["default_scale_policy"] == "scan"


def test_the_served_triton_config_has_the_exported_pbtxt_tensor_entries(served: ModelVersion) -> None:
    manifest = served.bundle.manifest
    config = served.config(["1"])
    assert config["input"] == [tensor_entry(s) for s in manifest.inputs]
    assert config["output"] == [tensor_entry(s) for s in manifest.outputs]
    shipped = text_format.Parse(triton_config(manifest.name, 1, manifest.inputs, manifest.outputs),
                                model_config_pb2.ModelConfig())
    for entries, tensors in ((config["input"], shipped.input), (config["output"], shipped.output)):
        assert [(e["name"], model_config_pb2.DataType.Value(e["data_type"]), e["dims"], "reshape" in e)
                for e in entries] == [(t.name, t.data_type, list(t.dims), t.HasField("reshape")) for t in tensors]
    assert config["parameters"]["stitch_M"] == {"string_value": str(manifest.stitch_M)}


def test_the_client_reads_back_the_facts_and_runs_the_contract(served: ModelVersion, bundle_dir: Path, serve) -> None:
    app = create_app(Engine(load_bundle(bundle_dir), max_batch_size=4, providers=["cpu"]), max_queue_delay_us=0)
    server = serve(app)
    with Client(server.url) as client:
        facts = client.model_facts("oracle")
        diffraction = np.random.default_rng(0).random((5, 4, 16, 16), np.float32)
        amplitude, phase = client.infer("oracle", diffraction, np.full(5, 2.0, np.float32))
    assert facts == served.bundle.facts  # name, version, geometry, scale, K, pixel size (probe and mask not compared)
    np.testing.assert_array_equal(facts.bad_pixels, served.bundle.bad_pixels)
    expected = served.engine.run(diffraction, np.full(5, 2.0, np.float32))
    np.testing.assert_array_equal(amplitude, expected[0])
    np.testing.assert_array_equal(phase, expected[1])
