"""Ptychodus <-> project conversion, shared by the ONNX and the HTTP reconstructor.

Into the project (``scan_from_input``):

- bad pixels are inpainted with Ptychodus' own biharmonic ``inpaint_bad_pixels``, the repair the
  built-in PtychoPINN backends use and the one :func:`raw_data_from_input` applies to exported
  training data, so a model sees the same preprocessing at training and at inference;
- counts -> float32 amplitudes ``sqrt(counts)`` with :func:`ptycho_torch.data.counts_to_amplitude`;
- probe positions in metres -> object pixels with the installed Ptychodus'
  ``ObjectGeometry.map_probe_positions_to_object_{x,y}_px``. Ptychodus puts a patch's centre at
  pixel ``(N-1)/2``, this project at ``N//2``; both count object pixels from the same array
  origin, so only the patch-centre offset ``N//2 - (N-1)/2`` is added;
- the probe modes ``(P, N, N)`` (OPR mode 0), and the object pixel size.

Back to Ptychodus (:class:`ObjectGrid`): the stitched canvas is pasted onto the input object's own
pixel grid (same shape, pixel size and centre; uncovered pixels are 0); metadata is passed through
unchanged, and so are the probe and positions unless the refinement refined them: a refined probe
replaces the probe without OPR (mode 0 of the OPR axis, what went in), and a corrected position moves
its probe position by the correction in pixels times the object pixel size (the map into pixels is
linear), keeping its index and photon count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from ptychodus.api.object import Object
from ptychodus.api.preprocess.diffraction import inpaint_bad_pixels
from ptychodus.api.probe import ProbeSequence
from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
from ptychodus.api.product import LossValue, Product
from ptychodus.api.reconstruct import ReconstructInput, ReconstructOutput

from ptycho_torch.data import RawData, counts_to_amplitude
from ptycho_torch.errors import ConfigError, DataContractError
from ptycho_torch.pipeline import describe_refinement, refinement_summary
from ptycho_torch.pixel_size import METADATA_KEY as PIXEL_SIZE_KEY, check_pixel_size
from ptycho_torch.plan import ReconstructOptions
from ptycho_torch.refinement import refine_stitched

__all__ = ["ObjectGrid", "Scan", "check_model_geometry", "moved_positions", "raw_data_from_input", "refine_outputs",
           "refined_probes", "scan_from_input"]

log = logging.getLogger(__name__)

MIN_COVERAGE = 1e-6
"""Coverage below this is floating-point dust, not data: a position that is a whole pixel in metres
maps to e.g. 15.9999999 px, whose bilinear splat puts a 1e-9 weight on the next pixel over."""


@dataclass(frozen=True)
class Scan:
    """A Ptychodus scan in the project's conventions."""

    amplitudes: npt.NDArray[np.float32]
    """``(S, N, N)`` sqrt(counts), bad pixels inpainted, DC at the centre."""
    positions: npt.NDArray[np.float64]
    """``(S, 2)`` ``[x, y]`` object pixels of each patch's centre pixel ``N // 2``."""
    probe: npt.NDArray[np.complex64]
    """``(P, N, N)`` incoherent probe modes."""
    pixel_size_m: float
    """Object (= probe) pixel size, square."""

    @property
    def N(self) -> int:  # the project-wide name of the patch size
        return int(self.amplitudes.shape[-1])


def _centre_offset(N: int) -> float:
    """Project patch centre ``N//2`` minus Ptychodus' ``(N-1)/2``: 0.5 for even N, 0 for odd."""
    return N // 2 - (N - 1) / 2


def _object_pixel_size(parameters: ReconstructInput) -> float:
    """The object pixel size; raises unless pixels are square and match the probe's."""
    obj = parameters.product.object_.get_pixel_geometry()
    probe = parameters.product.probes.get_pixel_geometry()
    if not np.isclose(obj.width_m, obj.height_m, rtol=1e-6):
        raise ConfigError(
            f"object pixels must be square for PtychoPINN, got {obj.width_m:.4g} m x {obj.height_m:.4g} m; "
            "set equal pixel width and height in the product's object settings"
        )
    if probe is not None and not (np.isclose(probe.width_m, obj.width_m, rtol=1e-6)
                                  and np.isclose(probe.height_m, obj.height_m, rtol=1e-6)):
        raise ConfigError(
            f"object pixel size must equal the probe pixel size, got object {obj.width_m:.4g} m and probe "
            f"{probe.width_m:.4g} m; rebuild the object (or probe) so both use the far-field pixel size"
        )
    return float(obj.width_m)


def _positions_px(parameters: ReconstructInput, N: int) -> npt.NDArray[np.float64]:
    geometry = parameters.product.object_.get_geometry()
    positions = parameters.product.probe_positions
    offset = _centre_offset(N)
    return np.column_stack((
        geometry.map_probe_positions_to_object_x_px(positions) + offset,
        geometry.map_probe_positions_to_object_y_px(positions) + offset,
    ))


def _amplitudes(parameters: ReconstructInput) -> npt.NDArray[np.float32]:
    patterns = parameters.diffraction_patterns
    if patterns.ndim != 3 or patterns.shape[1] != patterns.shape[2]:
        raise DataContractError(
            f"diffraction patterns must be square (S, N, N), got shape {patterns.shape}; crop the detector "
            "to a square N x N around the beam centre ([Diffraction] crop settings)"
        )
    if len(patterns) != len(parameters.product.probe_positions):
        raise DataContractError(
            f"there must be one probe position per diffraction pattern, got {len(patterns)} patterns and "
            f"{len(parameters.product.probe_positions)} positions; load matching positions"
        )
    bad = parameters.bad_pixels
    if bad.any():
        log.info("inpainting %d bad pixels (biharmonic, as for exported training data)", int(bad.sum()))
    return counts_to_amplitude(inpaint_bad_pixels(patterns, bad), source="Ptychodus diffraction patterns")


def scan_from_input(parameters: ReconstructInput) -> Scan:
    """Convert a Ptychodus ``ReconstructInput`` into the project's arrays (see the module docstring)."""
    amplitudes = _amplitudes(parameters)
    N = amplitudes.shape[-1]
    probe = np.asarray(parameters.product.probes.get_probe_no_opr().get_array(), dtype=np.complex64)
    if probe.shape[-2:] != (N, N):
        raise DataContractError(
            f"the probe must be {N}x{N} like the diffraction patterns, got {probe.shape[-2]}x{probe.shape[-1]}; "
            "rebuild the probe for the cropped detector size"
        )
    return Scan(amplitudes, _positions_px(parameters, N), probe.reshape(-1, N, N), _object_pixel_size(parameters))


def check_model_geometry(scan: Scan, *, N: int, gridsize: int, model: str,
                         pixel_size_m: float | None = None) -> None:
    """Raise :class:`ConfigError` unless ``scan`` fits a model of patch size ``N`` and ``gridsize``
    trained at object pixel size ``pixel_size_m`` (metres, None: unknown, not checked)."""
    try:
        check_pixel_size(scan.pixel_size_m, pixel_size_m, model=f"model {model}")
    except DataContractError as error:
        raise ConfigError(f"{error} (the product's object pixel size)") from None
    if scan.N != N:
        raise ConfigError(
            f"diffraction patterns must be {N}x{N} for model {model} (trained with N={N}), got "
            f"{scan.N}x{scan.N}; crop the detector to {N}x{N} ([Diffraction] CropWidth/CropHeight = {N}) or "
            f"choose a model trained with N={scan.N}"
        )
    if len(scan.amplitudes) < gridsize * gridsize:
        raise ConfigError(
            f"the scan must hold at least gridsize**2 = {gridsize * gridsize} patterns for model {model} "
            f"(gridsize={gridsize}), got {len(scan.amplitudes)}; load the whole scan"
        )


class ObjectGrid:
    """Stitched results pasted onto the input object's pixel grid, merged by their coverage weights.

    Each result is a weighted average ``sum(w p) / sum(w)`` with ``coverage = sum(w)``, so summing
    ``canvas * coverage`` and ``coverage`` over results (chunks of one scan) and dividing gives
    exactly the one-shot average. Uncovered pixels (coverage <= ``MIN_COVERAGE``) are 0.
    """

    def __init__(self, parameters: ReconstructInput) -> None:
        self._parameters = parameters
        obj = parameters.product.object_
        self.shape = (obj.height_px, obj.width_px)
        self._weighted = np.zeros(self.shape, np.complex128)
        self._coverage = np.zeros(self.shape, np.float64)

    def add(self, amplitude: npt.NDArray[np.floating], phase: npt.NDArray[np.floating],
            coverage: npt.NDArray[np.floating], origin: tuple[float, float]) -> None:
        """Paste one ``(h, w)`` stitched canvas whose ``origin`` ``(x0, y0)`` is the canvas ``(col, row)``
        of object pixel ``(0, 0)``; covered pixels outside the object grid are dropped with a warning."""
        x0, y0 = origin
        if not (float(x0).is_integer() and float(y0).is_integer()):
            raise DataContractError(f"stitching origin must be whole pixels, got {origin}; this is a bug in the stitcher")
        x0, y0 = int(x0), int(y0)
        H, W = self.shape
        ch, cw = coverage.shape
        r0, c0, r1, c1 = max(0, -y0), max(0, -x0), min(H, ch - y0), min(W, cw - x0)
        inside = (slice(r0 + y0, r1 + y0), slice(c0 + x0, c1 + x0))
        lost = int(np.count_nonzero(coverage > MIN_COVERAGE)) - int(np.count_nonzero(coverage[inside] > MIN_COVERAGE))
        if lost:
            log.warning("%d reconstructed pixels fall outside the %dx%d object grid and were dropped; enlarge "
                        "the object to keep them", lost, W, H)
        if r1 <= r0 or c1 <= c0:
            return
        weight = coverage[inside]
        self._weighted[r0:r1, c0:c1] += weight * amplitude[inside] * np.exp(1j * phase[inside])
        self._coverage[r0:r1, c0:c1] += weight

    def canvas(self) -> tuple[npt.NDArray[np.complex128], npt.NDArray[np.float64]]:
        """The merged object on the grid (0 where uncovered) and its coverage."""
        array = np.zeros(self.shape, np.complex128)
        np.divide(self._weighted, self._coverage, out=array, where=self._coverage > MIN_COVERAGE)
        return array, self._coverage

    def product(self, array: npt.NDArray[np.complexfloating] | None = None,
                losses: list[LossValue] | None = None, *, probe: npt.NDArray[np.complexfloating] | None = None,
                shift_px: npt.NDArray[np.floating] | None = None) -> Product:
        """The input product with its object replaced by the merged results, or by ``array`` (same
        grid, pixel size and centre), and ``losses``; metadata unchanged. ``probe`` ``(P, N, N)``: a
        refined probe (:func:`refined_probes`); ``shift_px`` ``(S, 2)`` ``[dx, dy]`` object pixels: position
        corrections (:func:`moved_positions`); None: the input's probe and positions, unchanged."""
        product = self._parameters.product
        obj = product.object_
        if obj.num_layers > 1:
            log.warning("the input object has %d layers; PtychoPINN reconstructs one thin layer", obj.num_layers)
        merged = self.canvas()[0] if array is None else array
        pixels = obj.get_pixel_geometry()
        return Product(
            metadata=product.metadata,
            probe_positions=(product.probe_positions if shift_px is None else
                             moved_positions(product.probe_positions, shift_px, pixels.width_m, pixels.height_m)),
            probes=product.probes if probe is None else refined_probes(product.probes, probe),
            object_=Object(merged.astype(obj.get_array().dtype), pixels, obj.get_center()),
            losses=losses or [],
        )


def refined_probes(probes: ProbeSequence, modes: npt.NDArray[np.complexfloating]) -> ProbeSequence:
    """``probes`` with the probe that went into the refinement (OPR mode 0, its incoherent modes) replaced
    by the refined ``modes`` ``(P, N, N)``, in the input's dtype and pixel geometry; the OPR weights and
    modes are kept when the incoherent mode count is unchanged, else dropped (with a log line)."""
    array = probes.get_array()  # (OPR modes, incoherent modes, N, N)
    refined = np.asarray(modes).astype(array.dtype)
    if refined.shape == array.shape[1:]:
        replaced = array.copy()
        replaced[0] = refined
        return ProbeSequence(replaced, probes.get_opr_weights_or_none(), probes.get_pixel_geometry())
    if array.shape[0] > 1:
        log.warning("the refined probe has %d incoherent modes, the input %d: its OPR modes are dropped",
                    len(refined), array.shape[1])
    return ProbeSequence(refined, None, probes.get_pixel_geometry())


def moved_positions(positions: ProbePositionSequence, shift_px: npt.NDArray[np.floating], pixel_width_m: float,
                    pixel_height_m: float) -> ProbePositionSequence:
    """``positions`` (metres) moved by ``shift_px`` ``(S, 2)`` ``[dx, dy]`` object pixels of
    ``pixel_width_m`` x ``pixel_height_m`` (Ptychodus' metres -> pixels map is linear, so a shift in
    pixels is the shift in metres over the pixel size); indexes and photon counts kept."""
    shift = np.asarray(shift_px, np.float64)
    x_m = positions.get_coordinates_x_m() + shift[:, 0] * pixel_width_m
    y_m = positions.get_coordinates_y_m() + shift[:, 1] * pixel_height_m
    counts = positions.get_probe_photon_counts()
    return ProbePositionSequence([
        ProbePosition(int(index), float(x), float(y), None if counts is None else float(counts[k]))
        for k, (index, x, y) in enumerate(zip(positions.get_indexes(), x_m, y_m, strict=True))])


def refine_outputs(grid: ObjectGrid, scan: Scan, options: ReconstructOptions, *, progress: int
                   ) -> Iterator[ReconstructOutput]:
    """Refine the grid's object (or a flat one, as ``options.refine_start`` says) against the scan with its
    probe, in this process, as ``options`` ask (:meth:`~ptycho_torch.plan.ReconstructOptions.refinement`);
    one output per iteration (progress ``progress + iteration``) whose losses are the amplitude error
    after each iteration (Ptychodus plots them), carrying the refined probe and the corrected positions
    when ``refine_probe`` and ``refine_positions`` ask for them. Closing the generator stops it."""
    settings = options.refinement()
    if settings is None:
        return
    canvas, coverage = grid.canvas()
    states = refine_stitched(scan.amplitudes, scan.positions, scan.probe, canvas, coverage, (0.0, 0.0), settings,
                             start=options.refine_start)
    for step in states:
        state = step.state
        if state.iteration == 0:
            continue
        losses = [LossValue(epoch=i, value=entry["amplitude_error"]) for i, entry in enumerate(state.history)]
        log.info("refinement iteration %d/%s: amplitude error %.4g", state.iteration, settings.iterations,
                 state.history[-1]["amplitude_error"])
        if state.stop_reason is not None:  # the last state
            _log_stop(refinement_summary(settings, options.refine_start, step, scan.positions), state.history[-1])
        product = grid.product(step.canvas, losses, probe=state.probe if settings.refine_probe else None,
                               shift_px=state.positions - scan.positions if settings.refine_positions else None)
        yield ReconstructOutput(product, progress=progress + state.iteration)


def _log_stop(summary: dict[str, Any], final: dict[str, Any]) -> None:
    """Why the refinement stopped, its final data fit and its warnings, in Ptychodus' log."""
    log.info("%s; final data fit: median Poisson NLL per pixel %.4g, R-factor %.3f", describe_refinement(summary),
             final["nll_median"], final["r_factor_median"])
    for warning in summary["warnings"]:
        log.warning("%s", warning)


def raw_data_from_input(parameters: ReconstructInput) -> RawData:
    """The scan as the project's NPZ contract (what ``ptychopinn train`` reads)."""
    scan = scan_from_input(parameters)
    metadata = parameters.product.metadata
    return RawData.from_coords_without_pc(
        xcoords=scan.positions[:, 0],
        ycoords=scan.positions[:, 1],
        diff3d=scan.amplitudes,
        probeGuess=scan.probe,
        metadata={
            "origin": "exported from Ptychodus by ptychopinn-serve",
            "product": metadata.name,
            PIXEL_SIZE_KEY: scan.pixel_size_m,  # so `ptychopinn export` records it in the bundle
            "photon_energy_eV": metadata.photon_energy_eV,
            "detector_distance_m": metadata.detector_distance_m,
            "bad_pixels_inpainted": int(parameters.bad_pixels.sum()),
        },
    )
