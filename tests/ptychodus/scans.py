"""Ptychodus scans for the tests, built with Ptychodus' own API and geometry.

The oracle scan pairs with the serving oracle bundle (``tests/oracle.py``: phase =
``PHASE_FACTOR * diffraction``, amplitude = ``diffraction * scale``). Each pattern holds, as
``counts = amplitude**2``, the amplitude ``phi_patch / PHASE_FACTOR`` of a patch of a known phase
object ``phi`` cut at the position's own pixel by Ptychodus' ``BarycentricArrayInterpolator`` at
``map_coordinates_probe_to_object`` (Ptychodus' centring). Positions are whole object pixels in that
convention (half-integer patch centres for even N), so a correct reconstruction returns ``phi``
exactly; a swapped x/y, a half-pixel shift, a metre->pixel slip or a mis-paired index does not.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from oracle import PHASE_FACTOR, write_oracle_bundle  # tests/oracle.py, on sys.path through tests/conftest.py
from ptychodus.api.assemble import AssembledDiffractionData
from ptychodus.api.geometry import ImageExtent, PixelGeometry
from ptychodus.api.interpolate import BarycentricArrayInterpolator
from ptychodus.api.object import Object, ObjectCenter
from ptychodus.api.probe import ProbeSequence
from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
from ptychodus.api.product import Product, ProductMetadata
from ptychodus.api.propagate import compute_far_field_pixel_geometry
from ptychodus.api.reconstruct import ReconstructInput, prepare_reconstruct_input

from ptycho_torch.data import load_siemens_star, spatial_split

N = 32
PIXEL_M = 10e-9
ENERGY_EV = 10_000.0
DISTANCE_M = 2.0
GRID = 6
STEP_PX = 4
SHAPE = (60, 56)  # object (H, W): not square, so a swapped axis cannot go unnoticed
FIRST_PX = (N - 1) / 2  # first patch centre: the patch starts at object pixel 0
CENTER_M = (1.5e-6, -0.7e-6)


@dataclass(frozen=True)
class OracleScan:
    product: Product
    data: AssembledDiffractionData
    phase: np.ndarray
    """(H, W) the known object phase."""
    covered: tuple[slice, slice]
    """Object pixels the stitched central crops cover (rows, cols)."""


def known_phase(shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A smooth phase in [0.2, 2.5] rad that differs along rows and columns."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return 1.35 + 1.1 * np.sin(2 * np.pi * xx / 23) * np.cos(2 * np.pi * yy / 31)


def metadata(name: str = "oracle") -> ProductMetadata:
    return ProductMetadata(name=name, comments="", detector_distance_m=DISTANCE_M, photon_energy_eV=ENERGY_EV,
                           probe_photon_count=0.0, exposure_time_s=0.0, mass_attenuation_m2_per_kg=0.0,
                           tomography_angle_deg=0.0)


def gaussian_probe(n: int, modes: int = 1) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    base = np.exp(-(xx**2 + yy**2) / (n / 4) ** 2).astype(np.complex64)
    return np.stack([base * (0.5**m) for m in range(modes)])


def detector_pixel(n: int = N) -> PixelGeometry:
    """The detector pitch whose far-field object pixel is ``PIXEL_M`` (no scale warning)."""
    wavelength_m = 12.398419843320026e-7 / ENERGY_EV
    return compute_far_field_pixel_geometry(PixelGeometry(PIXEL_M, PIXEL_M), ImageExtent(n, n),
                                            wavelength_m=wavelength_m, propagation_distance_m=DISTANCE_M)


def oracle_scan(*, seed: int = 0, probe_modes: int = 2) -> OracleScan:
    """The oracle scan: a GRID x GRID raster, stored in shuffled order with shuffled indexes."""
    H, W = SHAPE
    phase = known_phase()
    geometry_obj = Object(np.exp(1j * phase).astype(np.complex64), PixelGeometry(PIXEL_M, PIXEL_M),
                          ObjectCenter(*CENTER_M))
    geometry = geometry_obj.get_geometry()
    rng = np.random.default_rng(seed)
    cols, rows = np.meshgrid(np.arange(GRID), np.arange(GRID))
    x_px = FIRST_PX + STEP_PX * cols.ravel()
    y_px = FIRST_PX + STEP_PX * rows.ravel()
    indexes = rng.permutation(len(x_px)) + 100  # scan indexes are labels, not row numbers
    x_m = geometry.center_x_m + (x_px - (W - 1) / 2) * PIXEL_M
    y_m = geometry.center_y_m + (y_px - (H - 1) / 2) * PIXEL_M
    order = rng.permutation(len(x_px))  # positions listed in yet another order
    positions = ProbePositionSequence([ProbePosition(int(indexes[k]), float(x_m[k]), float(y_m[k])) for k in order])

    interpolator = BarycentricArrayInterpolator(phase)
    mapped = [geometry.map_coordinates_probe_to_object(ProbePosition(0, x_m[k], y_m[k])) for k in range(len(x_px))]
    patches = np.stack([interpolator.get_patch(p.x_px, p.y_px, N, N) for p in mapped])
    counts = ((patches / PHASE_FACTOR) ** 2).astype(np.float32)
    by_index = np.argsort(indexes)
    data = AssembledDiffractionData(indexes[by_index], counts[by_index], detector_pixel(),
                                    np.zeros((N, N), dtype=bool))

    crop = N // 4  # the oracle bundle's stitch_M
    first = int(round(x_px.min() - FIRST_PX)) + N // 2 - crop // 2
    last_col = int(round(x_px.max() - FIRST_PX)) + N // 2 + crop // 2
    last_row = int(round(y_px.max() - FIRST_PX)) + N // 2 + crop // 2
    covered = (slice(first, last_row), slice(first, last_col))

    product = Product(
        metadata=metadata(),
        probe_positions=positions,
        probes=ProbeSequence(gaussian_probe(N, probe_modes), None, PixelGeometry(PIXEL_M, PIXEL_M)),
        object_=Object(np.ones((H, W), np.complex64), PixelGeometry(PIXEL_M, PIXEL_M), ObjectCenter(*CENTER_M)),
        losses=[],
    )
    return OracleScan(product, data, phase, covered)


def zip_dir(directory: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
    return target


def oracle_bundle_zip(directory: Path, *, n: int = N) -> Path:
    """The serving oracle bundle (``stitch_M = N // 4``) as ``model.zip`` in ``directory``."""
    root = write_oracle_bundle(directory / f"oracle-{n}", N=n)
    return zip_dir(root, directory / f"oracle-{n}.zip")


@dataclass(frozen=True)
class RealScan:
    """The held-out half of the shipped real Siemens-star scan, in the project's and in Ptychodus' terms."""

    patterns: np.ndarray
    """(S, N, N) amplitudes, as ``ptycho_torch.pipeline.reconstruct`` takes them."""
    positions: np.ndarray
    """(S, 2) ``[x, y]`` patch centres in object pixels."""
    data: AssembledDiffractionData
    product: Product

    @property
    def reconstruct_input(self) -> ReconstructInput:
        return prepare_reconstruct_input(self.data, self.product)


def real_scan(data_dir: Path, n: int = 64) -> RealScan:
    """The bottom half of ``siemens-star-small`` (the half the default model never saw) as a Ptychodus
    product on an object grid just large enough for it. The real scan has no physical units, so the
    object pixel is ``PIXEL_M`` and the detector pitch follows from it (:func:`detector_pixel`)."""
    _, test = spatial_split(load_siemens_star(data_dir / "siemens-star-small.npz.bz2", n))
    xs = test.xcoords - np.floor(test.xcoords.min()) + n // 2  # its positions start at y ~ 100
    ys = test.ycoords - np.floor(test.ycoords.min()) + n // 2
    W, H = int(np.ceil(xs.max())) + n // 2 + 1, int(np.ceil(ys.max())) + n // 2 + 1
    pixel = PixelGeometry(PIXEL_M, PIXEL_M)
    obj = Object(np.ones((H, W), np.complex64), pixel, ObjectCenter(0.0, 0.0))
    geometry = obj.get_geometry()
    # project centres are N//2, Ptychodus' are (N-1)/2: half a pixel apart for even N
    x_m = geometry.center_x_m + (xs - 0.5 - (W - 1) / 2) * PIXEL_M
    y_m = geometry.center_y_m + (ys - 0.5 - (H - 1) / 2) * PIXEL_M
    indexes = np.arange(len(test))
    positions = ProbePositionSequence([ProbePosition(int(i), float(x), float(y))
                                       for i, x, y in zip(indexes, x_m, y_m, strict=True)])
    product = Product(metadata=metadata("siemens-star"), probe_positions=positions,
                      probes=ProbeSequence(test.probeGuess[None], None, pixel), object_=obj, losses=[])
    counts = (test.diff3d.astype(np.float64) ** 2).astype(np.float32)
    data = AssembledDiffractionData(indexes, counts, detector_pixel(n), np.zeros((n, n), dtype=bool))
    return RealScan(test.diff3d, np.column_stack([xs, ys]), data, product)
