"""``ptychopinn simulate`` and ``ptychopinn inspect`` through the real CLI dispatcher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ptycho_torch.data import RawData, load_scan
from ptycho_torch.scan_checks import ImplausibleScan
from ptychopinn.cli import main


def is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_simulate_then_inspect(tmp_path, capsys):
    out = tmp_path / "sim.npz"
    code = main(["simulate", "--object", "grf", "--n", "32", "--positions", "40", "--nphotons", "1e5",
                 "--scan", "raster", "--seed", "4", "--pixel-size-m", "1.5e-8", "--out", str(out)])
    assert code == 0
    raw = RawData.from_file(out)
    assert raw.metadata["pixel_size_m"] == 1.5e-8
    assert raw.diff3d.shape == (40, 32, 32) and raw.objectGuess.shape == (128, 128)
    assert raw.metadata["object"] == "grf" and raw.metadata["scan"] == "raster" and raw.metadata["seed"] == 4
    assert main(["inspect", str(out), "--png", str(tmp_path / "png" / "sim.png")]) == 0
    text = capsys.readouterr().out
    assert "40 x 32 x 32 float32 amplitudes" in text
    assert "objectGuess            : 128 x 128" in text
    counts = np.sum(raw.diff3d.astype(np.float64) ** 2, axis=(1, 2))
    assert f"counts per pattern     : mean {counts.mean():.4g}" in text
    assert "scan checks: pass (0 warning(s))" in text
    assert is_png(tmp_path / "png" / "sim.png")


def test_inspect_describes_a_scan_that_reconstruct_refuses(capsys):
    unshifted = Path(__file__).parents[1] / "data" / "cases" / "unshifted_patterns.npz"
    assert main(["inspect", str(unshifted)]) == 0
    text = capsys.readouterr().out
    assert "120 x 64 x 64 float32 amplitudes" in text
    assert "scan checks: REFUSED by reconstruct/train" in text
    assert "refused: `patterns`: the central N/2 box holds 0% of the diffraction energy" in text
    with pytest.raises(ImplausibleScan, match=r"numpy.fft.fftshift\(patterns"):
        load_scan(unshifted)


def test_inspect_real_scan_with_detector_crop(tmp_path, capsys, data_dir):
    png = tmp_path / "star.png"
    assert main(["inspect", str(data_dir / "siemens-star-small.npz.bz2"), "--n", "64", "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert "516 x 64 x 64 float32 amplitudes" in text
    assert "x (column) range       : 32.00 .. 196.45 px" in text  # (corner - min) * 64/128 + 32
    assert "nearest-neighbour step : median 4.52 px" in text  # 9.04 px at full size, halved
    assert "1 mode(s) x 64 x 64" in text
    assert is_png(png)


@pytest.mark.parametrize("target", ["absent.npz", "folder"])
def test_inspect_refuses_what_it_cannot_read(tmp_path, capsys, target):
    (tmp_path / "folder").mkdir()
    assert main(["inspect", str(tmp_path / target)]) == 2
    assert "inspect: error: `path` must be an existing scan file" in capsys.readouterr().err


@pytest.mark.parametrize(("probe", "message"), [("p.npz", "`probe` is missing"), ("none.npz", "readable NPZ file")])
def test_simulate_reports_bad_probe_file(tmp_path, capsys, probe, message):
    np.savez(tmp_path / "p.npz", other=np.zeros(3))
    args = ["simulate", "--n", "32", "--positions", "5", "--probe", str(tmp_path / probe), "--out", str(tmp_path / "x.npz")]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_inspect_bundle_draws_its_probe_and_parity(tmp_path, capsys):
    from ptycho_torch.bundle import load_bundle

    bundle = load_bundle(Path(__file__).resolve().parents[2] / "serving" / "default_bundle")
    png = tmp_path / "bundle.png"
    assert main(["inspect", str(bundle.source), "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert f"model      {bundle.name} v{bundle.version}" in text and f"overview: {png}" in text
    assert is_png(png)


def test_version_and_unwritable_output_are_one_line(tmp_path, capsys):
    from ptycho_torch import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"ptychopinn {__version__}\n"
    blocked = tmp_path / "file"
    blocked.write_text("")
    code = main(["simulate", "--n", "16", "--positions", "5", "--out", str(blocked / "scan.npz")])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [  # a file stands where the folder must go
        f"ptychopinn simulate: error: [Errno 17] File exists: '{blocked}'"]


def test_a_missing_onnxruntime_build_names_both_extras():
    from ptychopinn.cli import missing_extra_message

    message = missing_extra_message(ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime"))
    assert message == ("this command needs the 'cpu' extra (onnxruntime is not installed); "
                       "pip install 'ptychopinn-serve[cpu]' (or [gpu] on a CUDA host)")


def test_an_error_message_of_several_lines_is_printed_on_one(tmp_path, capsys, monkeypatch):
    from ptycho_torch.errors import DataContractError
    from ptychopinn.commands import simulate

    def fail(args):
        raise DataContractError("first line\n  second line\n\nthird")

    monkeypatch.setattr(simulate, "run", fail)
    assert main(["simulate", "--out", str(tmp_path / "x.npz")]) == 2
    assert capsys.readouterr().err == "ptychopinn simulate: error: first line second line third\n"
