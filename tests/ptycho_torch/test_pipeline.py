"""reconstruct(): scale policies, counts, grouping, stitching, validation — checked against the oracle."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import PHASE_FACTOR, TRAINING_SCALE, oracle_outputs

from ptycho_torch.errors import InvalidInput, InvalidValues
from ptycho_torch.group_merge import merge_groups
from ptycho_torch.grouping import group_indices, relative_offsets
from ptycho_torch.normalization import input_scale
from ptycho_torch.pipeline import reconstruct, reconstruct_steps
from ptycho_torch.plan import ReconstructOptions
from ptycho_torch.simulation import default_probe, make_object, simulate_scan
from ptycho_torch.stitching import stitch_patches
from serving.batching import DynamicBatcher
from serving.engine import Engine

N = 32


def _raster(side: int, step: float = 3.0) -> np.ndarray:
    """Positions [x, y] on a raster with a sub-pixel jitter."""
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * step
    return grid + np.random.default_rng(0).uniform(-0.4, 0.4, grid.shape) + 20.0


@pytest.mark.parametrize(("policy", "expected"), [("scan", 0.5), ("bundle", 0.8 * TRAINING_SCALE)])
def test_constant_patterns_give_the_known_object(engine: Engine, policy: str, expected: float) -> None:
    positions = _raster(5)
    patterns = np.full((len(positions), N, N), 0.8, np.float32)
    result = reconstruct(engine, patterns, positions, options=ReconstructOptions(scale_policy=policy))
    covered = result.coverage > 0
    # scan policy: scale = sqrt((N/2)^2 / (N^2 * 0.8^2)) = 1 / (2 * 0.8), so amplitude = 0.8 * scale = 0.5
    np.testing.assert_allclose(result.amplitude[covered], expected, rtol=1e-5)
    np.testing.assert_allclose(result.phase[covered], PHASE_FACTOR * 0.8, rtol=1e-5)
    assert (result.amplitude[~covered] == 0).all()
    assert result.scale_policy == policy and result.n_patterns == result.n_groups == 25


def test_an_explicit_scale_is_fed_to_the_network_unchanged(engine: Engine) -> None:
    positions = _raster(5)
    patterns = np.full((len(positions), N, N), 0.8, np.float32)
    result = reconstruct(engine, patterns, positions, options=ReconstructOptions(scale=0.3))
    np.testing.assert_allclose(result.amplitude[result.coverage > 0], 0.8 * 0.3, rtol=1e-5)
    assert (result.scale, result.scale_policy) == (pytest.approx(0.3), "explicit")
    assert set(result.timings) == {"validate", "prepare", "scale", "group", "inference", "stitch", "data_fit", "refine",
                                 "total"}


def test_counts_are_converted_to_amplitudes(engine: Engine) -> None:
    positions = _raster(4)
    amplitudes = np.random.default_rng(1).random((16, N, N), np.float32) + 0.1
    from_amplitudes = reconstruct(engine, amplitudes, positions)
    from_counts = reconstruct(engine, amplitudes.astype(np.float64) ** 2, positions,
                              options=ReconstructOptions(units="counts"))
    np.testing.assert_allclose(from_counts.amplitude, from_amplitudes.amplitude, rtol=1e-5, atol=1e-6)
    assert from_counts.scale == pytest.approx(from_amplitudes.scale, rel=1e-6)


def test_result_is_the_stitch_of_the_model_outputs_at_the_scan_positions(engine: Engine) -> None:
    positions = _raster(6)
    patterns = np.random.default_rng(2).random((36, N, N), np.float32)
    batcher = DynamicBatcher(engine)
    try:
        result = reconstruct(batcher, patterns, positions, options=ReconstructOptions(stitch_M=12))
    finally:
        batcher.close()
    scale = input_scale(patterns)
    amplitude, phase = oracle_outputs(patterns[:, None], np.full(36, scale, np.float32))
    expected = stitch_patches((amplitude * np.exp(1j * phase))[:, 0], positions, M=12)
    assert result.origin == expected.origin
    assert result.scale == pytest.approx(scale)
    np.testing.assert_allclose(result.amplitude, expected.amplitude, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.phase, expected.phase, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.coverage, expected.coverage, rtol=1e-6)


def test_gridsize_2_groups_neighbours_and_stitches_every_channel(oracle_bundle_g2) -> None:
    engine = Engine(oracle_bundle_g2, max_batch_size=8, providers=["cpu"])
    positions = _raster(5)
    patterns = np.full((25, N, N), 2.0, np.float32)
    result = reconstruct(engine, patterns, positions)
    covered = result.coverage > 0
    np.testing.assert_allclose(result.amplitude[covered], 0.5, rtol=1e-5)
    assert result.n_groups == 25
    # every group contributes C=4 crops of M=8: the total weight is 25 * 4 * 8 * 8
    assert result.coverage.sum() == pytest.approx(25 * 4 * 8 * 8)
    again = reconstruct(engine, patterns, positions)
    np.testing.assert_array_equal(again.coverage, result.coverage)  # seeded grouping: reproducible


def test_a_grouped_models_patches_are_its_merged_groups(oracle_bundle_g2) -> None:
    """At gridsize 2 the stitched patches are each group's merge (what the training loss saw), not the
    raw channels: the result equals stitching ``merge_groups`` of the oracle's outputs and differs from
    stitching the raw outputs."""
    engine = Engine(oracle_bundle_g2, max_batch_size=8, providers=["cpu"])
    positions = _raster(5)
    patterns = np.random.default_rng(4).random((25, N, N), np.float32) + 0.5
    result = reconstruct(engine, patterns, positions, options=ReconstructOptions(stitch_M=12))
    members = group_indices(positions[:, 0], positions[:, 1], gridsize=2, seed=0)
    scale = np.full(len(members), input_scale(patterns), np.float32)
    amplitude, phase = oracle_outputs(patterns[members], scale)
    raw = (amplitude * np.exp(1j * phase)).astype(np.complex64)
    offsets = relative_offsets(positions[:, 0], positions[:, 1], members)
    at = positions[members.ravel()]
    merged = stitch_patches(merge_groups(raw, offsets).reshape(-1, N, N), at, M=12)
    np.testing.assert_allclose(result.amplitude, merged.amplitude, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.phase, merged.phase, rtol=1e-4, atol=1e-5)
    unmerged = stitch_patches(raw.reshape(-1, N, N), at, M=12)
    assert np.abs(result.amplitude - unmerged.amplitude).max() > 0.05


def test_refined_positions_are_one_per_pattern_in_the_requests_order_at_gridsize_2(oracle_bundle_g2) -> None:
    """The network sees groups of neighbours (B * C patches); the refinement returns the scan's own S
    positions and the probe's modes, in every state, each state its own copy."""
    engine = Engine(oracle_bundle_g2, max_batch_size=8, providers=["cpu"])
    obj = make_object("grf", 64, np.random.default_rng(0))
    centres = np.arange(N / 2, 64 - N / 2 - 1, 4.0)
    x, y = (v.ravel() for v in np.meshgrid(centres, centres))
    raw = simulate_scan(obj, default_probe(N), x, y, nphotons=1e5, seed=1)
    order = np.random.default_rng(2).permutation(len(x))  # any order: row k is pattern k's
    patterns, positions = raw.diff3d[order], raw.positions[order]
    options = ReconstructOptions(refine_iterations=12, refine_probe=True, refine_positions=True)
    states = list(reconstruct_steps(engine, patterns, positions, probe=raw.probeGuess, options=options))
    assert [state.refinement["iterations"] for state in states] == list(range(13))
    assert all(state.positions.shape == (len(x), 2) and state.probe.shape == (1, N, N) for state in states)
    final = states[-1]
    assert 0.01 < np.abs(final.positions - positions).max() < 3  # corrected, not another scan's positions
    assert final.refinement["position_correction_px"]["max"] == pytest.approx(
        float(np.hypot(*(final.positions - positions).T).max()))
    assert final.refinement["stop_reason"] == "iterations" and states[0].refinement["stop_reason"] is None
    assert states[0].probe is not states[-1].probe and states[0].positions is not states[-1].positions
    plain = reconstruct(engine, patterns, positions, probe=raw.probeGuess, options=ReconstructOptions(
        refine_iterations=3))
    assert plain.probe is None and plain.positions is None  # neither was asked for


def test_a_probe_is_compared_with_the_training_probe(engine: Engine) -> None:
    positions = _raster(3)
    patterns = np.ones((9, N, N), np.float32)
    same = reconstruct(engine, patterns, positions, probe=engine.bundle.probe * (2 - 1j))
    assert same.probe_difference == pytest.approx(0.0, abs=1e-6)  # gain and global phase do not count
    other = reconstruct(engine, patterns, positions, probe=np.roll(engine.bundle.probe, 8, axis=-1))
    assert other.probe_difference > 0.5


@pytest.mark.parametrize(("patterns", "positions", "options", "error", "message"), [
    (np.ones((4, 16, 16)), np.zeros((4, 2)), None, InvalidInput,
     r"`patterns` must have shape \(S, 32, 32\) .* got \[4, 16, 16\]; crop the central 32x32"),
    (np.ones((4, N, N), complex), np.zeros((4, 2)), None, InvalidInput, "`patterns` must be real numbers"),
    (np.ones((0, N, N)), np.zeros((0, 2)), None, InvalidInput, "at least one pattern"),
    (np.ones((4, N, N)), np.zeros((3, 2)), None, InvalidInput, r"`positions` must be real numbers of shape \(4, 2\)"),
    (np.where(np.arange(4)[:, None, None] == 2, np.nan, np.ones((4, N, N))), np.zeros((4, 2)), None, InvalidValues,
     r"`patterns` must be finite, got NaN/inf in patterns \[2\]"),
    (-np.ones((4, N, N)), np.zeros((4, 2)), None, InvalidValues, "`patterns` must be non-negative"),
    (np.ones((4, N, N)), np.full((4, 2), np.inf), None, InvalidValues, "`positions` must be finite"),
    (np.zeros((4, N, N)), np.zeros((4, 2)), None, InvalidValues, "all zero"),
    (np.ones((4, N, N)), np.zeros((4, 2)), {"stitch_M": 30}, InvalidInput, r"`stitch_M` must be in \[1, N/2 = 16\]"),
])
def test_bad_scans_are_refused_before_inference(engine: Engine, patterns, positions, options, error, message) -> None:
    with pytest.raises(error, match=message):
        reconstruct(engine, patterns, positions,
                    options=ReconstructOptions.from_mapping(options) if options else None)


def test_options_are_strict() -> None:
    with pytest.raises(InvalidInput, match=r"unknown options \['scales'\]; known options are"):
        ReconstructOptions.from_mapping({"scales": 1})
    with pytest.raises(InvalidInput, match=r"`scale` must be a positive finite number, got nan"):
        ReconstructOptions.from_mapping({"scale": float("nan")})
    with pytest.raises(InvalidInput, match=r"`scale_policy` must be one of \['scan', 'bundle', 'explicit'\], got 'stream'"):
        ReconstructOptions.from_mapping({"scale_policy": "stream"})
    with pytest.raises(InvalidInput, match="`seed` must be a non-negative integer, got 1.5"):
        ReconstructOptions.from_mapping({"seed": 1.5})
