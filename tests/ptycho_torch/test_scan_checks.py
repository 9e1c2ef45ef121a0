"""The scan-validation layer every entry point shares: units, bad pixels, plausibility, scale range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ptycho_torch.data import load_scan
from ptycho_torch.errors import DataContractError, InvalidInput
from ptycho_torch.normalization import input_scale
from ptycho_torch.scan_checks import (
    ImplausibleScan,
    check_network_input,
    inpaint,
    prepare_scan,
    to_amplitudes,
)

CASES = Path(__file__).resolve().parents[1] / "data" / "cases"
N = 32


def _scan(S: int = 36, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth, centred patterns (a Gaussian bright field plus speckle) on a 6 x 6 raster, 3 px steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:N, :N] - N // 2
    bright = np.exp(-(xx**2 + yy**2) / 40.0)
    patterns = (50 * bright * (1 + 0.2 * rng.random((S, N, N)))).astype(np.float32)
    side = int(np.sqrt(S))
    positions = np.stack(np.meshgrid(np.arange(side) * 3.0, np.arange(side) * 3.0), -1).reshape(-1, 2)
    return patterns, positions


def test_integer_patterns_are_counts_unless_told_otherwise() -> None:
    counts = np.array([[[0, 4], [9, 16]]], np.uint16)
    assert to_amplitudes(counts, None)[1] == "counts"
    np.testing.assert_array_equal(to_amplitudes(counts, None)[0], [[[0, 2], [3, 4]]])
    np.testing.assert_array_equal(to_amplitudes(counts, "amplitude")[0], counts)
    np.testing.assert_array_equal(to_amplitudes(counts.astype(np.float32), None)[0], counts)
    np.testing.assert_array_equal(to_amplitudes(counts.astype(np.float32), "counts")[0], [[[0, 2], [3, 4]]])


def test_a_clean_scan_passes_unchanged_with_an_empty_report() -> None:
    patterns, positions = _scan()
    scan = prepare_scan(patterns, positions)
    assert scan.amplitudes is patterns  # float32 amplitudes: no copy
    assert scan.report.warnings == [] and scan.report.masked_pixels == 0
    assert scan.report.centre_energy_fraction > 0.9
    assert scan.report.position_span == (15.0, 15.0) and scan.report.scan_step == pytest.approx(2.5)
    np.testing.assert_array_equal(scan.scale_frames, np.arange(36))


def test_positions_in_metres_are_refused_naming_the_unit() -> None:
    patterns, positions = _scan()
    with pytest.raises(ImplausibleScan, match=r"span 1.5e-07 x 1.5e-07 object pixels for 36 patterns: .*metres"):
        prepare_scan(patterns, positions * 1e-8)


def test_fft_order_patterns_are_refused_naming_fftshift() -> None:
    patterns, positions = _scan()
    with pytest.raises(ImplausibleScan, match=r"unshifted .*numpy.fft.fftshift"):
        prepare_scan(np.fft.ifftshift(patterns, axes=(-2, -1)), positions)


def test_the_unshifted_case_file_is_refused_by_the_file_loader() -> None:
    with pytest.raises(ImplausibleScan, match=r"central N/2 box holds 0% .* corners 100%.*fftshift"):
        load_scan(CASES / "unshifted_patterns.npz")
    shifted = np.load(CASES / "unshifted_patterns.npz")
    report = prepare_scan(np.fft.fftshift(shifted["diffraction"], axes=(-2, -1)),
                          np.column_stack([shifted["xcoords"], shifted["ycoords"]])).report
    assert report.warnings == [] and report.centre_energy_fraction > 0.99


def test_the_real_scan_loads_with_a_report_and_no_masked_pixels(data_dir: Path) -> None:
    raw = load_scan(data_dir / "siemens-star-small.npz.bz2", n=64)
    report = raw.metadata["scan_report"]
    assert report["masked_pixels"] == 0 and report["hot_pixels"] == [] and report["bright_frames"] == []
    assert report["centre_energy_fraction"] == pytest.approx(0.333, abs=2e-3)  # 256 evenly spaced frames of 516
    assert report["warnings"] == []


def test_a_hot_pixel_is_masked_and_inpainted_from_its_neighbours() -> None:
    patterns, positions = _scan()
    hot = patterns.copy()
    hot[:, 3, 5] = 5000.0
    scan = prepare_scan(hot, positions)
    assert scan.report.hot_pixels == [[3, 5]] and scan.report.masked_pixels == 1
    assert "1 hot pixels" in scan.report.warnings[0]
    neighbours = patterns[:, 2:5, 4:7].sum(axis=(1, 2)) - patterns[:, 3, 5]
    np.testing.assert_allclose(scan.amplitudes[:, 3, 5], neighbours / 8, rtol=1e-6)
    clean = np.delete(scan.amplitudes.reshape(36, -1), 3 * N + 5, axis=1)
    np.testing.assert_array_equal(clean, np.delete(patterns.reshape(36, -1), 3 * N + 5, axis=1))
    assert hot[0, 3, 5] == 5000.0  # the caller's array is not modified


def test_photon_noise_in_the_dark_wings_is_not_taken_for_hot_pixels(data_dir: Path) -> None:
    """At 1e6 photons the gold-ball patterns' outer pixels hold a photon or less: their medians over
    frames jump between 0 and 1, which a median-to-median ratio flagged as 11 hot pixels."""
    from ptycho_torch.simulation import load_probe, simulate_scan

    gold = data_dir / "gold_balls_from_pickle.npz"
    with np.load(gold) as npz:
        obj = npz["obj"][100:220, 100:220]
    centres = np.arange(32.0, 88.0, 4.0)
    x, y = (v.ravel() for v in np.meshgrid(centres, centres))
    counts = simulate_scan(obj, load_probe(gold, 64), x, y, nphotons=1e6, seed=0).diff3d.astype(np.float64) ** 2
    assert (np.median(counts, axis=0) <= 1).mean() > 0.25  # the dark wings this is about
    scan = prepare_scan(np.round(counts).astype(np.uint32), np.column_stack([x, y]))
    assert scan.report.hot_pixels == [] and scan.report.masked_pixels == 0
    hot = np.round(counts).astype(np.uint32)
    hot[:, 2, 60] = 400  # a real one in the same dark wing is still found
    assert prepare_scan(hot, np.column_stack([x, y])).report.hot_pixels == [[2, 60]]


def test_sentinel_values_of_the_dtype_maximum_are_masked_and_do_not_move_the_scale() -> None:
    patterns, positions = _scan()
    counts = np.round(patterns**2).astype(np.uint16)
    gapped = counts.copy()
    gapped[:, :, 20] = np.iinfo(np.uint16).max  # a detector gap column
    scan = prepare_scan(gapped, positions)
    assert scan.report.units == "counts" and scan.report.sentinel_values == 36 * N
    assert scan.report.masked_pixels == N and "sentinel 65535" in scan.report.warnings[0]
    assert np.isfinite(scan.amplitudes).all() and scan.amplitudes.max() < 100
    reference = prepare_scan(counts, positions).amplitudes
    assert input_scale(scan.amplitudes) == pytest.approx(input_scale(reference), rel=0.01)
    assert input_scale(np.sqrt(gapped.astype(np.float64))) < 0.5 * input_scale(reference)  # what it did before


def test_a_caller_mask_is_applied_and_reported() -> None:
    patterns, positions = _scan()
    mask = np.zeros((N, N), bool)
    mask[10:12, 0:3] = True
    scan = prepare_scan(patterns, positions, mask=mask)
    assert scan.report.masked_pixels == 6
    assert not np.array_equal(scan.amplitudes[:, 10:12, 0:3], patterns[:, 10:12, 0:3])
    np.testing.assert_array_equal(scan.amplitudes[:, 12:], patterns[:, 12:])
    with pytest.raises(InvalidInput, match=r"`mask` must be a \(32, 32\) bool"):  # a shape: 400 over HTTP
        prepare_scan(patterns, positions, mask=np.zeros((4, 4), bool))


def test_an_inverted_mask_is_refused_not_inpainted_into_a_blank_scan() -> None:
    """True = good in the caller's convention: every pixel was inpainted, and the error said the
    patterns were all zero."""
    patterns, positions = _scan()
    good = np.ones((N, N), bool)
    good[10:12, 0:3] = False
    with pytest.raises(DataContractError, match=r"`mask` marks 99% of the 32x32 pixels bad .* send its inverse"):
        prepare_scan(patterns, positions, mask=good)
    half = np.zeros((N, N), bool)
    half[: N // 2] = True  # exactly the limit: still inpainted
    assert prepare_scan(patterns, positions, mask=half).report.masked_pixels == N * N // 2


def test_a_frame_far_brighter_than_the_rest_is_left_out_of_the_scale() -> None:
    patterns, positions = _scan()
    flash = patterns.copy()
    flash[7] *= 30
    scan = prepare_scan(flash, positions)
    assert scan.report.bright_frames == [7] and "left out of the scan scale" in scan.report.warnings[0]
    assert 7 not in scan.scale_frames
    assert input_scale(scan.amplitudes[scan.scale_frames]) == pytest.approx(
        input_scale(np.delete(patterns, 7, axis=0)))


def test_whole_number_floats_get_a_units_warning() -> None:
    patterns, positions = _scan()
    report = prepare_scan(np.round(patterns**2), positions).report
    assert report.units == "amplitude" and "units='counts'" in report.warnings[0]
    assert prepare_scan(np.round(patterns**2), positions, units="amplitude").report.warnings == []


def test_inpaint_fills_a_region_from_its_border_inwards() -> None:
    image = np.full((1, 6, 6), 2.0, np.float32)
    bad = np.zeros((6, 6), bool)
    bad[1:5, 1:5] = True
    image[0][bad] = 1e9
    inpaint(image, bad)
    np.testing.assert_allclose(image, 2.0)


@pytest.mark.parametrize("scale, message", [
    (0.0, "positive and finite, got \\[0.0\\]"),
    (-1.0, "positive and finite, got \\[-1.0\\]"),
    (float("inf"), "positive and finite"),
    (3e38, r"must be in \[1e-30, 1e\+30\]"),
    (1e-39, r"must be in \[1e-30, 1e\+30\]"),
])
def test_a_scale_out_of_range_is_refused(scale: float, message: str) -> None:
    with pytest.raises(DataContractError, match=message):
        check_network_input(np.array([scale]), peak=10.0)


def test_a_scale_that_overflows_the_network_input_is_refused() -> None:
    check_network_input(np.array([1e10]), peak=1e4)
    with pytest.raises(DataContractError, match=r"float32 would overflow"):
        check_network_input(np.array([1e20]), peak=1e4)


def _masks(N: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    band, edges, block = (np.zeros((N, N), bool) for _ in range(3))
    band[20:24] = True
    edges[0], edges[:, -1] = True, True
    edges[30:36, 30:36] = True
    block[10:40, 10:40] = True
    scattered = np.zeros((N, N), bool)
    scattered[[3, 40, 63], [5, 60, 0]] = True
    return {"scattered": scattered, "band": band, "random 5 %": rng.random((N, N)) < 0.05,
            "random 40 %": rng.random((N, N)) < 0.4, "edges and a block": edges, "30x30 block": block}


@pytest.mark.parametrize("name", list(_masks(64)))
def test_one_mask_for_every_frame_is_inpainted_exactly_as_the_whole_frame_rounds(name: str) -> None:
    """An (N, N) mask fills only the bad pixels (the rounds worked out once on the mask); the same mask
    broadcast to (S, N, N) takes the whole-frame rounds: the two agree bit for bit."""
    mask = _masks(64)[name]
    frames = np.random.default_rng(4).gamma(2.0, 3.0, (7, 64, 64)).astype(np.float32)
    fast, whole = frames.copy(), frames.copy()
    inpaint(fast, mask)
    inpaint(whole, np.broadcast_to(mask, frames.shape))
    np.testing.assert_array_equal(fast.view(np.uint32), whole.view(np.uint32))
    np.testing.assert_array_equal(fast[:, ~mask], frames[:, ~mask])  # good pixels untouched
    assert not np.array_equal(fast[:, mask], frames[:, mask])
