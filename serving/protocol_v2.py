"""Open Inference Protocol (KServe v2) REST tensors, with Triton's binary tensor extension.

Pure functions over bytes and numpy arrays, no web framework. The server's half:
:func:`decode_request` turns an infer request body into arrays (strictly; every problem is an
:class:`~serving.errors.InvalidRequest` naming the tensor and the field), :func:`encode_response`
turns outputs into a body plus headers. The client's half: :func:`encode_request` and
:func:`decode_response` (a response it cannot read is a :class:`~serving.errors.ServerError`). Both
halves write and read tensors with the same two functions, and name element types through the one
table :mod:`ptycho_torch.bundle.dtypes`.

Binary extension: the body is the JSON header followed by raw little-endian row-major tensors, in
the order the tensors are listed; the ``Inference-Header-Content-Length`` header gives the JSON
length; an input carries ``parameters.binary_data_size``; an output asks for binary with
``parameters.binary_data`` or the request with ``parameters.binary_data_output``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptycho_torch.bundle import BATCH_DIM, TensorSpec
from ptycho_torch.bundle.dtypes import DTYPES, by_name, by_numpy, by_oip
from ptycho_torch.errors import InvalidInput, InvalidValues, PtychoError
from serving.errors import InvalidRequest, RequestTooLarge, ServerError
from serving.limits import loads_json

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "TensorMetadata",
    "check_inputs",
    "check_outputs",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

Fail = Callable[[str], PtychoError]
"""Turns a problem with a body into the error its reader raises (request: 400; response: 500)."""


@dataclass(frozen=True)
class TensorMetadata:
    """A model input or output as OIP describes it; ``-1`` marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @classmethod
    def of(cls, spec: TensorSpec) -> TensorMetadata:
        """The OIP description of a manifest tensor (its ``"B"`` axis as ``-1``)."""
        dtype = by_name(spec.dtype)
        if dtype is None:
            raise InvalidInput(f"`{spec.name}` has dtype {spec.dtype}, which the OIP cannot carry; "
                               f"use one of {[d.name for d in DTYPES]}")
        return cls(spec.name, dtype.oip, tuple(-1 if d == BATCH_DIM else d for d in spec.shape))

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


def _bad_response(message: str) -> ServerError:
    return ServerError(f"invalid inference response from the server: {message}; check that the URL is a "
                       "ptychopinn or Triton server")


def _split_body(body: bytes, header_length: str | None, fail: Fail) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise fail(f"header `{HEADER_LENGTH}` must be an integer, got {header_length!r}") from None
    if not 0 <= length <= len(body):
        raise fail(f"header `{HEADER_LENGTH}` must be between 0 and the body length {len(body)}, got {length}")
    return body[:length], memoryview(body)[length:]


def _parse_shape(where: str, shape: Any, fail: Fail) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise fail(f"`{where}.shape` must be a list of non-negative integers, got {shape!r}")
    return tuple(shape)


def _decode_tensor(group: str, index: int, spec: Any, binary: memoryview, offset: int, fail: Fail
                   ) -> tuple[str, np.ndarray, int]:
    """Tensor ``group[index]`` (JSON ``data``, or its bytes at ``offset`` of ``binary``): its name, its
    array and the offset of the next binary tensor."""
    if not isinstance(spec, dict):
        raise fail(f"`{group}[{index}]` must be an object with name, shape, datatype and data, got {spec!r:.80}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise fail(f"`{group}[{index}].name` must be a non-empty string, got {name!r:.80}")
    where = f"{group}[{name}]"
    shape = _parse_shape(where, spec.get("shape"), fail)
    datatype = spec.get("datatype")
    row = by_oip(datatype) if isinstance(datatype, str) else None
    if row is None:
        raise fail(f"`{where}.datatype` must be one of {sorted(d.oip for d in DTYPES)}, got {datatype!r:.80}")
    count = math.prod(shape)
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise fail(f"`{where}.parameters` must be an object, got {parameters!r:.80}")
    size = parameters.get("binary_data_size")
    if size is not None:
        expected = count * row.numpy.itemsize
        if size != expected:
            raise fail(f"`{where}.parameters.binary_data_size` must be {expected} bytes for {datatype} "
                       f"{list(shape)}, got {size!r}")
        if "data" in spec:
            raise fail(f"`{where}` has both `data` and `binary_data_size`; send one")
        if offset + size > len(binary):
            raise fail(f"`{where}` needs {size} bytes of binary data after the JSON header but only "
                       f"{len(binary) - offset} remain; check {HEADER_LENGTH} and the tensor order")
        array = np.frombuffer(binary[offset:offset + size], dtype=row.numpy.newbyteorder("<")).reshape(shape)
        return name, array.astype(row.numpy, copy=False), offset + size
    return name, _json_data(where, spec.get("data"), row.oip, row.numpy, shape, fail), offset


def _json_data(where: str, data: Any, datatype: str, dtype: np.dtype, shape: tuple[int, ...], fail: Fail
               ) -> np.ndarray:
    if not isinstance(data, list):
        raise fail(f"`{where}.data` must be a (flat or nested) JSON list, or send binary data with "
                   f"`parameters.binary_data_size`; got {type(data).__name__}")
    try:
        array = np.array(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise fail(f"`{where}.data` must hold only {datatype} numbers in a regular (non-ragged) list") from None
    if array.size != math.prod(shape):
        raise fail(f"`{where}.data` must hold {math.prod(shape)} values for shape {list(shape)}, got {array.size}")
    return array.reshape(shape)


def _decode_tensors(group: str, specs: list[Any], binary: memoryview, fail: Fail) -> dict[str, np.ndarray]:
    """Every tensor of ``group`` (``inputs``/``outputs``), whose binary parts fill ``binary`` exactly."""
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for index, spec in enumerate(specs):
        name, array, offset = _decode_tensor(group, index, spec, binary, offset, fail)
        if name in tensors:
            raise fail(f"{group[:-1]} `{name}` is given twice")
        tensors[name] = array
    if offset != len(binary):
        raise fail(f"{len(binary) - offset} bytes of binary data follow the tensors the header describes; "
                   f"check {HEADER_LENGTH} and each binary_data_size")
    return tensors


def _encode_tensors(arrays: Mapping[str, np.ndarray], binary: Mapping[str, bool]
                    ) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The JSON descriptions of ``arrays`` (in ``binary``'s order: name -> send as binary) and the
    little-endian bytes of the binary ones, in the same order."""
    tensors, blobs = [], []
    for name, as_binary in binary.items():
        array = np.ascontiguousarray(arrays[name])
        row = by_numpy(array.dtype)
        if row is None:
            raise InvalidInput(f"tensor `{name}` has dtype {array.dtype}, which the OIP cannot carry; "
                               f"send one of {[d.name for d in DTYPES]}")
        tensor: dict[str, Any] = {"name": name, "datatype": row.oip, "shape": list(array.shape)}
        if as_binary:
            blob = array.astype(row.numpy.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    return tensors, blobs


def _frame(document: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A body and its headers: JSON alone, or the JSON header followed by the binary tensors."""
    header = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *blobs]), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def decode_request(body: bytes, header_length: str | None = None, *, max_json_bytes: int | None = None
                   ) -> InferRequest:
    """Decode an infer request body (JSON, or JSON header + binary tensors); a JSON part longer than
    ``max_json_bytes`` is refused (413) before it is parsed: its Python objects would cost ~32x."""
    header, binary = _split_body(body, header_length, _fail)
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
    inputs = _decode_tensors("inputs", specs, binary, _fail)
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
        row = by_numpy(array.dtype)
        datatype = None if row is None else row.oip
        if datatype != spec.datatype:
            raise _fail(f"input `{spec.name}` must have datatype {spec.datatype}, got {datatype}")
        shape = array.shape
        if len(shape) != len(spec.shape) or any(e not in (-1, d) for e, d in zip(spec.shape, shape, strict=True)):
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
    tensors, blobs = _encode_tensors(outputs, request.outputs or dict.fromkeys(outputs, request.binary_default))
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": tensors}
    if request.id is not None:
        response["id"] = request.id
    return _frame(response, blobs)


def encode_request(inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None, *, binary: bool = True,
                   request_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """An infer request body and its headers (the client's half): ``inputs`` (name -> array) as binary
    tensors, or JSON ``data`` when ``binary`` is False; ``outputs``: the names to answer (None: every
    output), each asked for as binary or JSON like the inputs. Raises :class:`InvalidInput` for a
    dtype the OIP cannot carry."""
    tensors, blobs = _encode_tensors(inputs, dict.fromkeys(inputs, binary))
    request: dict[str, Any] = {"inputs": tensors}
    if outputs is None:
        request["parameters"] = {"binary_data_output": binary}
    else:
        request["outputs"] = [{"name": name, "parameters": {"binary_data": binary}} for name in outputs]
    if request_id is not None:
        request["id"] = request_id
    return _frame(request, blobs)


def decode_response(body: bytes, header_length: str | None = None) -> dict[str, np.ndarray]:
    """The output tensors (name -> array) of an infer response body (the client's half; ``header_length``:
    its ``Inference-Header-Content-Length`` header). Raises :class:`ServerError` for a body that is not
    an OIP response."""
    header, binary = _split_body(body, header_length, _bad_response)
    try:
        response = json.loads(header)
    except (ValueError, UnicodeDecodeError):
        raise _bad_response(f"the JSON header does not parse ({len(header)} bytes)") from None
    outputs = response.get("outputs") if isinstance(response, dict) else None
    if not isinstance(outputs, list):
        raise _bad_response("the body must be a JSON object with an `outputs` list")
    return _decode_tensors("outputs", outputs, binary, _bad_response)
