"""A malformed-request suite: one request per class of mistake, each with its status and message, then
the server is still ready and its metrics hold no 5xx."""

from __future__ import annotations

import gzip
import io
import json
import re

import httpx
import numpy as np
import pytest

from serving.protocol_v2 import HEADER_LENGTH

N = 32
INFER = "/v2/models/oracle/infer"
RECONSTRUCT = "/v1/reconstruct"
PATTERNS = (np.random.default_rng(0).random((4, N, N), np.float32) + 0.5)
POSITIONS = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 3.0]])


def _json(**request: object) -> bytes:
    return json.dumps(request).encode()


def _diffraction(**fields: object) -> dict:
    return {"name": "diffraction", "shape": [1, 1, N, N], "datatype": "FP32", "data": [0.5] * N * N, **fields}


def _scale(**fields: object) -> dict:
    return {"name": "scale", "shape": [1], "datatype": "FP32", "data": [1.0], **fields}


def _npz(**arrays: object) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _options(options: object) -> bytes:
    return _npz(patterns=PATTERNS, positions=POSITIONS, options=np.array(json.dumps(options)))


CASES = [
    # (id, method, path, body, headers, status, message)
    ("null body", "POST", INFER, b"null", {}, 400, "the body must be a JSON object, got NoneType"),
    ("list body", "POST", INFER, b"[]", {}, 400, "the body must be a JSON object, got list"),
    ("empty body", "POST", INFER, b"", {}, 400, "the JSON header does not parse"),
    ("not UTF-8", "POST", INFER, b"\xff\xfe{", {}, 400, "the JSON header does not parse"),
    ("inputs object", "POST", INFER, _json(inputs={}), {}, 400, "`inputs` must be a non-empty list"),
    ("input not object", "POST", INFER, _json(inputs=[3]), {}, 400, r"`inputs\[0\]` must be an object"),
    ("input without name", "POST", INFER, _json(inputs=[{"shape": [1]}]), {}, 400, r"`inputs\[0\].name` must be"),
    ("negative shape", "POST", INFER, _json(inputs=[_diffraction(shape=[-1, 1, N, N]), _scale()]), {}, 400,
     "shape` must be a list of non-negative integers"),
    ("shape string", "POST", INFER, _json(inputs=[_diffraction(shape="1x32"), _scale()]), {}, 400,
     "shape` must be a list of non-negative integers"),
    ("bool shape", "POST", INFER, _json(inputs=[_diffraction(shape=[True, 1, N, N]), _scale()]), {}, 400,
     "shape` must be a list of non-negative integers"),
    ("unknown datatype", "POST", INFER, _json(inputs=[_diffraction(datatype="FP128"), _scale()]), {}, 400,
     "datatype` must be one of"),
    ("ragged data", "POST", INFER, _json(inputs=[_diffraction(data=[[0.5], [0.5, 0.5]]), _scale()]), {}, 400,
     "regular \\(non-ragged\\) list"),
    ("string data", "POST", INFER, _json(inputs=[_diffraction(data=["a"] * N * N), _scale()]), {}, 400,
     "must hold only FP32 numbers"),
    ("data not list", "POST", INFER, _json(inputs=[_diffraction(data=5), _scale()]), {}, 400,
     "data` must be a \\(flat or nested\\) JSON list"),
    ("too few values", "POST", INFER, _json(inputs=[_diffraction(data=[0.5]), _scale()]), {}, 400,
     "must hold 1024 values"),
    ("huge declared shape", "POST", INFER, _json(inputs=[_diffraction(shape=[10**12, 1, N, N]), _scale()]), {}, 400,
     "must hold 1024000000000000 values"),
    ("duplicate input", "POST", INFER, _json(inputs=[_diffraction(), _diffraction()]), {}, 400,
     "input `diffraction` is given twice"),
    ("missing input", "POST", INFER, _json(inputs=[_diffraction()]), {}, 400, "inputs must be exactly"),
    ("unknown input", "POST", INFER, _json(inputs=[_diffraction(), _scale(), _scale(name="x")]), {}, 400,
     "inputs must be exactly"),
    ("numeric id", "POST", INFER, _json(id=7, inputs=[_diffraction(), _scale()]), {}, 400, "`id` must be a string"),
    ("parameters list", "POST", INFER, _json(parameters=[1], inputs=[_diffraction(), _scale()]), {}, 400,
     "`parameters` must be an object"),
    ("outputs object", "POST", INFER, _json(inputs=[_diffraction(), _scale()], outputs={}), {}, 400,
     "`outputs` must be a list"),
    ("unknown output", "POST", INFER, _json(inputs=[_diffraction(), _scale()], outputs=[{"name": "x"}]), {}, 400,
     r"requested outputs \['x'\] do not exist"),
    ("header length text", "POST", INFER, b"{}", {HEADER_LENGTH: "abc"}, 400, "must be an integer"),
    ("header length past body", "POST", INFER, b"{}", {HEADER_LENGTH: "99"}, 400, "must be between 0 and the body"),
    ("binary size mismatch", "POST", INFER,
     _json(inputs=[_diffraction(data=None, parameters={"binary_data_size": 3}), _scale()]), {}, 400,
     "binary_data_size` must be 4096 bytes"),
    ("infinite value", "POST", INFER, json.dumps({"inputs": [_diffraction(), _scale(data=[1e999])]}).encode(), {},
     422, "positive and finite|must be finite"),
    ("zero scale", "POST", INFER, _json(inputs=[_diffraction(), _scale(data=[0.0])]), {}, 422,
     "`scale` must be positive and finite"),
    ("negative amplitudes", "POST", INFER, _json(inputs=[_diffraction(data=[-0.5] * N * N), _scale()]), {}, 422,
     r"`diffraction` must be non-negative \(amplitudes or counts\), got negative values in diffraction \[0\]"),
    ("not an npz", "POST", RECONSTRUCT, b"PK\x05\x06" + b"\0" * 18, {}, 400, "missing \\['patterns', 'positions'\\]"),
    ("empty npz body", "POST", RECONSTRUCT, b"", {}, 400, "must be an NPZ archive"),
    ("complex patterns", "POST", RECONSTRUCT, _npz(patterns=PATTERNS.astype(np.complex64), positions=POSITIONS), {},
     400, "`patterns` must be real numbers"),
    ("string positions", "POST", RECONSTRUCT, _npz(patterns=PATTERNS, positions=np.array([["a", "b"]] * 4)), {},
     400, "`positions` must be real numbers of shape \\(4, 2\\)"),
    ("no patterns", "POST", RECONSTRUCT, _npz(patterns=np.zeros((0, N, N), np.float32), positions=np.zeros((0, 2))),
     {}, 400, "`patterns` must hold at least one pattern"),
    ("all-zero patterns", "POST", RECONSTRUCT, _npz(patterns=np.zeros((4, N, N), np.float32), positions=POSITIONS),
     {}, 422, "`patterns` are all zero"),
    ("NaN positions", "POST", RECONSTRUCT, _npz(patterns=PATTERNS, positions=np.full((4, 2), np.nan)), {}, 422,
     "`positions` must be finite"),
    ("NaN probe", "POST", RECONSTRUCT,
     _npz(patterns=PATTERNS, positions=POSITIONS, probe=np.full((N, N), np.nan, np.complex64)), {}, 422,
     "`probe` must be finite"),
    ("mask shape", "POST", RECONSTRUCT, _npz(patterns=PATTERNS, positions=POSITIONS, mask=np.zeros((3, 3), bool)),
     {}, 400, r"`mask` must be a \(32, 32\) bool"),
    ("mask values", "POST", RECONSTRUCT, _npz(patterns=PATTERNS, positions=POSITIONS, mask=np.full((N, N), 7)),
     {}, 422, r"`mask` must be a \(32, 32\) bool \(or 0/1\)"),
    ("options numeric", "POST", RECONSTRUCT, _npz(patterns=PATTERNS, positions=POSITIONS, options=np.array([1.0])),
     {}, 400, "`options` must be a 0-d string array"),
    ("options list", "POST", RECONSTRUCT, _options([1, 2]), {}, 400, "`options` must be a JSON object, got list"),
    ("stitch_M zero", "POST", RECONSTRUCT, _options({"stitch_M": 0}), {}, 400, r"`stitch_M` must be in \[1, N/2"),
    ("stitch_M bool", "POST", RECONSTRUCT, _options({"stitch_M": True}), {}, 400, "`stitch_M` must be"),
    ("units photons", "POST", RECONSTRUCT, _options({"units": "photons"}), {}, 400, r"`units` must be one of \['amplitude', 'counts'\], got 'photons'"),
    ("policy typo", "POST", RECONSTRUCT, _options({"scale_policy": "scna"}), {}, 400,
     r"`scale_policy` must be one of \['scan', 'bundle', 'explicit'\], got 'scna'"),
    ("gzip garbage", "POST", RECONSTRUCT, b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
    ("gzip truncated", "POST", RECONSTRUCT, gzip.compress(_npz(patterns=PATTERNS, positions=POSITIONS))[:-20],
     {"Content-Encoding": "gzip"}, 400, "body is truncated"),
    ("brotli", "POST", RECONSTRUCT, b"x", {"Content-Encoding": "br"}, 415, "`Content-Encoding: br` is not supported"),
    ("wrong method", "GET", INFER, b"", {}, 405, "Method Not Allowed: GET /v2/models/oracle/infer"),
    ("post to a probe", "POST", "/v2/health/live", b"", {}, 405, "Method Not Allowed"),
    ("traversal", "GET", "/v2/models/..%2F..%2Fetc%2Fpasswd", b"", {}, 404, "Not Found: GET /v2/models/../../etc/passwd"),
    ("no such route", "GET", "/admin", b"", {}, 404, "Not Found: GET /admin"),
]


@pytest.fixture(scope="module")
def server(oracle_app_server):  # a LiveServer
    # `from conftest import LiveServer` picked tests/training/conftest.py when every folder is collected
    return oracle_app_server


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_malformed_request_gets_its_status_and_message(server, case) -> None:
    _, method, path, body, headers, status, message = case
    response = httpx.request(method, f"{server.url}{path}", content=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert re.search(message, response.json()["error"]), response.json()["error"]


def test_after_the_suite_the_server_is_ready_and_counted_no_5xx(server) -> None:
    for _, method, path, body, headers, _, _ in CASES:
        httpx.request(method, f"{server.url}{path}", content=body, headers=headers, timeout=30)
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    statuses = re.findall(r'ptychopinn_requests_total{route="[^"]*",status="(\d+)"}',
                          httpx.get(f"{server.url}/metrics").text)
    assert len(set(statuses)) >= 5 and all(int(s) < 500 for s in statuses), statuses
