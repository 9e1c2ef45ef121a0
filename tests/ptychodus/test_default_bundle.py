"""The shipped default model reconstructs the real Siemens-star scan through Ptychodus' API.

The product is built from the held-out half of the shipped real scan (the half the default model
never saw) with Ptychodus' own containers; the real scan has no physical units, so the object pixel
is set to ``scans.PIXEL_M`` and the detector pitch follows from it (``scans.detector_pixel``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ptychodus.api.assemble import AssembledDiffractionData
from ptychodus.api.geometry import PixelGeometry
from ptychodus.api.object import Object, ObjectCenter
from ptychodus.api.probe import ProbeSequence
from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
from ptychodus.api.product import Product
from ptychodus.api.reconstruct import prepare_reconstruct_input
from scans import PIXEL_M, detector_pixel, metadata

from ptycho_torch.data import load_siemens_star, spatial_split
from serving.bundle import load_bundle
from serving.cli import DEFAULT_BUNDLE
from serving.engine import Engine
from serving.pipeline import reconstruct
from serving.ptychodus.onnx_reconstructor import OnnxReconstructor
from serving.ptychodus.settings import PtychoPINNServeSettings

N = 64


def _real_scan_product(data_dir: Path):
    _, test = spatial_split(load_siemens_star(data_dir / "siemens-star-small.npz.bz2", N))
    # an object grid just large enough for the held-out half (its positions start at y ~ 100)
    xs = test.xcoords - np.floor(test.xcoords.min()) + N // 2
    ys = test.ycoords - np.floor(test.ycoords.min()) + N // 2
    W, H = int(np.ceil(xs.max())) + N // 2 + 1, int(np.ceil(ys.max())) + N // 2 + 1
    pixel = PixelGeometry(PIXEL_M, PIXEL_M)
    obj = Object(np.ones((H, W), np.complex64), pixel, ObjectCenter(0.0, 0.0))
    geometry = obj.get_geometry()
    # project centres are N//2, Ptychodus' are (N-1)/2: half a pixel apart for even N
    x_m = geometry.center_x_m + (xs - 0.5 - (W - 1) / 2) * PIXEL_M
    y_m = geometry.center_y_m + (ys - 0.5 - (H - 1) / 2) * PIXEL_M
    indexes = np.arange(len(test))
    positions = ProbePositionSequence([ProbePosition(int(i), float(x), float(y)) for i, x, y in zip(indexes, x_m, y_m)])
    product = Product(metadata=metadata("siemens-star"), probe_positions=positions,
                      probes=ProbeSequence(test.probeGuess[None], None, pixel), object_=obj, losses=[])
    counts = (test.diff3d.astype(np.float64) ** 2).astype(np.float32)
    data = AssembledDiffractionData(indexes, counts, detector_pixel(N), np.zeros((N, N), dtype=bool))
    return test.diff3d, np.column_stack([xs, ys]), prepare_reconstruct_input(data, product)


def test_the_default_bundle_reconstructs_the_real_scan_in_ptychodus(data_dir: Path,
                                                                    settings: PtychoPINNServeSettings) -> None:
    patterns, positions, parameters = _real_scan_product(data_dir)
    settings.bundle_path.set_value(DEFAULT_BUNDLE)

    obj = next(OnnxReconstructor(settings).reconstruct(parameters)).product.object_.get_layer(0)

    covered = obj != 0
    assert covered.mean() > 0.5  # central M=20 crops of a 64-px window on a grid with N/2 margins
    assert np.isfinite(obj).all()
    # the same object the shared pipeline stitches, pasted at its origin on Ptychodus' grid
    local = reconstruct(Engine(load_bundle(DEFAULT_BUNDLE), providers=["cpu"], warmup=False), patterns, positions)
    x0, y0 = (int(v) for v in local.origin)
    rows, cols = np.nonzero(covered)
    expected = local.amplitude[rows + y0, cols + x0] * np.exp(1j * local.phase[rows + y0, cols + x0])
    np.testing.assert_allclose(obj[rows, cols], expected, rtol=1e-4, atol=1e-5)
    # non-trivial: the star's spokes make amplitude and phase vary across the field
    assert np.std(np.abs(obj[covered])) > 0.05 * np.mean(np.abs(obj[covered]))
    assert np.std(np.angle(obj[covered])) > 0.1
