"""Ptychodus itself: ModelCore + workflow_api, `-b reconstruct` via the launcher and via the stock
command with our plugin hook, Load Model with a .zip, a folder or its manifest, bad settings, the
hook installer for editable installs, and the built-in PtychoPINN-Torch library (gone, or failing
early with a message naming ours)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ptychodus.api.io import load_product, save_diffraction_data, save_product
from scans import OracleScan

from serving.cli import DEFAULT_BUNDLE
from serving.ptychodus import hook, install
from serving.ptychodus.onnx_reconstructor import OnnxReconstructor
from serving.ptychodus.settings import PtychoPINNServeSettings

ROOT = Path(__file__).resolve().parents[2]
ALGORITHM = "ptychopinn-serve_onnx"


def _batch_input(directory: Path, oracle: OracleScan, settings: str) -> Path:
    directory.mkdir(parents=True)
    save_diffraction_data(directory / "diffraction.h5", oracle.data)
    save_product(directory / "product.h5", oracle.product)
    (directory / "settings.ini").write_text(settings)
    return directory


def _settings_ini(bundle: Path | str, algorithm: str = ALGORITHM) -> str:
    return f"[Processing]\nAlgorithm = {algorithm}\n\n[PtychoPINNServe]\nBundlePath = {bundle}\n"


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240, check=False)


def _assert_oracle_phase(path: Path, oracle: OracleScan) -> None:
    obj = load_product(path).object_.get_layer(0)
    rows, cols = oracle.covered
    assert np.abs(np.angle(obj[rows, cols]) - oracle.phase[rows, cols]).max() < 1e-5


def test_model_core_workflow_reconstructs_and_saves(oracle: OracleScan, oracle_zip: Path, tmp_path: Path) -> None:
    from ptychodus.model import ModelCore

    assert install() in (True, False)
    assert install() is False  # idempotent
    settings = tmp_path / "settings.ini"
    settings.write_text(_settings_ini(oracle_zip))
    data = _batch_input(tmp_path / "in", oracle, "")
    with ModelCore(settings) as core:
        available = list(core.workflow_api.available_reconstructors())
        assert {ALGORITHM, "ptychopinn-serve_http"} <= set(available)
        # the built-in library cannot run this project's ptycho_torch: gone, not merely last
        assert not [name for name in available if name.startswith("ptychopinn-torch")], available
        diffraction = core.workflow_api.load_assembled_diffraction_data(data / "diffraction.h5")
        product = core.workflow_api.load_product(data / "product.h5", diffraction=diffraction)
        output = product.reconstruct_local(algorithm=ALGORITHM, output_product_file=tmp_path / "out.h5",
                                           block=True)
        output.save_product(tmp_path / "final.h5", file_type="HDF5")
    assert (tmp_path / "out.000001.h5").is_file()
    _assert_oracle_phase(tmp_path / "final.h5", oracle)


def test_ours_is_the_default_when_ptychodus_default_is_not_installed() -> None:
    from ptychodus.model import ModelCore

    install()
    with ModelCore() as core:
        assert "pty-chi_lsqml" not in set(core.workflow_api.available_reconstructors())  # pty-chi not installed
        assert core.processing_core.algorithm_parameter.get_value() == ALGORITHM
        assert core.processing_core.processing_api.is_reconstructor_trainable()


def test_load_model_takes_a_zip_a_folder_or_the_folders_manifest(oracle_zip: Path, tmp_path: Path,
                                                                 settings: PtychoPINNServeSettings) -> None:
    reconstructor = OnnxReconstructor(settings)
    for chosen, expected in [(oracle_zip, oracle_zip), (DEFAULT_BUNDLE, DEFAULT_BUNDLE),
                             (DEFAULT_BUNDLE / "manifest.json", DEFAULT_BUNDLE)]:
        reconstructor.load_model_from_file(chosen)
        assert settings.bundle() == expected
        assert reconstructor.engine().bundle.source == expected
    assert "*.zip" in reconstructor.get_model_file_filter() and "manifest.json" in reconstructor.get_model_file_filter()
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="manifest"):  # a bad bundle fails at Load Model and keeps the old one
        reconstructor.load_model_from_file(tmp_path / "manifest.json")
    assert settings.bundle() == DEFAULT_BUNDLE


def test_hook_installer_copies_and_removes_the_plugin_for_editable_installs(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "plugins" / hook.HOOK_NAME
    target.parent.mkdir()
    monkeypatch.setattr(hook, "hook_target", lambda: target)
    assert hook.main(["install"]) == 0
    assert target.read_bytes() == hook.hook_source().read_bytes()
    assert "in place" in hook.install_hook()
    target.write_text("# an older copy\n")
    assert "installed" in hook.install_hook() and target.read_bytes() == hook.hook_source().read_bytes()
    assert "removed" in hook.remove_hook() and not target.exists()
    monkeypatch.setattr(hook, "hook_target", hook.hook_source)  # a wheel install: the file is pip's own
    assert "belongs to this (regular) install" in hook.remove_hook() and hook.hook_source().is_file()


def test_launcher_batch_mode_writes_the_product(oracle: OracleScan, oracle_zip: Path, tmp_path: Path) -> None:
    data = _batch_input(tmp_path / "in", oracle, _settings_ini(oracle_zip))
    done = _run(["-m", "serving.ptychodus", "-b", "reconstruct", "-i", str(data), "-o", str(tmp_path / "out")],
                tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_oracle_phase(tmp_path / "out" / "product.000001.h5", oracle)  # exists: not the silent no-op


def test_stock_ptychodus_auto_loads_model_zip(oracle: OracleScan, oracle_zip: Path, tmp_path: Path) -> None:
    """The stock `ptychodus -b` (our hook in its plugin folder) loads `model.zip` of the input directory."""
    data = _batch_input(tmp_path / "in", oracle, "[Processing]\nAlgorithm = ptychopinn-serve_onnx\n")
    (data / "model.zip").write_bytes(oracle_zip.read_bytes())  # auto-loaded: the ONNX reconstructor is trainable
    done = _run(["-m", "ptychodus", "-b", "reconstruct", "-i", str(data), "-o", str(tmp_path / "out")], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_oracle_phase(tmp_path / "out" / "product.000001.h5", oracle)


@pytest.mark.parametrize(("settings", "message"), [
    (_settings_ini(""), "BundlePath` must name a bundle"),
    ("[Processing]\nAlgorithm = ptychopinn-serve_http\n[PtychoPINNServe]\nServerURL = http://127.0.0.1:9\n"
     "ServerModel = oracle\nTimeoutSeconds = 5\n", "ServerURL` must reach a running `ptychopinn serve`"),
    ("wrong-N", "diffraction patterns must be 64x64 for model oracle"),
])
def test_bad_settings_fail_with_a_message(settings: str, message: str, oracle: OracleScan, oracle_zip_64: Path,
                                          tmp_path: Path) -> None:
    if settings == "wrong-N":
        settings = _settings_ini(oracle_zip_64)
    data = _batch_input(tmp_path / "in", oracle, settings)
    done = _run(["-m", "serving.ptychodus", "-b", "reconstruct", "-i", str(data), "-o", str(tmp_path / "out")],
                tmp_path)
    log = done.stdout + done.stderr  # Ptychodus logs to stdout
    assert done.returncode != 0
    failure = [line for line in log.splitlines() if "Reconstruction failed: ConfigError" in line]
    assert failure and message in failure[0], log[-3000:]
    # raised up front by our reconstructor, not from deep inside onnxruntime, httpx or numpy
    frames = [line for line in log.splitlines() if line.strip().startswith('File "')]
    assert "serving/ptychodus/" in frames[-1], frames[-3:]


def test_builtin_ptychopinn_torch_fails_early_naming_our_reconstructors(oracle: OracleScan) -> None:
    from ptychodus.api.reconstruct import prepare_reconstruct_input
    from ptychodus.model.ptychopinn_torch._payload import ReconstructPayload
    from ptychodus.model.ptychopinn_torch._subprocess import run_reconstruct

    from ptycho_torch.errors import UnsupportedAPIError

    payload = ReconstructPayload("Unsupervised", Path("model.ckpt"),
                                 prepare_reconstruct_input(oracle.data, oracle.product))
    with pytest.raises(UnsupportedAPIError, match="ptychopinn-serve_onnx"):
        run_reconstruct(payload, queue=None)  # what the spawned child runs
    with pytest.raises(UnsupportedAPIError, match="PtychoPINN-Serve"):
        import ptycho_torch.config_params  # noqa: F401  (what training imports in the parent)
