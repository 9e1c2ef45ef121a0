"""Data fit on every /v1/reconstruct result and the refinement options, in process and over HTTP.

The oracle network (``amplitude = diffraction * scale``) knows nothing about objects, which makes it a
fair stand-in for a poor model: the data fit must say so, and refinement must recover the object.
"""

from __future__ import annotations

import io
import re

import httpx
import numpy as np
import pytest

from ptycho_torch.errors import InvalidInput
from ptycho_torch.grouping import extract_patches
from ptycho_torch.metrics import evaluate_reconstruction
from ptycho_torch.pipeline import reconstruct, reconstruct_steps
from ptycho_torch.plan import ReconstructOptions
from ptycho_torch.refinement import correction_warning
from ptycho_torch.simulation import default_probe, make_object, simulate_scan
from serving.app import create_app
from serving.client import Client
from serving.engine import Engine
from serving.errors import InvalidRequest
from serving.npz_wire import decode_reconstruction, encode_reconstruct_request

N = 32
SIZE = 80
CORRUPTED = [7, 50, 91]


@pytest.fixture(scope="module")
def scan():
    rng = np.random.default_rng(0)
    obj = make_object("grf", SIZE, rng)
    centres = np.arange(N / 2, SIZE - N / 2 - 1, 3.0)
    x, y = (v.ravel() for v in np.meshgrid(centres, centres))
    raw = simulate_scan(obj, default_probe(N), x, y, nphotons=1e5, seed=1)
    return raw.diff3d, raw.positions, raw.probeGuess, obj


def _ssim(result, obj) -> tuple[float, float]:
    """SSIM of the fully covered part of a result against the truth (positions shared: no registration)."""
    rows, cols = np.nonzero(result.coverage >= 1)
    x0, y0 = (int(v) for v in result.origin)
    window = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    truth = obj[rows.min() - y0:rows.max() + 1 - y0, cols.min() - x0:cols.max() + 1 - x0]
    image = result.amplitude[window] * np.exp(1j * result.phase[window])
    return evaluate_reconstruction(image, truth, register_first=False).ssim


def test_every_result_carries_its_data_fit(engine: Engine, scan) -> None:
    patterns, positions, probe, _ = scan
    without = reconstruct(engine, patterns, positions)
    given = reconstruct(engine, patterns, positions, probe=probe)
    for result, source in ((without, "model"), (given, "request")):
        fit = result.data_fit
        assert fit["probe"] == source and len(fit["nll"]) == len(fit["r_factor"]) == len(patterns)
        assert fit["nll_median"] == pytest.approx(np.median(fit["nll"]), rel=1e-5)
        assert fit["r_factor_p95"] >= fit["r_factor_median"] > 0
        assert [entry["nll_median"] for entry in fit["iterations"]] == [fit["nll_median"]]
        assert result.refinement is None and result.timings["data_fit"] > 0 and result.timings["refine"] == 0
    # the oracle's object is not the measured one: with the true probe the fit is far from the noise floor
    assert given.data_fit["r_factor_median"] > 0.3


def test_refinement_from_flat_recovers_the_object_the_network_missed(engine: Engine, scan) -> None:
    patterns, positions, probe, obj = scan
    network = reconstruct(engine, patterns, positions, probe=probe)
    refined = reconstruct(engine, patterns, positions, probe=probe,
                          options=ReconstructOptions(refine_iterations=20, refine_start="flat"))
    amplitude, phase = _ssim(refined, obj)
    before = _ssim(network, obj)
    assert amplitude >= 0.9 and phase >= 0.9 and max(before) < 0.5, (amplitude, phase, before)
    assert refined.amplitude.shape == network.amplitude.shape and refined.origin == network.origin
    np.testing.assert_array_equal(refined.coverage, network.coverage)
    history = refined.data_fit["iterations"]
    assert len(history) == 21 and history[-1]["nll_median"] < 0.9 * network.data_fit["nll_median"]
    assert refined.data_fit["r_factor_median"] < 0.3 < network.data_fit["r_factor_median"]
    assert refined.refinement == {"iterations": 20, "algorithm": "er", "start": "flat", "refine_probe": False,
                                  "refine_positions": False, "stop_reason": "iterations",
                                  "stopped": refined.refinement["stopped"], "warnings": [],
                                  "peak_bytes": refined.refinement["peak_bytes"]}
    assert isinstance(refined.refinement["stopped"], str) and refined.refinement["stopped"]  # a sentence
    assert refined.probe is None and refined.positions is None  # neither was refined
    assert 0 < refined.refinement["peak_bytes"] < 256 << 20 and refined.timings["refine"] > 0
    assert refined.timings["inference"] < network.timings["inference"]


class _GoodNetwork:
    """A runner whose 'network' returns the true object patches with some phase noise: a good model."""

    def __init__(self, engine: Engine, obj: np.ndarray, positions: np.ndarray) -> None:
        self.model = engine.model
        patches = extract_patches(obj, positions[:, 0], positions[:, 1], N)
        noisy = patches * np.exp(0.2j * np.random.default_rng(3).standard_normal(patches.shape))
        self.outputs = (np.abs(noisy)[:, None].astype(np.float32), np.angle(noisy)[:, None].astype(np.float32))

    def infer(self, diffraction: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.outputs


@pytest.mark.parametrize("algorithm", ["er", "rpie"])
def test_a_good_network_start_is_ahead_of_a_flat_one(engine: Engine, scan, algorithm: str) -> None:
    patterns, positions, probe, obj = scan
    runner = _GoodNetwork(engine, obj, positions)
    scores = {start: _ssim(reconstruct(runner, patterns, positions, probe=probe, options=ReconstructOptions(
        refine_iterations=3, refine_start=start, refine_algorithm=algorithm)), obj) for start in ("network", "flat")}
    assert min(scores["network"]) >= 0.9 and scores["network"][0] > scores["flat"][0] + 0.1, scores


def test_a_flat_start_never_runs_the_network(engine: Engine, scan) -> None:
    patterns, positions, probe, _ = scan

    class NoNetwork:
        model = engine.model

        def infer(self, *_):
            raise AssertionError("the network ran")

    result = reconstruct(NoNetwork(), patterns, positions, probe=probe,
                         options=ReconstructOptions(refine_iterations=2, refine_start="flat"))
    assert result.refinement["iterations"] == 2


def test_steps_come_one_per_iteration_and_stop_when_closed(engine: Engine, scan) -> None:
    patterns, positions, probe, _ = scan
    steps = reconstruct_steps(engine, patterns, positions, probe=probe,
                              options=ReconstructOptions(refine_iterations=30))
    first, second = next(steps), next(steps)
    steps.close()
    assert (first.refinement["iterations"], second.refinement["iterations"]) == (0, 1)
    assert first.data_fit is not None and second.data_fit is None  # measured by the next pass
    timed = reconstruct(engine, patterns, positions, probe=probe,
                        options=ReconstructOptions(refine_iterations=1000, refine_time_limit_s=0.3))
    assert timed.refinement["iterations"] < 1000 and timed.refinement["stop_reason"] == "time_limit"
    assert first.refinement["stop_reason"] is None and first.refinement["stopped"] is None  # not the last state
    assert len(timed.data_fit["iterations"]) == timed.refinement["iterations"] + 1


@pytest.mark.parametrize(("options", "message"), [
    ({"refine_iterations": 5000}, "`refine_iterations` must be at most 1000"),
    ({"refine_iterations": -1}, "`refine_iterations` must be a whole number of iterations in \\[0, 1000\\] or 'auto'"),
    ({"refine_iterations": 5, "refine_algorithm": "dm"}, r"`refine_algorithm` must be one of \['er', 'rpie', 'mpie'\]"),
    ({"refine_iterations": 5, "refine_start": "truth"}, r"`refine_start` must be one of \['network', 'flat'\]"),
    ({"refine_start": "flat"}, "`refine_start` 'flat' needs `refine_iterations` >= 1"),
    ({"refine_iterations": 5, "refine_time_limit_s": 0}, "`refine_time_limit_s` must be a positive number"),
])
def test_bad_refine_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        ReconstructOptions.from_mapping(options)


def test_over_http_corrupted_frames_are_exactly_the_outliers_and_metrics_count_them(engine: Engine, serve,
                                                                                     scan) -> None:
    patterns, positions, probe, obj = scan
    patterns = patterns.copy()
    patterns[CORRUPTED[0]] = patterns[CORRUPTED[0]][::-1]  # a frame from somewhere else (flipped)
    patterns[CORRUPTED[1], : N // 2] = 0  # half the detector dropped out
    patterns[CORRUPTED[2]] *= 2.5  # a beam-intensity spike
    server = serve(create_app(engine))
    with Client(server.url) as client:
        result = client.reconstruct(patterns, positions, probe=probe,
                                    options={"refine_iterations": 20, "refine_start": "flat"})
        with pytest.raises(InvalidRequest, match="`refine_iterations` must be at most 1000"):
            client.reconstruct(patterns, positions, options={"refine_iterations": 1001})
    assert result.data_fit["outliers"] == CORRUPTED
    assert result.data_fit["n_outliers"] == 3 and result.refinement["iterations"] == 20
    assert min(_ssim(result, obj)) > 0.8  # the corrupted frames pull the object only a little
    metrics = httpx.get(f"{server.url}/metrics").text
    assert re.search(r'^ptychopinn_data_fit_nll_count\{model="oracle"\} 1\.0$', metrics, re.M)
    assert re.search(r'^ptychopinn_refine_iterations_sum\{model="oracle"\} 20\.0$', metrics, re.M)
    fraction = re.search(r'^ptychopinn_data_fit_outlier_fraction_sum\{model="oracle"\} (\S+)$', metrics, re.M)
    assert float(fraction.group(1)) == pytest.approx(3 / len(patterns))


def test_a_request_without_options_still_gets_the_data_fit_over_http(engine: Engine, serve, scan) -> None:
    patterns, positions, probe, _ = scan
    server = serve(create_app(engine))
    response = httpx.post(f"{server.url}/v1/reconstruct", content=encode_reconstruct_request(patterns, positions))
    assert response.status_code == 200
    with Client(server.url) as client:
        result = client.reconstruct(patterns, positions)
    assert result.data_fit["probe"] == "model" and len(result.data_fit["nll"]) == len(patterns)


PROBE_AND_POSITIONS = {"refine_iterations": 12, "refine_start": "flat", "refine_probe": True, "refine_positions": True}
"""Enough iterations for the positions to move (the solver starts moving them after the object has structure)."""


def test_the_refined_probe_and_positions_reach_the_npz_response(engine: Engine, oracle_app_server, scan) -> None:
    patterns, positions, probe, _ = scan
    local = reconstruct(engine, patterns, positions, probe=probe,
                        options=ReconstructOptions.from_mapping(PROBE_AND_POSITIONS))
    body = encode_reconstruct_request(patterns, positions, probe=probe, options=PROBE_AND_POSITIONS)
    response = httpx.post(f"{oracle_app_server.url}/v1/reconstruct", content=body, timeout=60)
    assert response.status_code == 200, response.text
    with np.load(io.BytesIO(response.content)) as npz:
        arrays = {name: npz[name] for name in npz.files}
    remote = decode_reconstruction(response.content)[0]
    assert arrays["probe"].dtype == np.complex64 and arrays["probe"].shape == (1, N, N)  # (N, N) sent: one mode
    assert arrays["positions"].dtype == np.float64 and arrays["positions"].shape == (len(positions), 2)
    np.testing.assert_allclose(remote.probe, local.probe, rtol=1e-5, atol=1e-6 * np.abs(local.probe).max())
    np.testing.assert_allclose(remote.positions, local.positions, atol=1e-6)
    assert not np.allclose(local.probe[0], probe)  # refined, not the probe sent back
    moved = np.hypot(*(local.positions - positions).T)
    assert 0.01 < moved.max() < 8  # corrected, within the solver's margin
    summary = remote.refinement
    assert (summary["refine_probe"], summary["refine_positions"], summary["stop_reason"]) == (True, True, "iterations")
    assert summary["position_correction_px"] == pytest.approx(
        {"rms": float(np.sqrt(np.mean(moved ** 2))), "max": float(moved.max())})
    warning = correction_warning(local.positions - positions)
    assert summary["warnings"] == ([] if warning is None else [warning]) and isinstance(summary["stopped"], str)


def test_refined_positions_come_back_in_the_requests_coordinates(engine: Engine, scan) -> None:
    patterns, positions, probe, _ = scan
    options = ReconstructOptions.from_mapping(PROBE_AND_POSITIONS)
    here = reconstruct(engine, patterns, positions, probe=probe, options=options)
    offset = np.array([100.0, 37.0])  # the same scan, its positions counted from another origin
    there = reconstruct(engine, patterns, positions + offset, probe=probe, options=options)
    np.testing.assert_allclose(there.positions - offset, here.positions, atol=1e-4)
    np.testing.assert_allclose(there.probe, here.probe, rtol=1e-4, atol=1e-5 * np.abs(here.probe).max())
    assert there.refinement["position_correction_px"] == pytest.approx(here.refinement["position_correction_px"],
                                                                       abs=1e-4)


def test_too_few_iterations_for_the_positions_say_so_instead_of_returning_them_silently(engine: Engine,
                                                                                       scan) -> None:
    patterns, positions, probe, _ = scan
    result = reconstruct(engine, patterns, positions, probe=probe, options=ReconstructOptions(
        refine_iterations=3, refine_start="flat", refine_probe=True, refine_positions=True))
    np.testing.assert_array_equal(result.positions, positions)  # the solver moves positions later
    assert result.refinement["position_correction_px"] == {"rms": 0.0, "max": 0.0}
    [warning] = result.refinement["warnings"]
    assert warning.startswith("`refine_positions` had no effect: the solver updates the positions from iteration ")
    assert warning.endswith("and stopped after 3; ask for more iterations, or 'auto'")


def test_auto_refines_until_converged_and_moves_wrong_positions_towards_the_truth(oracle_app_server, scan) -> None:
    patterns, positions, probe, _ = scan
    error = np.random.default_rng(5).uniform(-1, 1, positions.shape)  # a scan whose encoders are off by up to 1 px
    with Client(oracle_app_server.url) as client:
        result = client.reconstruct(patterns, positions + error, probe=probe, options={
            "refine_iterations": "auto", "refine_start": "flat", "refine_positions": True, "refine_time_limit_s": 120})
    summary, history = result.refinement, result.data_fit["iterations"]
    assert summary["stop_reason"] == "converged" and 1 <= summary["iterations"] < 1000, summary
    assert summary["stopped"].startswith(f"converged after {summary['iterations']} iterations")
    assert len(history) == summary["iterations"] + 1 and all("amplitude_error" in entry for entry in history)
    assert "nll_median" in history[0] and history[-1]["nll_median"] == pytest.approx(result.data_fit["nll_median"])
    assert history[-1]["amplitude_error"] < history[1]["amplitude_error"]

    def off(found: np.ndarray) -> float:  # rms distance to the true positions, up to a common shift (the object's)
        miss = found - positions
        return float(np.sqrt(np.mean(np.sum((miss - miss.mean(axis=0)) ** 2, axis=1))))

    assert off(result.positions) < 0.6 * off(positions + error), (off(result.positions), off(positions + error))
    assert result.probe is None  # not asked for


@pytest.mark.parametrize(("options", "message"), [
    ({"refine_iterations": "autoo"}, "`refine_iterations` must be a whole number of iterations in [0, 1000] or 'auto'"),
    ({"refine_iterations": -1}, "got -1"),
    ({"refine_iterations": 3, "refine_probe": "yes"}, "`refine_probe` must be true or false, got 'yes'"),
    ({"refine_positions": True}, "`refine_positions` needs `refine_iterations` >= 1 or 'auto'"),
])
def test_bad_refine_values_over_http_are_400_with_the_fix(oracle_app_server, scan, options: dict,
                                                           message: str) -> None:
    patterns, positions, probe, _ = scan
    body = encode_reconstruct_request(patterns[:20], positions[:20], probe=probe, options=options)
    response = httpx.post(f"{oracle_app_server.url}/v1/reconstruct", content=body)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_a_session_takes_the_refinement_options_as_reconstruct_does(oracle_app_server) -> None:
    """Sessions refine live (tests/serving/test_session_refinement.py); they read the options alike."""
    response = httpx.post(f"{oracle_app_server.url}/v1/sessions", json={"options": {
        "scale_policy": "bundle", "refine_iterations": "auto", "refine_probe": True}})
    assert response.status_code == 201, response.text
    path = f"{oracle_app_server.url}/v1/sessions/{response.json()['session_id']}"
    refinement = httpx.get(path).json()["refinement"]
    assert (refinement["iterations_asked"], refinement["refine_probe"], refinement["state"]) == ("auto", True, "waiting")
    assert httpx.delete(path).status_code == 200
    bad = httpx.post(f"{oracle_app_server.url}/v1/sessions", json={"options": {"refine_iterations": 5000}})
    assert bad.status_code == 400 and "`refine_iterations` must be at most 1000" in bad.json()["error"]


@pytest.mark.parametrize(("options", "message"), [
    ({"refine_start": None}, "`refine_start` must be one of ['network', 'flat'], got None"),
    ({"refine_algorithm": "mpie"}, "`refine_algorithm` 'mpie' needs `refine_iterations` >= 1 or 'auto'"),
    ({"refine_iterations": 2.5}, "`refine_iterations` must be a whole number of iterations in [0, 1000] or 'auto'"),
])
def test_a_null_choice_and_an_algorithm_without_refinement_are_400_naming_the_option(oracle_app_server, scan,
                                                                                      options: dict, message: str) -> None:
    patterns, positions, probe, _ = scan
    body = encode_reconstruct_request(patterns[:20], positions[:20], probe=probe, options=options)
    response = httpx.post(f"{oracle_app_server.url}/v1/reconstruct", content=body)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_a_whole_number_sent_as_a_float_refines_that_many_iterations(oracle_app_server, scan) -> None:
    patterns, positions, probe, _ = scan
    body = encode_reconstruct_request(patterns[:20], positions[:20], probe=probe, options={"refine_iterations": 3.0})
    response = httpx.post(f"{oracle_app_server.url}/v1/reconstruct", content=body, timeout=60)
    assert response.status_code == 200, response.text
    assert decode_reconstruction(response.content)[0].refinement["iterations"] == 3


def test_the_solver_takes_numpy_integers_as_iteration_counts() -> None:
    from ptycho_torch.errors import DataContractError
    from ptycho_torch.refinement import RefineSettings

    assert RefineSettings(iterations=np.int64(5)).iteration_cap == 5
    for bad in (2.5, True, -1):
        with pytest.raises(DataContractError, match="`iterations` must be a non-negative integer or 'auto'"):
            RefineSettings(iterations=bad)


def test_a_host_whose_refine_backend_cannot_run_answers_only_refining_requests_and_with_a_500(
        oracle_app_server, scan, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ptychopinn serve` refuses such a backend at start; an app started otherwise still serves every request
    that does not refine (the data fit never needs the backend), and a refining one is the server's fault."""
    patterns, positions, probe, _ = scan
    monkeypatch.setenv("PTYCHOPINN_REFINE_BACKEND", "gpu")
    url = f"{oracle_app_server.url}/v1/reconstruct"
    plain = httpx.post(url, content=encode_reconstruct_request(patterns[:20], positions[:20], probe=probe))
    assert plain.status_code == 200, plain.text
    assert decode_reconstruction(plain.content)[0].data_fit["probe"] == "request"
    refining = httpx.post(url, content=encode_reconstruct_request(patterns[:20], positions[:20], probe=probe,
                                                                  options={"refine_iterations": 2}))
    assert refining.status_code == 500, refining.text
    assert refining.json()["error"].startswith(
        "this server cannot refine: `$PTYCHOPINN_REFINE_BACKEND=gpu`: refinements run on one of ['numpy', 'cupy']")
    monkeypatch.setenv("PTYCHOPINN_REFINE_BACKEND", "")  # empty is unset: numpy
    refining = httpx.post(url, content=encode_reconstruct_request(patterns[:20], positions[:20], probe=probe,
                                                                  options={"refine_iterations": 2}), timeout=60)
    assert refining.status_code == 200 and decode_reconstruction(refining.content)[0].refinement["iterations"] == 2
