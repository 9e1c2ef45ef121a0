"""The shipped default model reconstructs the real Siemens-star scan through Ptychodus' API.

The product is built from the held-out half of the shipped real scan (the half the default model
never saw) with Ptychodus' own containers; the real scan has no physical units, so the object pixel
is set to ``scans.PIXEL_M`` and the detector pitch follows from it (``scans.detector_pixel``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scans import real_scan

from ptycho_torch.bundle import load_bundle
from ptycho_torch.pipeline import reconstruct
from serving.cli import DEFAULT_BUNDLE
from serving.engine import Engine
from serving.ptychodus.onnx_reconstructor import OnnxReconstructor
from serving.ptychodus.settings import PtychoPINNServeSettings


def test_the_default_bundle_reconstructs_the_real_scan_in_ptychodus(data_dir: Path,
                                                                    settings: PtychoPINNServeSettings) -> None:
    scan = real_scan(data_dir)
    assert settings.bundle() == DEFAULT_BUNDLE  # the shipped model is the default

    obj = next(OnnxReconstructor(settings).reconstruct(scan.reconstruct_input)).product.object_.get_layer(0)

    covered = obj != 0
    assert covered.mean() > 0.5  # central M=20 crops of a 64-px window on a grid with N/2 margins
    assert np.isfinite(obj).all()
    # the same object the shared pipeline stitches, pasted at its origin on Ptychodus' grid
    local = reconstruct(Engine(load_bundle(DEFAULT_BUNDLE), providers=["cpu"], warmup=False), scan.patterns,
                        scan.positions)
    x0, y0 = (int(v) for v in local.origin)
    rows, cols = np.nonzero(covered)
    expected = local.amplitude[rows + y0, cols + x0] * np.exp(1j * local.phase[rows + y0, cols + x0])
    np.testing.assert_allclose(obj[rows, cols], expected, rtol=1e-4, atol=1e-5)
    # non-trivial: the star's spokes make amplitude and phase vary across the field
    assert np.std(np.abs(obj[covered])) > 0.05 * np.mean(np.abs(obj[covered]))
    assert np.std(np.angle(obj[covered])) > 0.1
