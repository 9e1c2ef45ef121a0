"""Simulation: photon count, physics consistency of the written scan, probes, objects, scans."""

from __future__ import annotations

import numpy as np
import pytest

from ptycho_torch.data import RawData
from ptycho_torch.errors import DataContractError
from ptycho_torch.grouping import extract_patches
from ptycho_torch.simulation import (
    default_probe,
    far_field_intensity,
    load_probe,
    make_object,
    scan_positions,
    simulate,
)

N = 32


@pytest.mark.parametrize(("kind", "nphotons"), [("lines", 1e3), ("grf", 1e6)])
def test_mean_photon_count_matches_request(kind, nphotons):
    raw = simulate(object_kind=kind, N=N, n_positions=200, nphotons=nphotons, seed=1)
    counts = np.sum(raw.diff3d.astype(np.float64) ** 2, axis=(1, 2))
    assert counts.mean() == pytest.approx(nphotons, rel=0.03)
    np.testing.assert_allclose(raw.diff3d.astype(np.float64) ** 2, np.rint(raw.diff3d.astype(np.float64) ** 2),
                               atol=1e-3 * np.sqrt(nphotons))  # sqrt of integer Poisson counts
    assert raw.metadata["nphotons"] == nphotons and raw.metadata["diffraction"] == "sqrt(counts)"


def test_written_probe_and_object_predict_the_counts(tmp_path, data_dir):
    raw = simulate(N=N, n_positions=50, nphotons=1e9, probe=data_dir / "gold_balls_from_pickle.npz", seed=2)
    raw = RawData.from_file(raw.to_file(tmp_path / "sim.npz"))
    expected = far_field_intensity(extract_patches(raw.objectGuess, raw.xcoords, raw.ycoords, N), raw.probeGuess)
    measured = raw.diff3d.astype(np.float64) ** 2
    np.testing.assert_allclose(measured.sum(axis=(1, 2)), expected.sum(axis=(1, 2)), rtol=1e-3)
    bright = expected > 1e4  # Poisson relative noise below 1 %
    np.testing.assert_allclose(measured[bright], expected[bright], rtol=0.05)
    assert expected.max() == pytest.approx(expected[:, N // 2 - 4:N // 2 + 4, N // 2 - 4:N // 2 + 4].max())


def test_simulation_is_seeded():
    first = simulate(N=N, n_positions=20, nphotons=1e4, seed=9)
    again = simulate(N=N, n_positions=20, nphotons=1e4, seed=9)
    other = simulate(N=N, n_positions=20, nphotons=1e4, seed=10)
    np.testing.assert_array_equal(first.diff3d, again.diff3d)
    np.testing.assert_array_equal(first.objectGuess, again.objectGuess)
    assert not np.array_equal(first.xcoords, other.xcoords)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"N": 0}, "`N` must be an even number of pixels in [8, 1024], got 0"),
    ({"N": -4}, "got -4"),
    ({"N": 7}, "got 7"),
    ({"N": 100_000}, "got 100000"),  # a 400,000 px object: minutes of allocation before this check
    ({"N": 64, "object_size": 100_000}, "`object_size` must be at most 8192 px"),
])
def test_impossible_sizes_are_refused_before_any_work(kwargs, message):
    with pytest.raises(DataContractError) as refused:
        simulate(n_positions=4, **kwargs)
    assert message in str(refused.value)


def test_file_probe_keeps_modes_and_centre(data_dir):
    path = data_dir / "gold_balls_from_pickle.npz"
    with np.load(path) as npz:
        original = npz["probe"]
    cropped, padded = load_probe(path, 64), load_probe(path, 128)
    assert cropped.shape == (3, 64, 64) and padded.shape == (3, 128, 128)
    assert np.sum(np.abs(padded) ** 2) == pytest.approx(np.sum(np.abs(original) ** 2), rel=1e-6)
    assert np.sum(np.abs(cropped) ** 2) > 0.9 * np.sum(np.abs(original) ** 2)
    intensity = (np.abs(cropped) ** 2).sum(axis=0)
    rows, cols = np.indices(intensity.shape)
    centroid = [(intensity * rows).sum() / intensity.sum(), (intensity * cols).sum() / intensity.sum()]
    np.testing.assert_allclose(centroid, [32, 32], atol=1.5)


def test_default_probe_is_a_centred_disk():
    probe = default_probe(64)
    r = np.hypot(*np.meshgrid(np.arange(64) - 32, np.arange(64) - 32, indexing="ij"))
    assert probe.shape == (64, 64) and probe.dtype == np.complex64
    assert np.abs(probe).max() == pytest.approx(1.0)
    assert np.abs(probe[r > 64 / 4 + 4]).max() < 1e-3 and np.abs(probe[r < 64 / 4 - 3]).min() > 0.9


@pytest.mark.parametrize("kind", ["lines", "grf"])
def test_objects_have_amplitude_and_phase_texture(kind):
    obj = make_object(kind, 96, np.random.default_rng(0))
    amplitude, phase = np.abs(obj), np.angle(obj)
    assert obj.shape == (96, 96) and obj.dtype == np.complex64
    assert amplitude.min() == pytest.approx(0.5, abs=1e-6) and amplitude.max() == pytest.approx(1.0, abs=1e-6)
    assert amplitude.std() > 0.05 and phase.std() > 0.1
    with pytest.raises(DataContractError, match="`object` must be one of \\['grf', 'lines'\\]"):
        make_object("dots", 96, np.random.default_rng(0))


def test_scan_positions_stay_inside_the_object():
    rng = np.random.default_rng(0)
    x, y = scan_positions(500, 128, N, "random", rng)
    assert x.min() >= N / 2 and max(x.max(), y.max()) <= 128 - N / 2 - 1
    rx, ry = scan_positions(10, 128, N, "raster", rng)
    assert len(rx) == 10 and len(np.unique(ry)) == 3
    np.testing.assert_allclose(np.diff(np.unique(rx)), (128 - N - 1) / 3)
    with pytest.raises(DataContractError, match="`scan` must be 'random' or 'raster'"):
        scan_positions(10, 128, N, "spiral", rng)
