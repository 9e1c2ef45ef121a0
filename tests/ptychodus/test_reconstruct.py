"""The ONNX and HTTP reconstructors on the oracle scan, through Ptychodus' own API objects."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from ptychodus.api.assemble import AssembledDiffractionData
from ptychodus.api.reconstruct import prepare_reconstruct_input
from scans import N, OracleScan

from ptycho_torch.normalization import input_scale
from serving.ptychodus.http_reconstructor import HttpReconstructor
from serving.ptychodus.onnx_reconstructor import OnnxReconstructor
from serving.ptychodus.settings import PtychoPINNServeSettings

PHASE_FACTOR = 0.25


def _expected_object(oracle: OracleScan) -> np.ndarray:
    """Oracle amplitude = diffraction * scale, with the whole scan's `scan`-policy scale."""
    amplitudes = np.sqrt(oracle.data.get_patterns().astype(np.float64))
    scale = input_scale(amplitudes)
    return (oracle.phase / PHASE_FACTOR) * scale * np.exp(1j * oracle.phase)


def _check_oracle(obj: np.ndarray, oracle: OracleScan) -> None:
    rows, cols = oracle.covered
    expected = _expected_object(oracle)
    assert obj.shape == oracle.phase.shape
    covered = np.zeros(obj.shape, bool)
    covered[rows, cols] = True
    assert np.count_nonzero(obj[~covered]) == 0, "object outside the covered region must be 0"
    error = np.abs(obj[covered] - expected[covered]) / np.abs(expected[covered])
    assert error.max() < 1e-5
    assert np.abs(np.angle(obj[covered]) - oracle.phase[covered]).max() < 1e-5


def test_onnx_reconstructs_the_oracle_object_exactly(oracle: OracleScan, oracle_zip: Path,
                                                     settings: PtychoPINNServeSettings) -> None:
    parameters = prepare_reconstruct_input(oracle.data, oracle.product)
    settings.bundle_path.set_value(oracle_zip)
    outputs = list(OnnxReconstructor(settings).reconstruct(parameters))
    assert [o.progress for o in outputs] == [1]
    product = outputs[0].product
    _check_oracle(product.object_.get_layer(0), oracle)
    # geometry, probe, positions and metadata are the input's
    assert product.object_.get_geometry() == oracle.product.object_.get_geometry()
    assert product.probes is parameters.product.probes
    assert product.probe_positions is parameters.product.probe_positions
    assert product.metadata == oracle.product.metadata


def test_http_gives_the_onnx_object_chunk_by_chunk(oracle: OracleScan, oracle_zip: Path, oracle_server,
                                                   settings: PtychoPINNServeSettings) -> None:
    parameters = prepare_reconstruct_input(oracle.data, oracle.product)
    settings.bundle_path.set_value(oracle_zip)
    onnx_object = next(OnnxReconstructor(settings).reconstruct(parameters)).product.object_.get_layer(0)

    settings.server_url.set_value(oracle_server.url)
    settings.server_model.set_value("oracle")
    settings.api_token.set_value("s3cret")
    settings.chunk_size.set_value(10)  # 36 patterns -> 4 chunks
    reconstructor = HttpReconstructor(settings)
    outputs = list(reconstructor.reconstruct(parameters))
    assert [o.progress for o in outputs] == [1, 2, 3, 4]
    assert reconstructor.get_progress_goal() == 4
    covered = [np.count_nonzero(o.product.object_.get_layer(0)) for o in outputs]
    assert covered == sorted(covered) and covered[0] < covered[-1]  # the object grows chunk by chunk
    http_object = outputs[-1].product.object_.get_layer(0)
    np.testing.assert_allclose(http_object, onnx_object, rtol=1e-5, atol=1e-6)
    _check_oracle(http_object, oracle)
    assert _sessions(oracle_server) == []  # streamed through a live session, closed at the end


def _sessions(server) -> list[dict]:
    return httpx.get(f"{server.url}/v1/sessions", headers={"Authorization": "Bearer s3cret"}).json()["sessions"]


def test_http_stops_between_chunks(oracle: OracleScan, oracle_server, settings: PtychoPINNServeSettings) -> None:
    parameters = prepare_reconstruct_input(oracle.data, oracle.product)
    settings.server_url.set_value(oracle_server.url)
    settings.server_model.set_value("oracle")
    settings.api_token.set_value("s3cret")
    settings.chunk_size.set_value(10)
    outputs = HttpReconstructor(settings).reconstruct(parameters)
    first = next(outputs)
    [session] = _sessions(oracle_server)  # the scan streams through a live session on the server
    assert session["counts"]["reconstructed"] == 10
    outputs.close()  # what Ptychodus does when the user presses Stop
    assert first.progress == 1
    assert next(outputs, None) is None
    assert _sessions(oracle_server) == []  # Stop closed the session
    status = httpx.get(f"{oracle_server.url}/v1/sessions/{session['session_id']}",
                       headers={"Authorization": "Bearer s3cret"})
    assert status.status_code == 404 and "cancelled" in status.json()["error"]


def test_export_training_data_writes_the_project_contract(oracle: OracleScan, tmp_path: Path,
                                                          settings: PtychoPINNServeSettings) -> None:
    from ptycho_torch.data import RawData

    bad = np.zeros((N, N), bool)
    bad[3, 5] = True
    data = type(oracle.data)(oracle.data.get_indexes(), oracle.data.get_patterns(),
                             oracle.data.get_pixel_geometry(), bad)
    parameters = prepare_reconstruct_input(data, oracle.product)
    OnnxReconstructor(settings).export_training_data(tmp_path / "train_data.npz", parameters)
    scan = RawData.from_file(tmp_path / "train_data.npz")
    assert scan.diff3d.dtype == np.float32 and scan.diff3d.shape == (36, N, N)
    good = ~bad
    np.testing.assert_allclose(scan.diff3d[:, good], np.sqrt(parameters.diffraction_patterns[:, good]), rtol=1e-6)
    assert np.all(np.isfinite(scan.diff3d[:, 3, 5])) and scan.diff3d[:, 3, 5].min() > 0  # inpainted, not zeroed
    geometry = parameters.product.object_.get_geometry()
    x_px = geometry.map_probe_positions_to_object_x_px(parameters.product.probe_positions)
    np.testing.assert_allclose(scan.xcoords, x_px + 0.5)  # patch centre N//2, not (N-1)/2
    assert scan.probeGuess.shape == (2, N, N)
    assert scan.metadata["pixel_size_m"] == pytest.approx(10e-9)


def test_a_product_at_another_pixel_size_than_the_models_is_refused() -> None:
    from ptycho_torch.errors import ConfigError
    from serving.ptychodus.adapter import Scan, check_model_geometry

    scan = Scan(np.ones((4, N, N), np.float32), np.zeros((4, 2)), np.ones((1, N, N), np.complex64), 10e-9)
    check_model_geometry(scan, N=N, gridsize=1, model="m", pixel_size_m=10.05e-9)  # within 1 %
    check_model_geometry(scan, N=N, gridsize=1, model="m", pixel_size_m=None)  # the model does not say
    with pytest.raises(ConfigError, match=r"object pixel size 1e-08 m differs from model m's training pixel size "
                                          r"2e-08 m \(ratio 0.500\)"):
        check_model_geometry(scan, N=N, gridsize=1, model="m", pixel_size_m=20e-9)


def test_refinement_iterations_are_progress_steps_with_the_data_fit_as_losses(
        oracle: OracleScan, oracle_zip: Path, settings: PtychoPINNServeSettings) -> None:
    parameters = prepare_reconstruct_input(oracle.data, oracle.product)
    settings.bundle_path.set_value(oracle_zip)
    settings.refine_iterations.set_value("4")
    reconstructor = OnnxReconstructor(settings)
    assert reconstructor.get_progress_goal() == 5
    outputs = list(reconstructor.reconstruct(parameters))
    assert [o.progress for o in outputs] == [1, 2, 3, 4, 5]
    _check_oracle(outputs[0].product.object_.get_layer(0), oracle)  # the network's object comes first
    losses = [[loss.value for loss in o.product.losses] for o in outputs]
    assert [len(values) for values in losses] == [1, 1, 2, 3, 5]  # the network's, then one per iteration
    assert losses[-1][-1] < 0.5 * losses[-1][0]  # refinement explains the patterns far better (amplitude error)
    refined = outputs[-1].product.object_
    assert refined.get_geometry() == oracle.product.object_.get_geometry()
    assert not np.allclose(refined.get_layer(0), outputs[0].product.object_.get_layer(0))

    steps = reconstructor.reconstruct(parameters)
    assert [next(steps).progress, next(steps).progress] == [1, 2]
    steps.close()  # Stop between iterations
    assert next(steps, None) is None


def test_http_refines_after_the_chunks_and_a_flat_start_skips_the_server(
        oracle: OracleScan, oracle_server, settings: PtychoPINNServeSettings) -> None:
    parameters = prepare_reconstruct_input(oracle.data, oracle.product)
    settings.server_url.set_value(oracle_server.url)
    settings.server_model.set_value("oracle")
    settings.api_token.set_value("s3cret")
    settings.chunk_size.set_value(10)
    settings.refine_iterations.set_value("2")
    reconstructor = HttpReconstructor(settings)
    assert [o.progress for o in reconstructor.reconstruct(parameters)] == [1, 2, 3, 4, 5, 6]
    assert reconstructor.get_progress_goal() == 6
    settings.refine_start.set_value("flat")
    settings.server_url.set_value("http://127.0.0.1:9")  # nothing listens: a flat start never calls the server
    assert [o.progress for o in reconstructor.reconstruct(parameters)] == [1, 2]  # not the last run's chunks
    assert reconstructor.get_progress_goal() == 2


def test_http_leaves_glitch_frames_out_of_the_scale_like_the_pipeline(
        oracle: OracleScan, oracle_zip: Path, oracle_server, settings: PtychoPINNServeSettings) -> None:
    patterns = oracle.data.get_patterns().copy()
    patterns[[3, 17]] *= 400  # two glitch frames, far above 10x the median frame energy
    data = AssembledDiffractionData(oracle.data.get_indexes(), patterns, oracle.data.get_pixel_geometry(),
                                    oracle.data.get_bad_pixels())
    parameters = prepare_reconstruct_input(data, oracle.product)
    settings.bundle_path.set_value(oracle_zip)
    onnx_object = next(OnnxReconstructor(settings).reconstruct(parameters)).product.object_.get_layer(0)
    settings.server_url.set_value(oracle_server.url)
    settings.server_model.set_value("oracle")
    settings.api_token.set_value("s3cret")
    settings.chunk_size.set_value(10)
    http_object = list(HttpReconstructor(settings).reconstruct(parameters))[-1].product.object_.get_layer(0)
    np.testing.assert_allclose(http_object, onnx_object, rtol=1e-5, atol=1e-6)
    clean = np.delete(np.sqrt(patterns.astype(np.float64)), [3, 17], axis=0)
    rows, cols = oracle.covered  # the oracle's amplitude is diffraction * scale: the clean frames' scale
    amplitude = np.abs(onnx_object[rows, cols]) / (np.abs(oracle.phase[rows, cols]) / PHASE_FACTOR)
    np.testing.assert_allclose(np.median(amplitude), input_scale(clean), rtol=1e-4)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("refine_algorithm", "dm", r"`\[PtychoPINNServe\] RefineAlgorithm` must be one of \['default', 'er', 'rpie', 'mpie'\]"),
    ("refine_iterations", "autoo", r"`\[PtychoPINNServe\] RefineIterations` must be a whole number of iterations in "
                                   r"\[0, 1000\] or 'auto' \(until the data fit stops improving\), got 'autoo'$"),
    ("refine_iterations", "1001", r"`\[PtychoPINNServe\]` settings: `refine_iterations` must be at most 1000"),
    ("refine_start", "truth", r"`\[PtychoPINNServe\] RefineStart` must be one of \['network', 'flat'\], got 'truth'"),
    ("scale_policy", "explicit", r"`\[PtychoPINNServe\] ScalePolicy` must be one of \['scan', 'bundle'\], got 'explicit'"),
])
def test_bad_refinement_settings_are_one_line_errors(settings: PtychoPINNServeSettings, name: str, value: str,
                                                     message: str) -> None:
    from ptycho_torch.errors import ConfigError

    settings.refine_iterations.set_value("3")
    getattr(settings, name).set_value(value)
    with pytest.raises(ConfigError, match=message):
        settings.options()


def test_settings_become_the_reconstruct_options_and_a_flat_start_needs_iterations(
        settings: PtychoPINNServeSettings) -> None:
    from ptycho_torch.choices import RefineAlgorithm, RefineStart, ScalePolicy
    from ptycho_torch.errors import ConfigError

    settings.scale_policy.set_value(" Bundle ")
    settings.refine_iterations.set_value("4")
    settings.refine_algorithm.set_value("rpie")
    options = settings.options()
    assert (options.scale_policy, options.refine_algorithm, options.refine_start) == \
        (ScalePolicy.BUNDLE, RefineAlgorithm.RPIE, RefineStart.NETWORK)
    assert options.refinement().iterations == 4
    settings.refine_algorithm.set_value("Default")  # the solver's per-case rule, as with the setting's default
    settings.refine_probe.set_value(True)
    assert settings.options().refine_algorithm is None and settings.options().refinement().algorithm == "rpie"
    settings.refine_probe.set_value(False)
    settings.refine_iterations.set_value("0")
    settings.refine_start.set_value("flat")
    with pytest.raises(ConfigError, match=r"`\[PtychoPINNServe\]` settings: `refine_start` 'flat' needs "
                                          r"`refine_iterations` >= 1"):
        settings.options()


def test_auto_iterations_and_the_probe_and_position_settings_become_the_options(
        settings: PtychoPINNServeSettings) -> None:
    from ptycho_torch.errors import ConfigError
    from ptycho_torch.refinement import AUTO, RefineSettings

    settings.refine_iterations.set_value(" Auto ")
    settings.refine_probe.set_value(True)
    settings.refine_positions.set_value(True)
    options = settings.options()
    assert (options.refine_iterations, options.refine_probe, options.refine_positions) == (AUTO, True, True)
    assert settings.refine_steps() == RefineSettings().max_iterations  # auto: at most the solver's cap
    assert OnnxReconstructor(settings).get_progress_goal() == 1 + RefineSettings().max_iterations
    settings.refine_iterations.set_value("3.0")  # a whole number, as over HTTP and on the CLI
    assert settings.options().refine_iterations == 3
    settings.refine_iterations.set_value("2.5")
    with pytest.raises(ConfigError, match=r"`\[PtychoPINNServe\] RefineIterations` must be a whole number"):
        settings.iterations()
    settings.refine_iterations.set_value("0")
    with pytest.raises(ConfigError, match=r"`\[PtychoPINNServe\]` settings: `refine_probe` needs `refine_iterations` "
                                          r">= 1 or 'auto' .* \(RefineIterations, RefineStart, RefineProbe, "
                                          r"RefinePositions\)$"):
        settings.options()
    assert settings.refine_steps() == 0 and OnnxReconstructor(settings).get_progress_goal() == 1


def test_a_position_correction_moves_the_probe_position_by_pixels_times_the_pixel_size(oracle: OracleScan) -> None:
    from ptychodus.api.probe_positions import ProbePositionSequence

    from serving.ptychodus.adapter import moved_positions

    given = oracle.product.probe_positions
    geometry = oracle.product.object_.get_geometry()
    shift = np.random.default_rng(4).uniform(-2, 2, (len(given), 2))
    moved = moved_positions(given, shift, geometry.pixel_width_m, geometry.pixel_height_m)
    assert isinstance(moved, ProbePositionSequence)
    np.testing.assert_array_equal(moved.get_indexes(), given.get_indexes())  # scan indexes pair the patterns
    for axis, to_px in ((0, geometry.map_probe_positions_to_object_x_px),
                        (1, geometry.map_probe_positions_to_object_y_px)):
        np.testing.assert_allclose(to_px(moved) - to_px(given), shift[:, axis], atol=1e-9)


def test_the_refined_probe_and_positions_reach_ptychodus_product(oracle: OracleScan, engine,
                                                                 settings: PtychoPINNServeSettings) -> None:
    """What Ptychodus gets is what /v1/reconstruct computes for the same scan and options, in its own terms."""
    from ptycho_torch.pipeline import reconstruct
    from serving.ptychodus.adapter import scan_from_input

    parameters = prepare_reconstruct_input(oracle.data, oracle.product)
    for name, value in (("refine_iterations", "12"), ("refine_start", "flat"), ("refine_probe", True),
                        ("refine_positions", True)):  # 12: enough for the positions to move
        getattr(settings, name).set_value(value)
    outputs = list(OnnxReconstructor(settings).reconstruct(parameters))
    assert [o.progress for o in outputs] == list(range(2, 14))  # a flat start skips the network's step
    scan = scan_from_input(parameters)
    expected = reconstruct(engine, scan.amplitudes, scan.positions, probe=scan.probe, options=settings.options())

    product, given = outputs[-1].product, parameters.product
    probes = product.probes.get_array()
    assert probes.shape == given.probes.get_array().shape == (1, 2, N, N) and probes.dtype == np.complex64
    np.testing.assert_allclose(probes[0], expected.probe, rtol=1e-3, atol=1e-4 * np.abs(expected.probe).max())
    assert not np.allclose(probes, given.probes.get_array())
    assert product.probes.get_pixel_geometry() == given.probes.get_pixel_geometry()
    geometry = product.object_.get_geometry()
    back_px = np.column_stack([geometry.map_probe_positions_to_object_x_px(product.probe_positions),
                               geometry.map_probe_positions_to_object_y_px(product.probe_positions)]) + 0.5
    np.testing.assert_allclose(back_px, expected.positions, atol=1e-3)  # in Ptychodus' metres, back to pixels
    assert np.abs(back_px - scan.positions).max() > 0.01  # and they did move
    np.testing.assert_array_equal(product.probe_positions.get_indexes(), given.probe_positions.get_indexes())
    assert all(o.product.probes is not given.probes for o in outputs)  # every iteration shows its own state
