"""The Ptychodus GUI under Xvfb: select PtychoPINN-Serve, edit its panel, Load Model with the shipped
folder bundle, Infer (``gui_driver.py`` in its own process, with the real X11 platform plugin)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from ptychodus.api.io import save_diffraction_data, save_product
from scans import real_scan

from serving.cli import DEFAULT_BUNDLE
from serving.ptychodus.onnx_reconstructor import OnnxReconstructor
from serving.ptychodus.settings import PtychoPINNServeSettings

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("gui_driver.py")


def test_gui_selects_our_reconstructor_loads_the_folder_bundle_and_reconstructs(
        data_dir: Path, tmp_path: Path, settings: PtychoPINNServeSettings) -> None:
    xvfb = shutil.which("xvfb-run")
    assert xvfb, "the GUI test needs Xvfb: apt-get install -y xvfb (.ci/run installs it)"
    scan = real_scan(data_dir)
    data = tmp_path / "in"
    data.mkdir()
    save_diffraction_data(data / "diffraction.h5", scan.data)
    save_product(data / "product.h5", scan.product)
    env = {key: value for key, value in os.environ.items() if key not in ("QT_QPA_PLATFORM", "DISPLAY")}
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{DRIVER.parent}", HOME=str(tmp_path), QT_QPA_PLATFORM="xcb")

    done = subprocess.run([xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, str(DRIVER), str(data),
                           str(DEFAULT_BUNDLE / "manifest.json"), str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, check=False)

    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    obj = np.load(tmp_path / "out" / "object.npy")
    expected = next(OnnxReconstructor(settings).reconstruct(scan.reconstruct_input)).product.object_.get_layer(0)
    np.testing.assert_allclose(obj, expected, rtol=1e-4, atol=1e-5)  # the shipped model's answer, pasted in place
    assert (tmp_path / "out" / "ptychodus.png").stat().st_size > 10_000
