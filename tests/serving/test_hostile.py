"""Hostile and mistaken input over a real socket: the failing cases of tests/data/cases, memory sized
by the client, and the server under pressure. Each refusal is checked for its status and message."""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from hostile_inputs import forged_header_npz, gzip_bomb
from oracle import write_oracle_bundle

from ptycho_torch.bundle import load_bundle
from ptycho_torch.pipeline import reconstruct
from serving.app import create_app
from serving.client import Client
from serving.engine import Engine
from serving.limits import Limits
from serving.npz_wire import decode_reconstruction, encode_reconstruct_request

CASES = Path(__file__).resolve().parents[1] / "data" / "cases"
N = 32


@pytest.fixture(scope="module")
def engine64(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """The oracle graph at the cases' N = 64: its output is known exactly, so a wrong scale shows."""
    bundle = load_bundle(write_oracle_bundle(tmp_path_factory.mktemp("oracle64") / "bundle", N=64))
    return Engine(bundle, max_batch_size=16, providers=["cpu"], intra_op_threads=1)


def _case(name: str) -> dict[str, np.ndarray]:
    with np.load(CASES / name) as npz:
        return {key: npz[key] for key in npz.files}


def _post_npz(url: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/reconstruct", content=body, headers=headers, timeout=60)


def _scan(count: int = 9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:N, :N] - N // 2
    patterns = (10 * np.exp(-(xx**2 + yy**2) / 30.0) * (1 + 0.3 * rng.random((count, N, N)))).astype(np.float32)
    return patterns, np.stack([np.arange(count) * 2.0, np.arange(count) % 3 * 2.0], axis=1)


def _error(response: httpx.Response) -> str:
    return response.json()["error"]


# --- the failing cases: each gets its right answer -------------------------------------------------------


def test_positions_in_metres_are_refused_asking_for_pixels(engine64: Engine, serve) -> None:
    server = serve(create_app(engine64))
    response = _post_npz(server.url, (CASES / "positions_in_metres.body.npz").read_bytes())
    assert response.status_code == 422
    assert re.search(r"`positions` span 1.91e-06 x 1.91e-06 object pixels for 120 patterns: they look like "
                     r"metres .* divide them by the object pixel size", _error(response))


def test_unshifted_patterns_are_refused_naming_fftshift(engine64: Engine, serve) -> None:
    case = _case("unshifted_patterns.npz")
    server = serve(create_app(engine64))
    with Client(server.url) as client, pytest.raises(Exception, match=r"HTTP 422 .*fftshift"):
        client.reconstruct(case["diffraction"], np.column_stack([case["xcoords"], case["ycoords"]]))
    shifted = np.fft.fftshift(case["diffraction"], axes=(-2, -1))
    with Client(server.url) as client:
        result = client.reconstruct(shifted, np.column_stack([case["xcoords"], case["ycoords"]]))
    assert result.scan_report["warnings"] == [] and result.scan_report["centre_energy_fraction"] > 0.99


def test_integer_counts_without_units_equal_the_counts_answer(engine64: Engine, serve) -> None:
    case = _case("uint16_counts.body.npz")
    server = serve(create_app(engine64))
    with Client(server.url) as client:
        implicit = client.reconstruct(case["patterns"], case["positions"])
        explicit = client.reconstruct(case["patterns"], case["positions"], options={"units": "counts"})
        as_amplitude = client.reconstruct(case["patterns"], case["positions"], options={"units": "amplitude"})
    np.testing.assert_array_equal(implicit.amplitude, explicit.amplitude)
    np.testing.assert_array_equal(implicit.phase, explicit.phase)
    assert implicit.scale == explicit.scale and implicit.scan_report["units"] == "counts"
    # the oracle's phase is 0.25 * network input: counts read as amplitudes put it far off (what happened before)
    covered = implicit.coverage > 0
    assert np.abs(as_amplitude.phase - implicit.phase)[covered].max() > 0.1
    amplitudes = np.sqrt(case["patterns"].astype(np.float64)).astype(np.float32)
    local = reconstruct(engine64, amplitudes, case["positions"])
    np.testing.assert_array_equal(implicit.phase, local.phase)


def test_tiny_amplitudes_are_refused_naming_the_scale_never_a_nan_200(engine64: Engine, serve) -> None:
    server = serve(create_app(engine64))
    response = _post_npz(server.url, (CASES / "tiny_amplitudes.body.npz").read_bytes())
    assert response.status_code == 422
    assert re.search(r"`scale` must be in \[1e-30, 1e\+30\], got 3.8e\+39: the patterns\' largest value is 1e-39; send amplitudes in photon units", _error(response))


@pytest.mark.parametrize("scale, message", [
    (0.0, r"`scale` must be positive and finite, got \[0.0\]"),
    (-1.0, r"`scale` must be positive and finite, got \[-1.0\]"),
    (3e38, r"`scale` must be in \[1e-30, 1e\+30\]"),
])
def test_infer_refuses_a_scale_out_of_range(engine: Engine, serve, scale: float, message: str) -> None:
    server = serve(create_app(engine))
    body = {"inputs": [{"name": "diffraction", "shape": [1, 1, N, N], "datatype": "FP32", "data": [1.0] * N * N},
                       {"name": "scale", "shape": [1], "datatype": "FP32", "data": [scale]}]}
    response = httpx.post(f"{server.url}/v2/models/oracle/infer", json=body)
    assert response.status_code == 422 and re.search(message, _error(response))


def test_a_bad_pixel_mask_over_http_is_applied_and_reported(engine: Engine, serve) -> None:
    patterns, positions = _scan()
    mask = np.zeros((N, N), bool)
    mask[15, 14:18] = True  # inside the stitched central crop
    server = serve(create_app(engine))
    with Client(server.url) as client:
        plain = client.reconstruct(patterns, positions)
        masked = client.reconstruct(patterns, positions, mask=mask)
    assert plain.scan_report["masked_pixels"] == 0 and masked.scan_report["masked_pixels"] == 4
    assert not np.array_equal(plain.phase, masked.phase)
    np.testing.assert_array_equal(masked.phase, reconstruct(engine, patterns, positions, mask=mask).phase)


def test_detector_gaps_stored_as_the_dtype_maximum_are_masked_and_warned(engine: Engine, serve) -> None:
    patterns, positions = _scan()
    counts = np.round(patterns**2).astype(np.uint16)
    gapped = counts.copy()
    gapped[:, :, 5] = 65535
    server = serve(create_app(engine))
    with Client(server.url) as client:
        clean = client.reconstruct(counts, positions)
        result = client.reconstruct(gapped, positions)
    assert result.scan_report["masked_pixels"] == N and "sentinel 65535" in result.scan_report["warnings"][0]
    assert result.scale == pytest.approx(clean.scale, rel=0.01)  # before: the gap moved the scale 2.7x


# --- memory sized by the client ----------------------------------------------------------------------------


def test_a_canvas_over_the_budget_is_refused_naming_positions_size_and_limit(engine: Engine, serve) -> None:
    patterns, _ = _scan(2)
    server = serve(create_app(engine))
    for positions, span in (([[0, 0], [9000, 9000]], "9000 x 9000"), ([[0, 0], [1e300, 1e300]], "1e\\+300 x 1e\\+300")):
        response = _post_npz(server.url, encode_reconstruct_request(patterns, np.array(positions, float)))
        assert response.status_code == 413, response.text
        assert re.search(rf"`positions`: a stitched canvas of [\d,~e]+ x [\d,~e]+ px \(the positions span {span} px\) "
                         r".* needs [\d,.~e]+ MiB, over the per-request memory budget of 2,048.0 MiB", _error(response))
    apart = _post_npz(server.url, encode_reconstruct_request(patterns, np.array([[0, 0], [2000, 0]], float)))
    assert apart.status_code == 200  # a large but affordable canvas is fine


def test_an_npy_header_declaring_a_huge_shape_is_refused_before_allocation(engine: Engine, serve) -> None:
    server = serve(create_app(engine))
    response = _post_npz(server.url, forged_header_npz((10**12, N, N)))
    assert response.status_code == 413
    assert "`patterns` in the request NPZ declares shape [1000000000000, 32, 32] float32 (4096000000000000 bytes) " \
           "but holds 8192 bytes" in _error(response)


def test_deeply_nested_json_is_a_400(engine: Engine, serve) -> None:
    server = serve(create_app(engine))
    deep = "[" * 100_000 + "]" * 100_000
    response = httpx.post(f"{server.url}/v2/models/oracle/infer", content=deep)
    assert response.status_code == 400 and "nested too deeply" in _error(response)
    patterns, positions = _scan()
    body = io.BytesIO()
    np.savez(body, patterns=patterns, positions=positions, options=np.array('{"a":' * 50_000 + "1" + "}" * 50_000))
    response = _post_npz(server.url, body.getvalue())
    assert response.status_code == 400 and "`options` must be a JSON object, got text that is nested too deeply" \
        in _error(response)


def test_json_tensor_data_over_the_json_budget_must_be_sent_binary(engine: Engine, serve) -> None:
    server = serve(create_app(engine, limits=Limits(max_request_memory_bytes=32 << 20)))
    body = json.dumps({"inputs": [{"name": "diffraction", "shape": [400, 1, N, N], "datatype": "FP32",
                                   "data": [0.5] * (400 * N * N)},
                                  {"name": "scale", "shape": [400], "datatype": "FP32", "data": [1.0] * 400}]})
    response = httpx.post(f"{server.url}/v2/models/oracle/infer", content=body)
    assert response.status_code == 413
    assert re.search(r"JSON part of the request is \d+ bytes, over the limit of 1048576 .* binary data", _error(response))


# --- Content-Encoding ----------------------------------------------------------------------------------------


def test_tritonclient_gzip_and_deflate_requests_equal_plain_ones(engine: Engine, serve) -> None:
    import tritonclient.http as triton

    server = serve(create_app(engine))
    rng = np.random.default_rng(3)
    diffraction, scale = rng.random((3, 1, N, N), np.float32), np.full(3, 0.5, np.float32)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        inputs = [triton.InferInput("diffraction", list(diffraction.shape), "FP32"),
                  triton.InferInput("scale", [3], "FP32")]
        inputs[0].set_data_from_numpy(diffraction)
        inputs[1].set_data_from_numpy(scale)
        plain = client.infer("oracle", inputs).as_numpy("amplitude")
        for algorithm in ("gzip", "deflate"):
            result = client.infer("oracle", inputs, request_compression_algorithm=algorithm)
            np.testing.assert_array_equal(result.as_numpy("amplitude"), plain)
    finally:
        client.close()
    np.testing.assert_allclose(plain, diffraction * 0.5)


def test_compressed_bodies_are_bounded_while_inflating_and_bad_encodings_refused(engine: Engine, serve) -> None:
    server = serve(create_app(engine, limits=Limits(max_body_bytes=1 << 20)))
    patterns, positions = _scan()
    body = encode_reconstruct_request(patterns, positions)
    raw_deflate = zlib.compressobj(wbits=-15)
    expected = decode_reconstruction(_post_npz(server.url, body).content)[0]
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)),
                             ("deflate", raw_deflate.compress(body) + raw_deflate.flush())):
        response = _post_npz(server.url, packed, **{"Content-Encoding": encoding})
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(decode_reconstruction(response.content)[0].phase, expected.phase)
    bomb = gzip_bomb(16 << 20)  # 16 MiB of zeros in 16 KiB
    response = _post_npz(server.url, bomb, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413 and "`Content-Encoding: gzip` body expands past 1048576 bytes" in _error(response)
    response = _post_npz(server.url, body, **{"Content-Encoding": "br"})
    assert response.status_code == 415 and "send gzip, deflate or none" in _error(response)
    response = _post_npz(server.url, b"not gzip at all", **{"Content-Encoding": "gzip"})
    assert response.status_code == 400 and "not valid gzip data" in _error(response)


# --- live sessions follow the same rules --------------------------------------------------------------------


@pytest.mark.parametrize("scale, status, message", [(0.0, 400, "`scale` must be a positive finite number"),
                                                    (-1.0, 400, "`scale` must be a positive finite number"),
                                                    (3e38, 422, r"`scale` must be in \[1e-30, 1e\+30\]")])
def test_a_session_refuses_a_scale_out_of_range(engine: Engine, serve, scale: float, status: int, message: str) -> None:
    server = serve(create_app(engine))
    response = httpx.post(f"{server.url}/v1/sessions", json={"options": {"scale": scale}})
    assert response.status_code == status and re.search(message, _error(response))


def test_a_session_reads_integer_frames_as_counts_like_every_entry_point(engine: Engine, serve) -> None:
    patterns, positions = _scan()
    counts = np.round(patterns**2).astype(np.uint16)
    server = serve(create_app(engine))
    results = []
    with Client(server.url) as client:
        for frames, options in ((counts, {"scale": 0.5}), (counts, {"scale": 0.5, "units": "counts"}),
                                (np.sqrt(counts.astype(np.float64)).astype(np.float32), {"scale": 0.5})):
            live = client.open_session(options=options)
            live.send_frames(np.arange(len(frames)), frames, positions)
            results.append(live.close())
    np.testing.assert_array_equal(results[0].phase, results[1].phase)
    np.testing.assert_array_equal(results[0].phase, results[2].phase)


def test_a_bundle_default_mask_applies_to_every_scan_in_process_served_and_remote(serve, tmp_path: Path) -> None:
    from serving.client import RemoteRunner

    mask = np.zeros((N, N), bool)
    mask[15, 14:18] = True  # inside the stitched central crop
    masked = Engine(load_bundle(write_oracle_bundle(tmp_path / "masked", bad_pixels=mask)), max_batch_size=16,
                    providers=["cpu"], intra_op_threads=1)
    plain = Engine(load_bundle(write_oracle_bundle(tmp_path / "plain")), max_batch_size=16, providers=["cpu"],
                   intra_op_threads=1)
    assert masked.bundle.bad_pixels is not None and masked.bundle.bad_pixels.sum() == 4
    patterns, positions = _scan()
    expected = reconstruct(plain, patterns, positions, mask=mask)  # the same mask sent by the caller
    default = reconstruct(masked, patterns, positions)
    np.testing.assert_array_equal(default.phase, expected.phase)
    assert default.scan_report["masked_pixels"] == 4
    assert not np.array_equal(default.phase, reconstruct(plain, patterns, positions).phase)
    server = serve(create_app(masked))
    with Client(server.url) as client:
        assert client.model_metadata("oracle")["parameters"]["bad_pixels"] == [[15, 14], [15, 15], [15, 16], [15, 17]]
        np.testing.assert_array_equal(client.reconstruct(patterns, positions).phase, expected.phase)
        remote = RemoteRunner(client.model_facts("oracle"), client)
        np.testing.assert_array_equal(reconstruct(remote, patterns, positions).phase, expected.phase)


def test_a_malformed_bundle_mask_is_refused_naming_the_file(tmp_path: Path) -> None:
    from ptycho_torch.errors import BundleError

    root = write_oracle_bundle(tmp_path / "bundle", bad_pixels=np.zeros((4, 4), bool))
    with pytest.raises(BundleError, match=r"bad_pixels.npy: must be a bool \(32, 32\) mask, got bool \(4, 4\)"):
        load_bundle(root)
