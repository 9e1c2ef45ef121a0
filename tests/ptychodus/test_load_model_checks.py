"""Ptychodus' Load Model applies the bundle checks of load_bundle: a graph the installed
onnxruntime cannot load, and (with PTYCHOPINN_TRUSTED_KEYS) an unsigned bundle, are refused in one
line and the previous model stays selected."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from oracle import write_oracle_bundle  # tests/oracle.py, on sys.path through tests/conftest.py

from ptycho_torch.bundle import TRUSTED_KEYS_ENV, generate_key_pair, sign_bundle
from ptycho_torch.errors import BundleError
from serving.ptychodus.onnx_reconstructor import OnnxReconstructor
from serving.ptychodus.settings import PtychoPINNServeSettings


def test_load_model_refuses_a_too_new_graph_and_an_unsigned_bundle(tmp_path: Path, settings: PtychoPINNServeSettings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from ptycho_torch.bundle import Manifest
    from ptycho_torch.checksums import sha256_file

    reconstructor = OnnxReconstructor(settings)
    good = write_oracle_bundle(tmp_path / "good")
    reconstructor.load_model_from_file(good)
    assert settings.bundle() == good

    future = write_oracle_bundle(tmp_path / "future")
    model = onnx.load(future / "model.onnx")
    model.ir_version = 99
    onnx.save(model, future / "model.onnx")
    manifest = Manifest.from_json((future / "manifest.json").read_text())
    files = {**manifest.files, "model.onnx": sha256_file(future / "model.onnx")}
    (future / "manifest.json").write_text(manifest.model_copy(update={"files": files}).to_json())
    with pytest.raises(BundleError, match=r"^model\.onnx: needs ONNX IR version 99, opset ai\.onnx 17, which the "
                                          r"installed onnxruntime [\d.]+ cannot load"):
        reconstructor.load_model_from_file(future / "manifest.json")
    assert settings.bundle() == good

    private, public = generate_key_pair(tmp_path / "site.key")
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(public))
    with pytest.raises(BundleError, match=r"unsigned bundle refused"):
        reconstructor.load_model_from_file(good)
    sign_bundle(good, private)
    reconstructor.load_model_from_file(good)
    assert reconstructor.engine().bundle.signed_by is not None
