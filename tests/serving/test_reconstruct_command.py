"""``ptychopinn reconstruct --server`` and ``--model BUNDLE``: the command line writes what the
pipeline computes, in chunks under the server's request limit, or in-process without a server
(the torch sources: ``tests/ptychopinn/test_reconstruct_sources.py``)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ptycho_torch.data import load_scan, spatial_split
from ptycho_torch.pipeline import reconstruct
from ptycho_torch.plan import ReconstructOptions
from ptychopinn.cli import main as cli_main
from serving.app import create_app
from serving.config import Limits
from serving.engine import Engine

N = 32  # the oracle bundle's (tests/serving/conftest.py); `conftest` is ambiguous with tests/ptychodus collected too


@pytest.fixture(scope="module")
def held_out(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The real scan's held-out half at N, as a contract NPZ (read once for the module)."""
    _, test = spatial_split(load_scan(data_dir / "siemens-star-small.npz.bz2", n=N))
    return test.to_file(tmp_path_factory.mktemp("scan") / "held_out.npz"), test


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight patterns, for the tests that fail before any inference."""
    from ptycho_torch.data import RawData

    positions = np.arange(8.0) * 4 + 20
    return RawData.from_coords_without_pc(positions, positions, np.ones((8, N, N), np.float32),
                                          np.ones((N, N), np.complex64)).to_file(tmp_path_factory.mktemp("t") / "s.npz")


def test_reconstruct_over_http_writes_the_pipelines_object_for_the_held_out_half(
        engine: Engine, serve, held_out, tmp_path: Path) -> None:
    path, test = held_out
    # 258 patterns of 32x32 float32 are 1 MiB: one request would get 413, chunks of 32 groups do not
    server = serve(create_app(engine, token="t0ken", limits=Limits(max_body_bytes=256 << 10)))
    token_file = tmp_path / "token"
    token_file.write_text("t0ken\n")

    code = cli_main(["reconstruct", "--server", server.url, "--server-model", "oracle", "--chunk-size", "32",
                     "--token-file", str(token_file), "--data", str(path), "--out", str(tmp_path / "out")])

    assert code == 0
    written = np.load(tmp_path / "out" / "reconstruction.npz")
    local = reconstruct(engine, test.diff3d, test.positions, probe=test.probeGuess)
    np.testing.assert_array_equal(written["amplitude"], local.amplitude)
    np.testing.assert_array_equal(written["phase"], local.phase)
    np.testing.assert_array_equal(written["coverage"], local.coverage)
    np.testing.assert_array_equal(written["origin"], np.asarray(local.origin))
    assert (tmp_path / "out" / "reconstructed_amplitude.png").stat().st_size > 0
    with h5py.File(tmp_path / "out" / "reconstruction.cxi") as cxi:
        assert cxi["entry_1/process_1/model"][()].decode() == f"oracle at {server.url}"
        assert cxi["entry_1/process_1/model_version"][()] == b"1"
        np.testing.assert_array_equal(cxi["entry_1/image_1/positions_px"][()], test.positions)


def test_reconstruct_needs_exactly_one_of_model_and_server(capsys) -> None:
    for argv in (["reconstruct", "--data", "x.npz", "--out", "o"],
                 ["reconstruct", "--model", "m", "--server", "http://127.0.0.1:1", "--data", "x.npz", "--out", "o"]):
        try:
            cli_main(argv)
        except SystemExit as exit_:
            assert exit_.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
    assert "--model" in capsys.readouterr().err


def test_reconstruct_with_an_empty_token_file_is_a_one_line_error(tiny_scan: Path, tmp_path: Path, capsys) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  \n")
    code = cli_main(["reconstruct", "--server", "http://127.0.0.1:1", "--token-file", str(token_file),
                     "--data", str(tiny_scan), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "`--token-file` must hold a token" in capsys.readouterr().err


def test_wait_ready_returns_once_the_server_is_up_and_times_out_when_nothing_listens(engine: Engine, serve) -> None:
    import socket

    from serving.client import Client

    server = serve(create_app(engine))
    with Client(server.url) as client:
        client.wait_ready(10)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    with Client(f"http://127.0.0.1:{free_port}") as client:
        try:
            client.wait_ready(0.5, poll_s=0.1)
        except TimeoutError as error:
            assert "not ready within 0.5 s" in str(error)
        else:
            raise AssertionError("wait_ready returned with no server listening")

def test_a_server_that_is_down_is_a_one_line_error(tiny_scan: Path, tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:  # a port nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "ptychopinn", "reconstruct", "--server", f"http://127.0.0.1:{port}",
                           "--data", str(tiny_scan), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("ptychopinn reconstruct: error:")]
    assert errors == [done.stderr.splitlines()[-1]]
    assert f"no answer from http://127.0.0.1:{port}/v2/models/ptychopinn (ConnectError" in errors[0]
    assert "is `ptychopinn serve` running there?" in errors[0]


def test_a_server_url_without_http_is_a_one_line_error(tiny_scan: Path, tmp_path: Path, capsys) -> None:
    code = cli_main(["reconstruct", "--server", "127.0.0.1:8000", "--data", str(tiny_scan), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "server URL must start with http:// or https://, got '127.0.0.1:8000'" in capsys.readouterr().err


def test_an_unknown_server_model_is_a_one_line_error(engine: Engine, serve, tiny_scan: Path, tmp_path: Path,
                                                     capsys) -> None:
    server = serve(create_app(engine))
    code = cli_main(["reconstruct", "--server", server.url, "--data", str(tiny_scan), "--out", str(tmp_path / "o")])
    assert code == 2
    assert f"`--server-model` must name a model served at {server.url}, got 'ptychopinn'" in capsys.readouterr().err


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_model_bundle_runs_in_process_without_a_server(engine: Engine, held_out, tmp_path: Path,
                                                       as_zip: bool) -> None:
    import shutil

    bundle = engine.bundle.root if not as_zip else shutil.make_archive(str(tmp_path / "oracle"), "zip", engine.bundle.root)
    path, test = held_out
    code = cli_main(["reconstruct", "--model", str(bundle), "--data", str(path), "--out", str(tmp_path / "out")])
    assert code == 0
    local = reconstruct(engine, test.diff3d, test.positions, probe=test.probeGuess)
    written = np.load(tmp_path / "out" / "reconstruction.npz")
    np.testing.assert_array_equal(written["amplitude"], local.amplitude)
    np.testing.assert_array_equal(written["phase"], local.phase)
    with h5py.File(tmp_path / "out" / "reconstruction.cxi") as cxi:
        assert cxi["entry_1/process_1/model"][()] == b"oracle"
        assert cxi["entry_1/process_1/scale"][()] == pytest.approx(local.scale)


def test_a_scan_at_another_pixel_size_than_the_bundle_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    from oracle import write_oracle_bundle

    from ptycho_torch.data import RawData

    bundle = write_oracle_bundle(tmp_path / "bundle", N=N, pixel_size_m=1e-8)
    positions = np.arange(8.0) * 4 + 20
    scan = RawData.from_coords_without_pc(positions, positions, np.ones((8, N, N), np.float32),
                                          np.ones((N, N), np.complex64), metadata={"pixel_size_m": 2e-8})
    code = cli_main(["reconstruct", "--model", str(bundle), "--data", str(scan.to_file(tmp_path / "scan.npz")),
                     "--out", str(tmp_path / "out")])
    assert code == 2
    assert "the scan's object pixel size 2e-08 m differs from model oracle's training pixel size 1e-08 m" in \
        capsys.readouterr().err


def test_a_scan_at_another_patch_size_names_the_fix(engine: Engine, data_dir: Path, tmp_path: Path, capsys) -> None:
    from ptycho_torch.data import RawData

    bundle = str(engine.bundle.root)
    code = cli_main(["reconstruct", "--model", bundle, "--data", str(data_dir / "siemens-star-small.npz.bz2"),
                     "--n", "64", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "has 64x64 patterns but the model takes N=32: add `--n 32` to crop the central 32x32 of its detector" in err
    assert "\n" not in err and not (tmp_path / "out").exists()

    positions = np.arange(8.0) * 4 + 20
    contract = RawData.from_coords_without_pc(positions, positions, np.ones((8, 16, 16), np.float32),
                                              np.ones((16, 16), np.complex64)).to_file(tmp_path / "small.npz")
    assert cli_main(["reconstruct", "--model", bundle, "--data", str(contract), "--out", str(tmp_path / "out")]) == 2
    assert "has 16x16 patterns but the model takes N=32: simulate or crop it at N=32" in capsys.readouterr().err


def test_refine_keeps_the_data_fit_in_the_cxi(engine: Engine, held_out, tmp_path: Path) -> None:
    import json

    path, test = held_out
    code = cli_main(["reconstruct", "--model", str(engine.bundle.root), "--data", str(path), "--refine", "3",
                     "--out", str(tmp_path / "out")])
    assert code == 0
    with h5py.File(tmp_path / "out" / "reconstruction.cxi") as cxi:
        fit = cxi["entry_1/process_1/data_fit"]
        assert fit["nll"].shape == fit["r_factor"].shape == (len(test),)
        assert float(fit["nll_median"][()]) == pytest.approx(np.median(fit["nll"][()]), rel=1e-5)
        assert len(json.loads(fit["iterations"][()])) == 4  # the network's object and 3 iterations
        assert int(cxi["entry_1/process_1/refine_iterations"][()]) == 3
        assert int(cxi["entry_1/process_1/refine_iterations_requested"][()]) == 3


def test_auto_with_a_time_limit_keeps_what_was_asked_for_beside_what_was_done(engine: Engine, held_out,
                                                                              tmp_path: Path) -> None:
    import json

    path, _ = held_out
    code = cli_main(["reconstruct", "--model", str(engine.bundle.root), "--data", str(path), "--refine", "auto",
                     "--refine-time-limit", "0.05", "--out", str(tmp_path / "out")])
    assert code == 0
    with h5py.File(tmp_path / "out" / "reconstruction.cxi") as cxi:
        process = cxi["entry_1/process_1"]
        assert process["refine_iterations_requested"][()] == b"auto"
        done = int(process["refine_iterations"][()])
        assert done == int(process["refinement/iterations"][()]) >= 1
        assert json.loads(process["refinement/stop_reason"][()]) == "time_limit"  # 0.05 s, not the default 300 s


def test_the_refined_probe_and_positions_reach_the_npz_and_the_cxi(engine: Engine, held_out, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    import json
    import logging

    path, test = held_out
    flags = ["--refine", "12", "--refine-start", "flat", "--refine-probe", "--refine-positions"]  # positions move
    with caplog.at_level(logging.INFO):
        code = cli_main(["reconstruct", "--model", str(engine.bundle.root), "--data", str(path), *flags,
                         "--out", str(tmp_path / "out")])
    assert code == 0
    local = reconstruct(engine, test.diff3d, test.positions, probe=test.probeGuess, options=ReconstructOptions(
        refine_iterations=12, refine_start="flat", refine_probe=True, refine_positions=True))
    assert not np.allclose(local.probe.reshape(test.probeGuess.shape), test.probeGuess)  # refined, not passed on
    assert np.abs(local.positions - test.positions).max() > 0.01
    with np.load(tmp_path / "out" / "reconstruction.npz") as npz:
        np.testing.assert_allclose(npz["probe"], local.probe, rtol=1e-5, atol=1e-6 * np.abs(local.probe).max())
        np.testing.assert_allclose(npz["positions"], local.positions, atol=1e-6)
    # the refined probe feeds training data: `ptychopinn simulate/corpus --probe reconstruction.npz` reads it
    from ptycho_torch.simulation import load_probe

    N = test.diff3d.shape[-1]
    fed = load_probe(tmp_path / "out" / "reconstruction.npz", N)
    np.testing.assert_allclose(fed.reshape(local.probe.shape), local.probe, rtol=1e-5,
                               atol=1e-6 * np.abs(local.probe).max())
    with h5py.File(tmp_path / "out" / "reconstruction.cxi") as cxi:
        probe, positions = cxi["entry_1/image_2/data"], cxi["entry_1/image_1/positions_px"]
        np.testing.assert_allclose(probe[()], local.probe, rtol=1e-5, atol=1e-6 * np.abs(local.probe).max())
        np.testing.assert_allclose(positions[()], local.positions, atol=1e-6)
        assert probe.attrs["refined"] and positions.attrs["refined"]
        refinement = cxi["entry_1/process_1/refinement"]
        assert json.loads(refinement["stop_reason"][()]) == "iterations" and int(refinement["iterations"][()]) == 12
        assert json.loads(refinement["position_correction_px"][()]) == pytest.approx(
            local.refinement["position_correction_px"], abs=1e-6)
    assert "refinement (rpie from the flat object): 12 iterations, stopped (iterations): completed" in caplog.text
    assert "positions corrected by" in caplog.text and "data fit: Poisson NLL per pixel median" in caplog.text


@pytest.mark.parametrize(("value", "message"), [("autoo", "must be a whole number of iterations or 'auto'"),
                                                ("1001", "`refine_iterations` must be at most 1000")])
def test_a_bad_refine_value_is_one_line(tiny_scan: Path, tmp_path: Path, capsys, value: str, message: str) -> None:
    try:
        code = cli_main(["reconstruct", "--model", str(tmp_path / "m"), "--data", str(tiny_scan), "--refine", value,
                         "--out", str(tmp_path / "o")])
    except SystemExit as exit_:  # argparse refuses what is no number
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


def test_the_refine_flags_reach_the_options() -> None:
    import argparse

    from ptychopinn.commands import reconstruct as command

    parser = argparse.ArgumentParser()
    command.configure(parser)
    base = ["--model", "m", "--data", "d", "--out", "o"]
    args = parser.parse_args([*base, "--refine", "3.0", "--refine-time-limit", "12.5"])
    options = command._options(args, None)
    assert (options.refine_iterations, options.refine_time_limit_s) == (3, 12.5)
    assert command._options(parser.parse_args([*base, "--refine", "auto"]), None).refine_time_limit_s == \
        ReconstructOptions.refine_time_limit_s
    assert f"default {ReconstructOptions.refine_time_limit_s:g})" in " ".join(parser.format_help().split())


@pytest.mark.parametrize(("flags", "message"), [
    (["--refine", "2.5"], "argument --refine: must be a whole number of iterations or 'auto' (until the data fit "
                          "stops improving), got '2.5'"),
    (["--refine-algorithm", "mpie"], "`refine_algorithm` 'mpie' needs `refine_iterations` >= 1 or 'auto' (it is the "
                                     "refinement's update rule); ask for 'auto' or a number of iterations, or leave "
                                     "`refine_algorithm` out"),
    (["--refine", "3", "--refine-time-limit", "0"], "`refine_time_limit_s` must be a positive number, got 0.0"),
])
def test_refine_flags_that_cannot_work_are_one_line(tiny_scan: Path, tmp_path: Path, capsys, flags: list[str],
                                                    message: str) -> None:
    try:
        code = cli_main(["reconstruct", "--model", str(tmp_path / "m"), "--data", str(tiny_scan), *flags,
                         "--out", str(tmp_path / "o")])
    except SystemExit as exit_:  # argparse refuses what is no number
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("value", ["gpu", "cupy"])
def test_a_refine_backend_it_cannot_use_is_refused_before_the_model_loads(
        tiny_scan: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)  # a host without the gpu extra
    monkeypatch.setenv("PTYCHOPINN_REFINE_BACKEND", value)
    code = cli_main(["reconstruct", "--model", str(tmp_path / "no-model"), "--data", str(tiny_scan), "--refine", "3",
                     "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"`$PTYCHOPINN_REFINE_BACKEND={value}`: " in err, err
    assert "unset $PTYCHOPINN_REFINE_BACKEND or set it to numpy" in err and "ptychopinn-serve[gpu]" in err
    assert "no-model" not in err and "\n" not in err and not (tmp_path / "o").exists()


def test_a_model_that_is_no_source_names_what_model_accepts(tiny_scan: Path, tmp_path: Path, capsys) -> None:
    """Every source refines (tests/ptychopinn/test_reconstruct_sources.py); a path that is none is one line."""
    (tmp_path / "empty").mkdir()
    for model, what in ((tmp_path / "run", "does not exist"), (tmp_path / "empty", "holds no bundle")):
        code = cli_main(["reconstruct", "--model", str(model), "--data", str(tiny_scan), "--refine", "3",
                         "--out", str(tmp_path / "o")])
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert f"`--model` {'folder ' if model.name == 'empty' else ''}{str(model)!r} {what}" in err
        assert "a run folder of `ptychopinn train`, a .ckpt, a wts.h5.zip or an MLflow runs:/" in err
        assert "\n" not in err and not (tmp_path / "o").exists()


def test_the_scale_policy_defaults_to_the_models_own(held_out, tmp_path: Path) -> None:
    """A bundle whose manifest defaults to the training scale gets it from the command line too (the flag
    used to default to 'scan' whatever the model said); the flag still overrides it."""
    import json

    from oracle import write_oracle_bundle

    bundle = write_oracle_bundle(tmp_path / "bundle", N=N)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["normalization"]["default_policy"] = "bundle"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    path, _ = held_out
    for flags, expected in (([], b"bundle"), (["--scale-policy", "scan"], b"scan")):
        out = tmp_path / f"out{len(flags)}"
        assert cli_main(["reconstruct", "--model", str(bundle), "--data", str(path), "--out", str(out), *flags]) == 0
        with h5py.File(out / "reconstruction.cxi") as cxi:
            assert cxi["entry_1/process_1/scale_policy"][()] == expected


@pytest.mark.parametrize(("flags", "message"), [
    (["--batch-size", "0"], "`--batch-size` must be a positive number of groups, got 0"),
    (["--batch-size", "-3"], "`--batch-size` must be a positive number of groups, got -3"),
    (["--chunk-size", "0"], "`--chunk-size` must be a positive number of groups, got 0"),
    (["--timeout", "-1"], "`--timeout` must be a positive number of seconds, got -1.0"),
])
def test_bad_runner_flags_are_one_line_errors_for_every_source(engine: Engine, tiny_scan: Path, tmp_path: Path,
                                                               capsys, flags: list[str], message: str) -> None:
    """--batch-size 0 was a traceback on a torch source and -3 wrote an object from uninitialised memory."""
    code = cli_main(["reconstruct", "--model", str(engine.bundle.root), "--data", str(tiny_scan),
                     "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err and not (tmp_path / "o").exists()


def test_a_damaged_bundle_is_named_by_the_bundle_reader_not_the_torch_loader(engine: Engine, tiny_scan: Path,
                                                                            tmp_path: Path, capsys) -> None:
    import zipfile

    partial = tmp_path / "partial.zip"  # a bundle zip without its graph
    with zipfile.ZipFile(partial, "w") as archive:
        for name in ("manifest.json", "probe.npy", "params.json"):
            archive.write(engine.bundle.root / name, name)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(partial.read_bytes()[:100])
    for model, expected in ((partial, "model.onnx: missing file listed in manifest.json"),
                            (truncated, "is not a readable zip archive"),
                            (tiny_scan, "is a zip but neither a bundle nor a wts.h5.zip (it has no manifest.json)")):
        code = cli_main(["reconstruct", "--model", str(model), "--data", str(tiny_scan), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and expected in err and "\n" not in err, err
