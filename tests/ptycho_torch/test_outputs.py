"""The reconstruction product: NPZ, CXI/HDF5, TIFF and PNG files hold the same object and metadata."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from ptycho_torch.errors import DataContractError
from ptycho_torch.outputs import CXI_VERSION, ProductInfo, save_outputs, scale_bar

PIXEL = 8e-9


@pytest.fixture
def product(tmp_path: Path) -> tuple[dict[str, Path], dict]:
    rng = np.random.default_rng(0)
    amplitude = rng.uniform(0.2, 1.0, (48, 80)).astype(np.float32)
    phase = rng.uniform(-np.pi, np.pi, (48, 80)).astype(np.float32)
    coverage = rng.uniform(0, 2, (48, 80)).astype(np.float32)
    info = ProductInfo(pixel_size_m=PIXEL, probe=(rng.normal(size=(2, 16, 16)) + 0j).astype(np.complex64),
                       positions=rng.uniform(8, 40, (30, 2)), model="ptychopinn", model_version="3",
                       source="scan.npz", data_fit={"nll_median": 1.25, "outliers": [4, 17]},
                       extra={"scale": 0.5})
    paths = save_outputs(amplitude, phase, {"coverage": coverage, "origin": (7.5, -2.0)}, tmp_path / "out", info=info)
    return paths, {"amplitude": amplitude, "phase": phase, "coverage": coverage, "info": info}


def test_cxi_holds_object_probe_positions_pixel_size_and_model(product) -> None:
    paths, want = product
    info = want["info"]
    with h5py.File(paths["cxi"]) as f:
        assert f["cxi_version"][()] == CXI_VERSION
        image = f["entry_1/image_1"]
        np.testing.assert_allclose(np.abs(image["data"][()]), want["amplitude"], rtol=1e-6)
        np.testing.assert_allclose(np.angle(image["data"][()]), want["phase"], atol=1e-5)
        assert image["data_type"][()] == b"object" and image["data_space"][()] == b"real"
        assert image["x_pixel_size"][()] == image["y_pixel_size"][()] == PIXEL
        np.testing.assert_array_equal(image["coverage"][()], want["coverage"])
        np.testing.assert_array_equal(image["origin"][()], [7.5, -2.0])
        np.testing.assert_array_equal(image["positions_px"][()], info.positions)
        translation = f["entry_1/sample_1/geometry_1/translation"][()]
        np.testing.assert_allclose(translation[:, :2], info.positions * PIXEL)
        assert np.all(translation[:, 2] == 0)
        np.testing.assert_array_equal(f["entry_1/image_2/data"][()], info.probe)
        assert f["entry_1/data_1/data"].shape == (48, 80)  # the soft link CXI viewers plot
        process = f["entry_1/process_1"]
        assert process["model"][()] == b"ptychopinn" and process["model_version"][()] == b"3"
        assert process["source"][()] == b"scan.npz" and process["scale"][()] == 0.5
        assert process["data_fit/nll_median"][()] == 1.25
        np.testing.assert_array_equal(process["data_fit/outliers"][()], [4, 17])
        assert f["entry_1/program_name"][()].decode().startswith("ptychopinn-serve ")


def test_tiff_and_npz_hold_the_same_images_with_the_calibration(product) -> None:
    paths, want = product
    for kind in ("amplitude", "phase"):
        with tifffile.TiffFile(paths[f"{kind}_tif"]) as tif:
            np.testing.assert_array_equal(tif.asarray(), want[kind])
            assert tif.imagej_metadata["unit"] == "um"
            numerator, denominator = tif.pages[0].tags["XResolution"].value
            assert numerator / denominator == pytest.approx(1e-6 / PIXEL)  # 125 pixels per µm
    with np.load(paths["npz"]) as npz:
        np.testing.assert_array_equal(npz["amplitude"], want["amplitude"])
        np.testing.assert_array_equal(npz["coverage"], want["coverage"])
        assert npz["pixel_size_m"] == PIXEL
    for kind in ("amplitude_png", "phase_png"):
        assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_npz_holds_the_probe_and_positions_and_the_cxi_says_whether_they_were_refined(
        product, tmp_path: Path) -> None:
    paths, want = product
    info = want["info"]
    with np.load(paths["npz"]) as npz:
        np.testing.assert_array_equal(npz["probe"], info.probe)
        np.testing.assert_array_equal(npz["positions"], info.positions)
    with h5py.File(paths["cxi"]) as f:  # no refinement: the scan's own probe and positions
        assert not f["entry_1/image_2/data"].attrs["refined"] and not f["entry_1/image_1/positions_px"].attrs["refined"]
        assert "refinement" not in f["entry_1/process_1"]
    refinement = {"iterations": 40, "stop_reason": "converged", "stopped": "the data fit stopped improving",
                  "refine_probe": True, "refine_positions": False, "warnings": [],
                  "position_correction_px": {"rms": 0.5, "max": 1.5}}
    refined = dataclasses.replace(info, probe=info.probe[0], refinement=refinement)
    paths = save_outputs(want["amplitude"], want["phase"], None, tmp_path / "refined", info=refined)
    with h5py.File(paths["cxi"]) as f:
        assert f["entry_1/image_2/data"].shape == (1, 16, 16) and f["entry_1/image_2/data"].attrs["refined"]
        assert not f["entry_1/image_1/positions_px"].attrs["refined"]
        written = f["entry_1/process_1/refinement"]
        assert written["iterations"][()] == 40 and json.loads(written["stop_reason"][()]) == "converged"
        assert json.loads(written["position_correction_px"][()]) == {"rms": 0.5, "max": 1.5}
    with np.load(paths["npz"]) as npz:
        assert npz["probe"].shape == (1, 16, 16) and npz["probe"].dtype == np.complex64


def test_without_a_pixel_size_the_product_says_nothing_physical(tmp_path: Path) -> None:
    paths = save_outputs(np.ones((20, 30)), np.zeros((20, 30)), None, tmp_path, info=ProductInfo(positions=np.ones((3, 2))))
    with h5py.File(paths["cxi"]) as f:
        assert "x_pixel_size" not in f["entry_1/image_1"] and "sample_1" not in f["entry_1"]
        assert "image_2" not in f["entry_1"]
    with np.load(paths["npz"]) as npz:
        assert "pixel_size_m" not in npz and "coverage" not in npz


@pytest.mark.parametrize(("width", "pixel", "want"), [
    (200, 8e-9, (25.0, "200 nm")),      # 1.6 µm wide: a fifth is 320 nm -> 200 nm = 25 px
    (1000, 1e-6, (200.0, "200 µm")),
    (640, 2.5e-8, (80.0, "2 µm")),
    (200, None, (20.0, "20 px")),       # unknown pixel size: the bar is in pixels
])
def test_scale_bar_is_a_round_length_of_about_a_fifth_of_the_image(width, pixel, want) -> None:
    assert scale_bar(width, pixel) == want


def test_bad_pixel_size_and_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataContractError, match="`pixel_size_m` must be a positive number"):
        save_outputs(np.ones((4, 4)), np.ones((4, 4)), None, tmp_path, info=ProductInfo(pixel_size_m=-1.0))
    with pytest.raises(DataContractError, match="matching 2-D images"):
        save_outputs(np.ones((4, 4)), np.ones((4, 5)), None, tmp_path)


@pytest.mark.parametrize("requested", ["auto", 40])
def test_the_cxi_keeps_the_iterations_asked_for_beside_those_done(tmp_path: Path, requested) -> None:
    """`ptychopinn reconstruct` records both: 'auto' (or a number) asked for, and the count the refinement ran."""
    info = ProductInfo(extra={"refine_iterations": 17, "refine_iterations_requested": requested})
    paths = save_outputs(np.ones((8, 8), np.float32), np.zeros((8, 8), np.float32), None, tmp_path / "out", info=info)
    with h5py.File(paths["cxi"]) as f:
        process = f["entry_1/process_1"]
        assert process["refine_iterations"][()] == 17
        stored = process["refine_iterations_requested"][()]
        assert (stored.decode() if isinstance(stored, bytes) else int(stored)) == requested
