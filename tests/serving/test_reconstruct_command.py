"""``ptychopinn reconstruct --server``: the command-line path over HTTP writes what the pipeline computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ptychopinn.cli import main as cli_main
from ptycho_torch.data import load_scan, spatial_split
from serving.app import create_app
from serving.engine import Engine
from ptycho_torch.pipeline import reconstruct

N = 32  # the oracle bundle's (tests/serving/conftest.py); `conftest` is ambiguous with tests/ptychodus collected too


def test_reconstruct_over_http_writes_the_pipelines_object_for_the_held_out_half(
        engine: Engine, serve, data_dir: Path, tmp_path: Path) -> None:
    path = data_dir / "siemens-star-small.npz.bz2"
    server = serve(create_app(engine, token="t0ken"))
    token_file = tmp_path / "token"
    token_file.write_text("t0ken\n")

    code = cli_main(["reconstruct", "--server", server.url, "--token-file", str(token_file), "--data", str(path),
                     "--n", str(N), "--split", "test", "--out", str(tmp_path / "out")])

    assert code == 0
    written = np.load(tmp_path / "out" / "reconstruction.npz")
    _, test = spatial_split(load_scan(path, n=N))
    local = reconstruct(engine, test.diff3d, np.column_stack([test.xcoords, test.ycoords]), probe=test.probeGuess)
    np.testing.assert_array_equal(written["amplitude"], local.amplitude)
    np.testing.assert_array_equal(written["phase"], local.phase)
    np.testing.assert_array_equal(written["coverage"], local.coverage)
    np.testing.assert_array_equal(written["origin"], np.asarray(local.origin))
    assert (tmp_path / "out" / "reconstructed_amplitude.png").stat().st_size > 0


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


def test_reconstruct_with_an_empty_token_file_is_a_one_line_error(data_dir: Path, tmp_path: Path, capsys) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  \n")
    code = cli_main(["reconstruct", "--server", "http://127.0.0.1:1", "--token-file", str(token_file),
                     "--data", str(data_dir / "siemens-star-small.npz.bz2"),
                     "--n", str(N), "--out", str(tmp_path / "o")])
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

def test_a_server_that_is_down_is_a_one_line_error(data_dir: Path, tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:  # a port nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "ptychopinn", "reconstruct", "--server", f"http://127.0.0.1:{port}",
                           "--data", str(data_dir / "siemens-star-small.npz.bz2"), "--n", str(N),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("ptychopinn reconstruct: error:")]
    assert errors == [done.stderr.splitlines()[-1]]
    assert f"no answer from http://127.0.0.1:{port}/v1/reconstruct (ConnectError" in errors[0]
    assert "is `ptychopinn serve` running there?" in errors[0]


def test_a_server_url_without_http_is_a_one_line_error(data_dir: Path, tmp_path: Path, capsys) -> None:
    code = cli_main(["reconstruct", "--server", "127.0.0.1:8000", "--data", str(data_dir / "siemens-star-small.npz.bz2"),
                     "--n", str(N), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "server URL must start with http:// or https://, got '127.0.0.1:8000'" in capsys.readouterr().err
