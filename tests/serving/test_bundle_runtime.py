"""A graph the installed onnxruntime cannot load is refused when the bundle is loaded, in one line
naming what the bundle needs, what is installed and the fix: in load_bundle, `inspect`, `serve` and
the engine; never an onnxruntime traceback."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import onnx
import pytest
from oracle import read_manifest, rehash, write_oracle_bundle

from ptycho_torch.bundle import load_bundle
from ptycho_torch.errors import BundleError
from ptychopinn.cli import main
from serving.engine import Engine

ORT = f"onnxruntime {metadata.version('onnxruntime')}"
FIX = "upgrade it (pip install -U onnxruntime) or re-export the bundle with an older opset (ptychopinn export --opset 18)"


def _restamp(root: Path, *, ir_version: int | None = None, opset: int | None = None) -> Path:
    """Re-stamp the bundle's graph as written for a newer ONNX, with consistent checksums."""
    model = onnx.load(root / "model.onnx")
    if ir_version is not None:
        model.ir_version = ir_version
    if opset is not None:
        model.opset_import[0].version = opset
    onnx.save(model, root / "model.onnx")
    rehash(root)
    return root


@pytest.fixture
def future_ir(tmp_path: Path) -> Path:
    return _restamp(write_oracle_bundle(tmp_path / "future-ir"), ir_version=99)


def test_a_graph_from_a_newer_onnx_ir_is_refused_naming_need_installed_and_fix(future_ir: Path) -> None:
    with pytest.raises(BundleError) as caught:
        load_bundle(future_ir)
    message = str(caught.value)
    match = re.fullmatch(rf"model\.onnx: needs ONNX IR version 99, opset ai\.onnx 17, which the installed "
                         rf"{re.escape(ORT)} cannot load \(it supports IR version <= (\d+)\); {re.escape(FIX)}", message)
    assert match, message
    assert 8 <= int(match.group(1)) < 99  # the oracle's own IR version 8 loads


def test_a_graph_from_a_newer_opset_is_refused(tmp_path: Path) -> None:
    root = _restamp(write_oracle_bundle(tmp_path / "future-opset"), opset=99)
    with pytest.raises(BundleError, match=rf"needs ONNX IR version 8, opset ai\.onnx 99, which the installed "
                                          rf"{re.escape(ORT)} cannot load \(it supports opset ai\.onnx <= (\d+)\)"):
        load_bundle(root)


def test_a_manifest_opset_the_graph_does_not_carry_is_refused(tmp_path: Path) -> None:
    root = write_oracle_bundle(tmp_path / "lying-manifest")
    rehash(root, read_manifest(root).model_copy(update={"opset": 99}))
    with pytest.raises(BundleError) as caught:
        load_bundle(root)
    assert str(caught.value) == ("model.onnx: manifest.json says ONNX opset 99, the graph is stamped with opset 17 "
                                 "(IR version 8); re-export the bundle (ptychopinn export --opset N)")


@pytest.mark.parametrize("command", [["inspect"], ["serve", "--port", "0", "--bundle"]])
def test_inspect_and_serve_say_it_in_one_line(future_ir: Path, command: list[str], capsys) -> None:
    argv = [*command, str(future_ir)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and "onnxruntime_src" not in err
    assert err.startswith(f"ptychopinn {command[0]}: error: model.onnx: needs ONNX IR version 99"), err


def test_the_engine_turns_any_onnxruntime_load_failure_into_one_line(tmp_path: Path) -> None:
    bundle = load_bundle(write_oracle_bundle(tmp_path / "b"))
    model = onnx.load(bundle.onnx_path)
    model.ir_version = 99
    onnx.save(model, bundle.onnx_path)  # changed after the bundle was checked
    with pytest.raises(BundleError) as caught:
        Engine(bundle, warmup=False)
    assert re.fullmatch(rf"model\.onnx: the installed {re.escape(ORT)} cannot load the graph \(it supports IR version "
                        r"<= \d+\); check the bundle with `ptychopinn inspect`, upgrade onnxruntime or re-export the "
                        r"bundle", str(caught.value)), str(caught.value)
