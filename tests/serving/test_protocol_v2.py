"""OIP v2 decoding/encoding, both halves: JSON and binary tensors round-trip exactly through the client's
encode_request/decode_response and the server's decode_request/encode_response; bad bodies name the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ptycho_torch.bundle import TensorSpec, tensor_specs
from ptycho_torch.errors import InvalidInput, InvalidValues
from serving.errors import InvalidRequest, ServerError
from serving.protocol_v2 import (
    HEADER_LENGTH,
    TensorMetadata,
    check_inputs,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

EXPECTED = (TensorMetadata("diffraction", "FP32", (-1, 1, 2, 2)), TensorMetadata("scale", "FP32", (-1,)))


def _binary_body(tensors: dict[str, np.ndarray], **extra: object) -> tuple[bytes, str]:
    header = json.dumps({"inputs": [{"name": n, "shape": list(a.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": a.nbytes}} for n, a in tensors.items()],
                         **extra}).encode()
    return header + b"".join(a.tobytes() for a in tensors.values()), str(len(header))


def test_json_tensors_flat_or_nested_decode_to_the_declared_shape() -> None:
    flat = {"inputs": [{"name": "diffraction", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
                       {"name": "scale", "shape": [1], "datatype": "FP32", "data": [[0.5]]}]}
    request = decode_request(json.dumps(flat).encode())
    np.testing.assert_array_equal(request.inputs["diffraction"], np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2))
    assert request.inputs["scale"].dtype == np.float32 and request.inputs["scale"].shape == (1,)
    check_inputs(request.inputs, EXPECTED)
    assert request.outputs is None and request.binary_default is False


def test_binary_tensors_round_trip_bit_exactly() -> None:
    diffraction = np.random.default_rng(0).random((3, 1, 2, 2), np.float32)
    scale = np.array([1.5, np.float32(1 / 3), 2.0], np.float32)
    body, length = _binary_body({"diffraction": diffraction, "scale": scale}, id="r1",
                                outputs=[{"name": "phase", "parameters": {"binary_data": True}},
                                         {"name": "amplitude"}])
    request = decode_request(body, length)
    np.testing.assert_array_equal(request.inputs["diffraction"], diffraction)
    np.testing.assert_array_equal(request.inputs["scale"], scale)
    assert request.outputs == {"phase": True, "amplitude": False}

    content, headers = encode_response("m", "1", request, {"amplitude": diffraction, "phase": diffraction * 2})
    header_length = int(headers[HEADER_LENGTH])
    header = json.loads(content[:header_length])
    assert header["id"] == "r1" and header["model_name"] == "m" and header["model_version"] == "1"
    phase, amplitude = header["outputs"]
    assert phase["parameters"]["binary_data_size"] == diffraction.nbytes
    np.testing.assert_array_equal(np.frombuffer(content[header_length:], "<f4").reshape(phase["shape"]),
                                  diffraction * 2)
    np.testing.assert_array_equal(np.asarray(amplitude["data"], np.float32).reshape(amplitude["shape"]), diffraction)


def test_json_only_response_when_no_binary_is_asked() -> None:
    request = decode_request(json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32",
                                                     "data": [7]}]}).encode())
    content, headers = encode_response("m", "1", request, {"y": np.array([1.25], np.float32)})
    assert headers == {"Content-Type": "application/json"}
    assert json.loads(content)["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1.25]}]


def _binary_header(shape: list[int], size: int, payload: bytes) -> tuple[bytes, str]:
    header = json.dumps({"inputs": [{"name": "s", "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]}).encode()
    return header + payload, str(len(header))


GOOD = {"name": "scale", "shape": [2], "datatype": "FP32", "data": [1, 2]}


@pytest.mark.parametrize(("body", "length", "message"), [
    (b"{not json", None, "the JSON header does not parse"),
    (b"[1, 2]", None, "the body must be a JSON object, got list"),
    (json.dumps({"inputs": []}).encode(), None, "`inputs` must be a non-empty list"),
    (json.dumps({"inputs": [{**GOOD, "datatype": "FP8"}]}).encode(), None, "`inputs\\[scale\\].datatype` must be one of"),
    (json.dumps({"inputs": [{**GOOD, "shape": [2, -1]}]}).encode(), None, "shape` must be a list of non-negative"),
    (json.dumps({"inputs": [{**GOOD, "data": [1, 2, 3]}]}).encode(), None, "must hold 2 values for shape \\[2\\], got 3"),
    (json.dumps({"inputs": [{**GOOD, "data": ["a", "b"]}]}).encode(), None, "must hold only FP32 numbers"),
    (json.dumps({"inputs": [{**GOOD, "data": [[1], [2, 3]]}]}).encode(), None, "non-ragged"),
    (json.dumps({"inputs": [GOOD, GOOD]}).encode(), None, "input `scale` is given twice"),
    (json.dumps({"inputs": [GOOD], "id": 5}).encode(), None, "`id` must be a string"),
    (json.dumps({"inputs": [GOOD], "outputs": "all"}).encode(), None, "`outputs` must be a list"),
    (*_binary_header([2], 8, b"\x00\x00\x80?"), "needs 8 bytes of binary data after the JSON header but only 4 remain"),
    (*_binary_header([2], 4, b""), "binary_data_size` must be 8 bytes for FP32 \\[2\\], got 4"),
    (*_binary_header([1], 4, b"\x00\x00\x80?\x00"), "1 bytes of binary data follow the tensors"),
    (b"{}", "99", "header `Inference-Header-Content-Length` must be between 0 and the body length 2, got 99"),
    (b"{}", "ten", "must be an integer, got 'ten'"),
])
def test_bad_bodies_are_refused_with_a_message_naming_the_field(body: bytes, length: str | None, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_request(body, length)


def test_inputs_are_checked_against_the_model() -> None:
    good = {"diffraction": np.zeros((2, 1, 2, 2), np.float32), "scale": np.ones(2, np.float32)}
    check_inputs(good, EXPECTED)
    with pytest.raises(InvalidRequest, match=r"inputs must be exactly \['diffraction', 'scale'\], got \['scale'\]"):
        check_inputs({"scale": good["scale"]}, EXPECTED)
    with pytest.raises(InvalidRequest, match="input `scale` must have datatype FP32, got FP64"):
        check_inputs({**good, "scale": np.ones(2)}, EXPECTED)
    with pytest.raises(InvalidRequest, match=r"input `diffraction` must have shape \[-1, 1, 2, 2\] .*got \[2, 1, 3, 3\]"):
        check_inputs({**good, "diffraction": np.zeros((2, 1, 3, 3), np.float32)}, EXPECTED)
    with pytest.raises(InvalidValues, match="input `scale` must be finite"):
        check_inputs({**good, "scale": np.array([1, np.nan], np.float32)}, EXPECTED)


def test_unknown_requested_outputs_are_refused() -> None:
    request = decode_request(json.dumps({"inputs": [GOOD], "outputs": [{"name": "nope"}]}).encode())
    with pytest.raises(InvalidRequest, match=r"requested outputs \['nope'\] do not exist"):
        encode_response("m", "1", request, {"y": np.zeros(1, np.float32)})


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_client_and_server_halves_round_trip_every_tensor_exactly(binary: bool) -> None:
    rng = np.random.default_rng(3)
    inputs = {"diffraction": rng.random((2, 1, 3, 3), np.float32), "scale": np.array([0.5, 3.0], ">f4"),
              "counts": rng.integers(-5, 5, (2, 4)).astype(np.int32), "half": rng.random(3).astype(np.float16)}
    body, headers = encode_request(inputs, ["amplitude", "phase"], binary=binary, request_id="r7")
    assert (HEADER_LENGTH in headers) is binary
    request = decode_request(body, headers.get(HEADER_LENGTH))
    assert request.id == "r7" and request.outputs == {"amplitude": binary, "phase": binary}
    for name, array in inputs.items():
        assert request.inputs[name].dtype == array.dtype.newbyteorder("=")
        np.testing.assert_array_equal(request.inputs[name], array)
    outputs = {"amplitude": inputs["diffraction"] * 3, "phase": -inputs["diffraction"]}
    content, headers = encode_response("m", "1", request, outputs)
    decoded = decode_response(content, headers.get(HEADER_LENGTH))
    assert list(decoded) == ["amplitude", "phase"]
    for name, array in outputs.items():
        assert decoded[name].dtype == np.float32 and decoded[name].shape == array.shape
        np.testing.assert_array_equal(decoded[name], array)


def test_a_request_without_output_names_asks_for_every_output_in_its_encoding() -> None:
    body, headers = encode_request({"x": np.ones(2, np.float32)})
    request = decode_request(body, headers[HEADER_LENGTH])
    assert request.outputs is None and request.binary_default is True
    with pytest.raises(InvalidInput, match=r"tensor `z` has dtype complex64, which the OIP cannot carry"):
        encode_request({"z": np.ones(2, np.complex64)})


@pytest.mark.parametrize(("body", "length", "message"), [
    (b"<html>busy</html>", None, "the JSON header does not parse"),
    (b'{"error": "x"}', None, "must be a JSON object with an `outputs` list"),
    (json.dumps({"outputs": [{"name": "y", "shape": [2], "datatype": "FP32", "data": [1]}]}).encode(), None,
     r"`outputs\[y\].data` must hold 2 values"),
    (json.dumps({"outputs": [{"name": "y", "shape": [1], "datatype": "FP32",
                              "parameters": {"binary_data_size": 4}}]}).encode(), None, "needs 4 bytes of binary data"),
    (b"{}", "9", "must be between 0 and the body length 2, got 9"),
])
def test_a_response_the_client_cannot_read_is_a_server_error(body: bytes, length: str | None, message: str) -> None:
    with pytest.raises(ServerError, match=f"invalid inference response from the server: .*{message}"):
        decode_response(body, length)


def test_oip_metadata_of_a_manifest_tensor() -> None:
    diffraction, scale = tensor_specs(4, 1)[0]
    assert TensorMetadata.of(diffraction) == TensorMetadata("diffraction", "FP32", (-1, 1, 4, 4))
    assert TensorMetadata.of(scale) == TensorMetadata("scale", "FP32", (-1,))
    with pytest.raises(InvalidInput, match="`p` has dtype complex64, which the OIP cannot carry"):
        TensorMetadata.of(TensorSpec(name="p", shape=("B",), dtype="complex64"))
