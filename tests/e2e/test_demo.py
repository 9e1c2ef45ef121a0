"""The README's main job (`make demo` -> scripts/demo.sh) runs end to end: a real `ptychopinn serve`
of the shipped default bundle, the real scan's held-out half reconstructed over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from ptycho_torch.data import load_siemens_star, spatial_split

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_demo_serves_the_default_bundle_and_reconstructs_the_held_out_half(data_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent), "PORT": str(_free_port())}
    done = subprocess.run(["bash", "scripts/demo.sh", str(tmp_path)], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    result = np.load(tmp_path / "reconstruction.npz")
    _, test = spatial_split(load_siemens_star(data_dir / "siemens-star-small.npz.bz2", 64))
    # the canvas spans the held-out positions plus the stitched M=20 crops
    span_x = test.xcoords.max() - test.xcoords.min()
    span_y = test.ycoords.max() - test.ycoords.min()
    assert result["amplitude"].shape[1] >= span_x + 20 and result["amplitude"].shape[0] >= span_y + 20
    covered = result["coverage"] > 0
    assert covered.mean() > 0.9
    assert np.isfinite(result["amplitude"]).all() and np.isfinite(result["phase"]).all()
    assert np.std(result["phase"][covered]) > 0.1  # the star's spokes, not a flat object
    for name in ("reconstructed_amplitude.png", "reconstructed_phase.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
