"""The NPZ data contract: round trip, every bad-input message, legacy layouts, counts, real scan."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ptycho_torch.data import RawData, fourier_resample_probe, load_scan, load_siemens_star, spatial_split
from ptycho_torch.errors import DataContractError
from ptycho_torch.normalization import input_scale

S, N = 12, 32


def contract_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "diffraction": rng.uniform(0, 3, (S, N, N)).astype(np.float32),
        "xcoords": rng.uniform(20, 60, S),
        "ycoords": rng.uniform(20, 60, S),
        "probeGuess": (rng.normal(size=(N, N)) + 1j * rng.normal(size=(N, N))).astype(np.complex64),
        "objectGuess": np.ones((96, 96), np.complex64),
        "scan_index": np.arange(S) % 2,
    }


def save(tmp_path, arrays, name="scan.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_round_trip_keeps_every_array_and_metadata(tmp_path):
    arrays = contract_arrays()
    raw = RawData.from_arrays({**arrays, "Y": np.full((S, N, N), 1 + 1j, np.complex64)})
    raw.metadata["nphotons"] = 1e6
    back = RawData.from_file(raw.to_file(tmp_path / "sub" / "out.npz"))
    np.testing.assert_array_equal(back.diff3d, arrays["diffraction"])
    np.testing.assert_array_equal(back.xcoords, arrays["xcoords"])
    np.testing.assert_array_equal(back.ycoords_start, arrays["ycoords"])  # start defaults to positions
    np.testing.assert_array_equal(back.probeGuess, arrays["probeGuess"])
    np.testing.assert_array_equal(back.scan_index, arrays["scan_index"])
    np.testing.assert_array_equal(back.objectGuess, arrays["objectGuess"])
    np.testing.assert_array_equal(back.Y, raw.Y)
    assert back.metadata == {"nphotons": 1e6}
    assert (back.diff3d.dtype, back.xcoords.dtype, back.probeGuess.dtype, back.scan_index.dtype) == (
        np.float32, np.float64, np.complex64, np.int64)


def test_diff3d_key_legacy_layout_and_trailing_channel(tmp_path, caplog):
    arrays = contract_arrays()
    reference = arrays.pop("diffraction")
    legacy = {**arrays, "diff3d": reference.transpose(1, 2, 0), "probeGuess": arrays["probeGuess"][..., None]}
    with caplog.at_level(logging.INFO, logger="ptycho_torch.data"):
        raw = RawData.from_file(save(tmp_path, legacy))
    assert "legacy (N, N, S) layout" in caplog.text
    np.testing.assert_array_equal(raw.diff3d, reference)
    assert raw.probeGuess.shape == (N, N)
    channel = RawData.from_file(save(tmp_path, {**arrays, "diff3d": reference[..., None]}, "c.npz"))
    np.testing.assert_array_equal(channel.diff3d, reference)


def test_integer_counts_become_amplitudes_and_say_so(tmp_path, caplog):
    arrays = contract_arrays()
    counts = np.full((S, N, N), 65535, np.uint16)  # squaring in uint16 would overflow
    with caplog.at_level(logging.INFO, logger="ptycho_torch.data"):
        raw = RawData.from_file(save(tmp_path, {**arrays, "diffraction": counts}))
    assert "converting uint16 counts" in caplog.text
    np.testing.assert_allclose(raw.diff3d, np.sqrt(65535.0), rtol=1e-6)
    floats = RawData.from_file(save(tmp_path, {**arrays, "diffraction": np.full((S, N, N), 4.0, np.float32)}, "f.npz"))
    asked = RawData.from_file(tmp_path / "f.npz", counts=True)
    assert floats.diff3d.max() == 4.0 and asked.diff3d.max() == 2.0


def bad_cases():
    a = contract_arrays()
    nan = a["diffraction"].copy()
    nan[3, 4, 5] = np.nan
    inf_x = a["xcoords"].copy()
    inf_x[0] = np.inf
    return {
        "missing diffraction": ({k: v for k, v in a.items() if k != "diffraction"}, r"`diffraction` is missing.*\(S, N, N\) float32"),
        "missing probe": ({k: v for k, v in a.items() if k != "probeGuess"}, r"`probeGuess` is missing.*\(N, N\) complex64"),
        "missing ycoords": ({k: v for k, v in a.items() if k != "ycoords"}, r"`ycoords` is missing.*\(S,\) float64"),
        "nan pattern": ({**a, "diffraction": nan}, r"`diffraction` must be finite amplitudes, got 1 NaN/inf"),
        "inf position": ({**a, "xcoords": inf_x}, r"`xcoords` must be finite \(S,\) float64"),
        "negative": ({**a, "diffraction": a["diffraction"] - 1}, r"`diffraction` must be non-negative amplitudes, got minimum"),
        "count mismatch": ({**a, "ycoords": a["ycoords"][:-1]}, r"`ycoords` must be \(S,\) float64 with S = 12 .*got shape \(11,\)"),
        "pattern count": ({**a, "diffraction": a["diffraction"][:-2]}, r"`diffraction` must be \(S, N, N\) with S = 12"),
        "probe size": ({**a, "probeGuess": a["probeGuess"][:16, :16]}, r"`probeGuess` must be \(N, N\) = \(32, 32\) .*got shape \(16, 16\)"),
        "non-square": ({**a, "diffraction": a["diffraction"][:, :, :16]}, r"`diffraction` must be \(S, N, N\) float32 with square"),
        "Y count": ({**a, "Y": np.ones((S - 1, N, N), np.complex64)}, r"`Y` must be \(S, N, N\) = \(12, 32, 32\)"),
    }


@pytest.mark.parametrize("case", sorted(bad_cases()))
def test_each_violation_names_key_and_expected_layout(tmp_path, case):
    arrays, message = bad_cases()[case]
    with pytest.raises(DataContractError, match=message) as info:
        RawData.from_file(save(tmp_path, arrays))
    assert isinstance(info.value, ValueError)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(DataContractError, match="existing .npz"):
        RawData.from_file(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataContractError, match="readable NPZ"):
        RawData.from_file(tmp_path / "junk.npz")


def test_input_scale_gives_mean_energy_quarter_n_squared():
    x = np.random.default_rng(1).uniform(0, 5, (7, N, N)).astype(np.float32)
    scale = input_scale(x)
    assert np.mean(np.sum((x * scale) ** 2, axis=(1, 2))) == pytest.approx((N / 2) ** 2, rel=1e-6)
    assert input_scale(x.reshape(7, 1, N, N)) == pytest.approx(scale)
    with pytest.raises(DataContractError, match="positive finite mean energy"):
        input_scale(np.zeros((2, N, N)))


@pytest.fixture(scope="module")
def star(data_dir):
    return load_siemens_star(data_dir / "siemens-star-small.npz.bz2")


def test_real_scan_conventions(star, data_dir):
    assert star.diff3d.shape == (516, 128, 128) and star.probeGuess.shape == (128, 128)
    # corners shifted to start at 0, then +N/2 to the centre; extent from the README (~-164..168)
    assert star.xcoords.min() == pytest.approx(64.0) and star.ycoords.min() == pytest.approx(64.0)
    assert 328.5 < star.xcoords.max() - star.xcoords.min() < 329.5  # columns: -164.39 .. 164.50
    assert 331.5 < star.ycoords.max() - star.ycoords.min() < 332.5  # rows: -164.34 .. 167.58
    # the direct beam is at the centre after fftshift; it is a ring (radius ~16 px) around the zone
    # plate's central stop, so the strongest pixel lies on that ring, well inside the central quarter
    mean = np.mean(star.diff3d.astype(np.float64) ** 2, axis=0)
    peak = np.array(np.unravel_index(mean.argmax(), mean.shape))
    assert np.hypot(*(peak - 64)) < 128 / 4
    assert mean[32:96, 32:96].sum() > 0.9 * mean.sum()
    assert mean.sum() == pytest.approx(4.61e5, rel=0.01)  # counts per frame, README
    assert load_scan(data_dir / "siemens-star-small.npz.bz2", n=64).N == 64


def test_detector_crop_rescales_positions_and_fourier_crops_probe(star, data_dir):
    cropped = load_siemens_star(data_dir / "siemens-star-small.npz.bz2", n=64)
    np.testing.assert_allclose(cropped.xcoords - 32, (star.xcoords - 64) / 2)
    np.testing.assert_allclose(cropped.diff3d, star.diff3d[:, 32:96, 32:96])
    np.testing.assert_allclose(cropped.probeGuess, fourier_resample_probe(star.probeGuess, 64), atol=1e-6)


def test_fourier_cropped_probe_keeps_measured_counts():
    """|fft2(P_n * O_n)|^2 equals the central n x n of |fft2(P * O)|^2 for band-limited P, O."""
    size, n = 128, 64
    rng = np.random.default_rng(3)

    def band_limited(band):
        spectrum = np.zeros((size, size), complex)
        block = rng.normal(size=(2, 2 * band + 1, 2 * band + 1))
        spectrum[64 - band:65 + band, 64 - band:65 + band] = block[0] + 1j * block[1]
        return np.fft.ifft2(np.fft.ifftshift(spectrum))

    probe, texture = band_limited(15), band_limited(15)
    obj = 1 + 0.3 * texture / np.abs(texture).max()
    counts = np.abs(np.fft.fftshift(np.fft.fft2(probe * obj, norm="ortho"))) ** 2
    small = fourier_resample_probe(probe, n)
    predicted = np.abs(np.fft.fftshift(np.fft.fft2(small * obj[::2, ::2], norm="ortho"))) ** 2
    np.testing.assert_allclose(predicted, counts[32:96, 32:96], atol=1e-6 * counts.max())
    assert np.sum(np.abs(small) ** 2) == pytest.approx(np.sum(np.abs(probe) ** 2), rel=1e-5)


def test_spatial_split_top_half_trains(star):
    train, test = spatial_split(star, axis="y", fraction=0.5)
    assert (len(train), len(test)) == (258, 258)
    assert train.ycoords.max() < test.ycoords.min()
    assert train.probeGuess is star.probeGuess
    left, right = spatial_split(star, axis="x", fraction=0.25)
    assert len(left) == 129 and left.xcoords.max() <= right.xcoords.min()
    with pytest.raises(DataContractError, match="`axis` must be 'x' or 'y'"):
        spatial_split(star, axis="z")


def test_load_scan_returns_a_contract_npz_at_the_asked_n_and_refuses_another(tmp_path):
    path = save(tmp_path, contract_arrays())
    np.testing.assert_array_equal(load_scan(path, n=N).diff3d, load_scan(path).diff3d)
    with pytest.raises(DataContractError, match=rf"`n` must be the stored pattern size {N} for the contract NPZ"):
        load_scan(path, n=2 * N)
