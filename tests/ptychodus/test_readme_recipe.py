"""The README's Ptychodus recipe, verbatim, through the stock ``ptychodus -b`` command.

The ``settings.ini`` block of README.md is copied as it is into a batch input directory holding the
held-out half of the real scan; the stock console script (found next to this interpreter, so it finds
our plugin hook only where ``make`` / a wheel install put it) must load every key and reconstruct with
the shipped default model.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from ptychodus.api.io import load_product, save_diffraction_data, save_product
from scans import real_scan

from serving.ptychodus.hook import hook_target
from serving.ptychodus.onnx_reconstructor import OnnxReconstructor
from serving.ptychodus.settings import PtychoPINNServeSettings

ROOT = Path(__file__).resolve().parents[2]


def readme_settings_ini() -> str:
    """The ```ini block of the README's Ptychodus section."""
    section = (ROOT / "README.md").read_text().split("\n## Ptychodus\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```ini\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the README's Ptychodus section must hold exactly one ```ini block"
    return blocks[0]


def stock_ptychodus() -> Path:
    return Path(sys.executable).parent / "ptychodus"


def test_the_readme_settings_ini_runs_verbatim_in_stock_ptychodus_batch_mode(
        data_dir: Path, tmp_path: Path, settings: PtychoPINNServeSettings) -> None:
    assert hook_target() is not None and hook_target().is_file(), (
        "Ptychodus' plugin folder lacks our hook; `make` installs it (python -m serving.ptychodus.hook install)")
    scan = real_scan(data_dir)
    data = tmp_path / "in"
    data.mkdir()
    save_diffraction_data(data / "diffraction.h5", scan.data)
    save_product(data / "product.h5", scan.product)
    (data / "settings.ini").write_text(readme_settings_ini())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}

    done = subprocess.run([str(stock_ptychodus()), "-b", "reconstruct", "-i", str(data), "-o", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)

    log = done.stdout + done.stderr  # Ptychodus logs to stdout
    assert done.returncode == 0, log[-3000:]
    assert "Ignoring unrecognized setting" not in log, log  # every key is one Ptychodus 1.7 reads
    output = tmp_path / "out" / "product.000001.h5"
    assert output.is_file(), log[-3000:]  # not the silent no-op of an unknown algorithm
    obj = load_product(output).object_.get_layer(0)
    expected = next(OnnxReconstructor(settings).reconstruct(scan.reconstruct_input)).product.object_.get_layer(0)
    assert np.count_nonzero(obj) > 0.5 * obj.size
    np.testing.assert_allclose(obj, expected, rtol=1e-4, atol=1e-5)
