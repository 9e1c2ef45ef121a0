"""Open Inference Protocol (KServe v2) REST tensors, with Triton's binary tensor extension.

Pure functions over bytes and numpy arrays, no web framework: :func:`decode_request` turns an infer
request body into arrays (strictly; every problem is an :class:`~serving.errors.InvalidRequest`
naming the tensor and the field), :func:`encode_response` turns outputs into a body plus headers.

Binary extension: the body is the JSON header followed by raw little-endian row-major tensors, in
the order the tensors are listed; the ``Inference-Header-Content-Length`` header gives the JSON
length; an input carries ``parameters.binary_data_size``; an output asks for binary with
``parameters.binary_data`` or the request with ``parameters.binary_data_output``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptycho_torch.errors import InvalidValues
from serving.errors import InvalidRequest, RequestTooLarge
from serving.limits import loads_json

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "TensorMetadata",
    "check_inputs",
    "check_outputs",
    "decode_request",
    "encode_response",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(dtype).newbyteorder("<")
    for name, dtype in {
        "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
        "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
        "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    }.items()
}
_NAMES = {dtype.newbyteorder("="): name for name, dtype in DATATYPES.items()}


@dataclass(frozen=True)
class TensorMetadata:
    """A model input or output as OIP describes it; ``-1`` marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class InferRequest:
    """A decoded infer request."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: dict[str, bool] | None
    """Requested output name -> binary wanted; None = every output, ``binary_default`` decides."""
    binary_default: bool


def _fail(message: str) -> InvalidRequest:
    return InvalidRequest(f"invalid inference request: {message}")


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise _fail(f"header `{HEADER_LENGTH}` must be an integer, got {header_length!r}") from None
    if not 0 <= length <= len(body):
        raise _fail(f"header `{HEADER_LENGTH}` must be between 0 and the body length {len(body)}, got {length}")
    return body[:length], memoryview(body)[length:]


def _parse_shape(where: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise _fail(f"`{where}.shape` must be a list of non-negative integers, got {shape!r}")
    return tuple(shape)


def _decode_input(index: int, spec: Any, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(spec, dict):
        raise _fail(f"`inputs[{index}]` must be an object with name, shape, datatype and data, got {spec!r:.80}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(f"`inputs[{index}].name` must be a non-empty string, got {name!r:.80}")
    where = f"inputs[{name}]"
    shape = _parse_shape(where, spec.get("shape"))
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        raise _fail(f"`{where}.datatype` must be one of {sorted(DATATYPES)}, got {datatype!r:.80}")
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _fail(f"`{where}.parameters` must be an object, got {parameters!r:.80}")
    size = parameters.get("binary_data_size")
    if size is not None:
        expected = count * dtype.itemsize
        if size != expected:
            raise _fail(f"`{where}.parameters.binary_data_size` must be {expected} bytes for {datatype} "
                        f"{list(shape)}, got {size!r}")
        if "data" in spec:
            raise _fail(f"`{where}` has both `data` and `binary_data_size`; send one")
        if offset + size > len(binary):
            raise _fail(f"`{where}` needs {size} bytes of binary data after the JSON header but only "
                        f"{len(binary) - offset} remain; check {HEADER_LENGTH} and the tensor order")
        array = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
        return name, array.astype(dtype.newbyteorder("="), copy=False), offset + size
    data = spec.get("data")
    if not isinstance(data, list):
        raise _fail(f"`{where}.data` must be a (flat or nested) JSON list, or send binary data with "
                    f"`parameters.binary_data_size`; got {type(data).__name__}")
    try:
        array = np.array(data, dtype=dtype.newbyteorder("="))
    except (ValueError, TypeError, OverflowError):
        raise _fail(f"`{where}.data` must hold only {datatype} numbers in a regular (non-ragged) list") from None
    if array.size != count:
        raise _fail(f"`{where}.data` must hold {count} values for shape {list(shape)}, got {array.size}")
    return name, array.reshape(shape), offset


def decode_request(body: bytes, header_length: str | None = None, *, max_json_bytes: int | None = None
                   ) -> InferRequest:
    """Decode an infer request body (JSON, or JSON header + binary tensors); a JSON part longer than
    ``max_json_bytes`` is refused (413) before it is parsed: its Python objects would cost ~32x."""
    header, binary = _split_body(body, header_length)
    if max_json_bytes is not None and len(header) > max_json_bytes:
        raise RequestTooLarge(f"the JSON part of the request is {len(header)} bytes, over the limit of "
                              f"{max_json_bytes} (the memory budget / 32: JSON numbers cost ~32 bytes each in "
                              "memory); send the tensors as binary data (parameters.binary_data_size)")
    hint = f"; binary bodies need the `{HEADER_LENGTH}` header" if header_length is None else ""
    request = loads_json(header, "invalid inference request: the JSON header", hint)
    if not isinstance(request, dict):
        raise _fail(f"the body must be a JSON object, got {type(request).__name__}")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _fail(f"`id` must be a string, got {request_id!r:.80}")
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _fail(f"`parameters` must be an object, got {parameters!r:.80}")
    binary_default = bool(parameters.get("binary_data_output", False))
    specs = request.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise _fail("`inputs` must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, spec in enumerate(specs):
        name, array, offset = _decode_input(index, spec, binary, offset)
        if name in inputs:
            raise _fail(f"input `{name}` is given twice")
        inputs[name] = array
    if offset != len(binary):
        raise _fail(f"{len(binary) - offset} bytes of binary data follow the tensors the header describes; "
                    f"check {HEADER_LENGTH} and each binary_data_size")
    return InferRequest(id=request_id, inputs=inputs, outputs=_decode_outputs(request.get("outputs"),
                        binary_default), binary_default=binary_default)


def _decode_outputs(outputs: Any, binary_default: bool) -> dict[str, bool] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise _fail(f"`outputs` must be a list of {{name, parameters}} objects, got {outputs!r:.80}")
    wanted: dict[str, bool] = {}
    for index, spec in enumerate(outputs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise _fail(f"`outputs[{index}]` must be an object with a string `name`, got {spec!r:.80}")
        parameters = spec.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise _fail(f"`outputs[{index}].parameters` must be an object, got {parameters!r:.80}")
        wanted[spec["name"]] = bool(parameters.get("binary_data", binary_default))
    return wanted


def check_inputs(inputs: Mapping[str, np.ndarray], expected: Sequence[TensorMetadata]) -> None:
    """Raise unless ``inputs`` has exactly the ``expected`` names, datatypes and (``-1``-free) dims,
    and all its floats are finite (:class:`InvalidValues`, 422)."""
    names = [spec.name for spec in expected]
    if sorted(inputs) != sorted(names):
        raise _fail(f"inputs must be exactly {names}, got {sorted(inputs)}")
    for spec in expected:
        array = inputs[spec.name]
        datatype = _NAMES.get(array.dtype)
        if datatype != spec.datatype:
            raise _fail(f"input `{spec.name}` must have datatype {spec.datatype}, got {datatype}")
        if len(array.shape) != len(spec.shape) or any(e not in (-1, d) for e, d in zip(spec.shape, array.shape)):
            raise _fail(f"input `{spec.name}` must have shape {list(spec.shape)} (-1: any), got {list(array.shape)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidValues(f"input `{spec.name}` must be finite, got NaN/inf values")


def check_outputs(request: InferRequest, available: Sequence[str]) -> None:
    """Raise :class:`InvalidRequest` when ``request`` asks for outputs the model does not have; the
    app calls it before inference, so a wrong name costs no compute."""
    unknown = sorted(set(request.outputs or ()) - set(available))
    if unknown:
        raise _fail(f"requested outputs {unknown} do not exist; this model's outputs are {sorted(available)}")


def encode_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Mapping[str, np.ndarray],
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers for ``outputs`` (name -> array), as ``request`` asked."""
    check_outputs(request, list(outputs))
    wanted = request.outputs or dict.fromkeys(outputs, request.binary_default)
    tensors, blobs = [], []
    for name, binary in wanted.items():
        array = np.ascontiguousarray(outputs[name])
        tensor: dict[str, Any] = {"name": name, "datatype": _NAMES[array.dtype], "shape": list(array.shape)}
        if binary:
            blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": tensors}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *blobs]), {"Content-Type": "application/octet-stream",
                                        HEADER_LENGTH: str(len(header))}
