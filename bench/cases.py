"""Solver benchmark cases (``python -m bench solver``): scans that need probe refinement, position
correction and more than a handful of iterations.

- **Weak contrast, another instrument** (:func:`weak_contrast_scan`): a generated object of weak
  contrast (a Gaussian random field, :func:`ptycho_torch.simulation.grf_object`, rescaled to
  amplitude 0.9-1.0 and phase within +-0.15 rad), probed with the Siemens star's probe (the
  Velociprobe zone-plate probe of ``data/siemens-star-small.npz.bz2``, a different instrument from
  the gold-ball data everything else was tuned on). The probe is brought to N by
  ``ptycho_torch.data.fourier_resample_probe``, exactly as ``load_siemens_star`` does for a
  detector cropped to N: the central N x N of the probe's 128 x 128 orthonormal spectrum, so the
  object pixel is 128/N times the file's (2x at N = 64) and the probe keeps its shape and ~14 px
  radius at N = 64. A raster of ``side x side`` positions at a step of N/8 (8 px at N = 64; 20 x 20 =
  400 patterns), each position jittered by up to +-1 px x N/64 (a perfect raster lets a refined
  probe absorb a raster-periodic part of the object: the raster grid pathology), Poisson noise at 1e6 photons per
  pattern (:func:`simulate_subpixel`: ``simulate_scan``'s scaling and noise, but a sub-pixel position
  moves the probe by a Fourier shift over the integer object window, the forward model of both
  solvers, instead of interpolating the object bilinearly, which blurs each pattern's object by a
  different amount: a model error of a few per cent of this object's contrast that neither solver
  has). Variants: the solver is given the true
  positions, or the true positions plus uniform random errors of up to +-2 px per axis at N = 64
  (+-1 px at N = 32: lengths scale with N; the scan is always simulated at the true positions). The solver starts from the true probe (the issue's "true
  probe sent in the request") and, when the case says so, refines it.
- **The real Siemens star** (:func:`siemens_cases`): tike's Velociprobe scan, detector cropped to
  N; the held-out bottom half (``spatial_split``), the file's probe (which is not the probe of the
  measurement: it must be refined), scored against a full-scan reconstruction with probe refinement
  run to convergence (computed by :mod:`bench.solver`, never a time-to-quality run).

Coordinates are the project's: positions ``[x, y]`` are patch centres in object pixels, patch pixel
``(r, c)`` sees object row ``y - N/2 + r``; every case's object grid has its origin at object
position (0, 0). Each case is scored on :attr:`SolverCase.box`, the bounding box of the true patch
centres (every pixel in it lies under several probe positions).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft

from ptycho_torch.data import RawData, counts_to_amplitude, load_siemens_star, spatial_split
from ptycho_torch.simulation import grf_object

ROOT = Path(__file__).resolve().parents[1]
SIEMENS = ROOT / "data" / "siemens-star-small.npz.bz2"

WEAK_AMPLITUDE = (0.9, 1.0)
"""Amplitude range of the weak-contrast object."""
WEAK_PHASE_RAD = 0.3
"""Peak-to-peak phase of the weak-contrast object (radians)."""
CORRELATION_PX = 4.0
"""Correlation length of the weak-contrast object's random fields (pixels)."""
JITTER_PX = 1.0
"""Largest random offset of a true position from its raster node (each axis) at N = 64 (scaled by N/64)."""
POSITION_ERROR_PX = 2.0
"""Largest random error of a given position (each axis, uniform) in the position-error variant at N = 64;
a smaller N (``--quick``, ``--smoke``) scales it by N/64, so the case keeps its geometry in probe widths."""
MARGIN_PX = 4
"""Object margin beyond the outermost raster node's window (covers the jitter)."""


def box_of(positions: np.ndarray) -> tuple[slice, slice]:
    """(rows, cols) slices of the bounding box of patch centres ``[x, y]`` (the scored region)."""
    x, y = positions[:, 0], positions[:, 1]
    return (slice(int(np.ceil(y.min())), int(np.floor(y.max())) + 1),
            slice(int(np.ceil(x.min())), int(np.floor(x.max())) + 1))


@dataclass(frozen=True)
class WeakContrastScan:
    """A simulated weak-contrast scan: what was measured, what is true, and what the solver is told."""

    scan: RawData
    """The simulated scan at the true positions (``diff3d`` amplitudes, ``probeGuess`` the true probe)."""
    truth: np.ndarray
    """(H, W) complex64 ground-truth object; positions are in its pixels."""
    true_positions: np.ndarray
    """(S, 2) [x, y] where the patterns were simulated."""
    given_positions: np.ndarray
    """(S, 2) [x, y] what the solver is given (the true positions plus the errors, if any)."""
    probe: np.ndarray
    """(N, N) complex64 the true probe, scaled so ``|fft2(probe * patch, 'ortho')|**2`` are expected counts."""


def star_probe(N: int) -> np.ndarray:
    """The Siemens star file's probe brought to N by Fourier cropping (see the module docstring); (N, N).

    ``load_siemens_star`` applies ``fourier_resample_probe`` to the file's probe for a
    detector cropped to N; its scale does not matter here (:func:`simulate_subpixel` sets the dose)."""
    return _star_probe(N).copy()


@functools.lru_cache(maxsize=4)
def _star_probe(N: int) -> np.ndarray:  # the star file is read once per N (bz2: about a second)
    return np.asarray(siemens_scan(N)[0].probeGuess, np.complex64).reshape(N, N)


def subpixel_intensity(obj: np.ndarray, probe: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Noiseless patterns of ``obj`` at patch centres ``(x, y)``, (S, N, N) float64, fftshifted: pattern
    ``j`` is ``|FFT_ortho(P_j * O[window_j])|**2`` with the window at the integer pixel below
    ``(x, y) - N/2`` and ``P_j`` the probe moved by the remaining fraction with a Fourier shift."""
    N = probe.shape[-1]
    corner = np.stack([x, y], axis=1) - N / 2
    first = np.floor(corner).astype(np.int64)
    fraction = corner - first
    if first.min() < 0 or (first + N).max() > min(obj.shape):
        raise ValueError("every window must lie inside the object")
    k = np.fft.fftfreq(N)
    spectrum = scipy.fft.fft2(probe.astype(np.complex128))
    ramp = np.exp(-2j * np.pi * (fraction[:, 1, None, None] * k[None, :, None]
                                 + fraction[:, 0, None, None] * k[None, None, :]))
    probes = scipy.fft.ifft2(spectrum[None] * ramp)
    rows = first[:, 1, None] + np.arange(N)
    cols = first[:, 0, None] + np.arange(N)
    windows = obj[rows[:, :, None], cols[:, None, :]]
    intensity = np.abs(scipy.fft.fft2(probes * windows, norm="ortho")) ** 2
    return np.fft.fftshift(intensity, axes=(-2, -1))


def simulate_subpixel(obj: np.ndarray, probe: np.ndarray, x: np.ndarray, y: np.ndarray, *, nphotons: float,
                      seed: int, metadata: dict | None = None) -> RawData:
    """A scan of ``obj`` at patch centres ``(x, y)`` (:func:`subpixel_intensity`) scaled to ``nphotons``
    mean counts per pattern, Poisson noise (the layout and metadata of
    ``ptycho_torch.simulation.simulate_scan``)."""
    intensity = subpixel_intensity(obj, probe, x, y)
    scale = float(np.sqrt(nphotons / intensity.sum(axis=(-2, -1)).mean()))
    counts = np.random.default_rng(seed).poisson(intensity * scale**2)
    info = {"nphotons": float(nphotons), "probe_factor": scale, "diffraction": "sqrt(counts)", "noise_seed": seed,
            "subpixel": "Fourier-shifted probe over the integer window"}
    return RawData.from_coords_without_pc(
        x, y, counts_to_amplitude(counts, source="simulate"), (probe * scale).astype(np.complex64), objectGuess=obj,
        metadata={**(metadata or {}), **info})


def weak_object(size: int, seed: int) -> np.ndarray:
    """A ``size x size`` weak-contrast object: the project's GRF object (amplitude 0.5-1, phase
    +-pi/2) mapped linearly to amplitude :data:`WEAK_AMPLITUDE` and phase +-:data:`WEAK_PHASE_RAD`/2."""
    grf = grf_object(size, np.random.default_rng(seed), correlation_length=CORRELATION_PX)
    lo, hi = WEAK_AMPLITUDE
    amplitude = lo + (hi - lo) * (np.abs(grf) - 0.5) / 0.5
    phase = np.angle(grf) * (WEAK_PHASE_RAD / np.pi)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def weak_contrast_scan(N: int = 64, side: int = 20, *, nphotons: float = 1e6, position_error_px: float = 0.0,
                       seed: int = 0) -> WeakContrastScan:
    """The weak-contrast scan of the module docstring: ``side x side`` positions at a step of N/8.

    The object, the jitter and the noise depend on ``seed`` only, so the variants with and without
    position errors share the same measurement; the errors come from their own generator."""
    step = N / 8
    size = int(np.ceil((side - 1) * step + N + 2 * MARGIN_PX))
    truth = weak_object(size, seed)
    rng = np.random.default_rng(seed + 1)
    nodes = N / 2 + MARGIN_PX + step * np.arange(side)
    x, y = (v.ravel() for v in np.meshgrid(nodes, nodes))
    jitter = JITTER_PX * N / 64
    x = x + rng.uniform(-jitter, jitter, x.shape)
    y = y + rng.uniform(-jitter, jitter, y.shape)
    scan = simulate_subpixel(truth, star_probe(N), x, y, nphotons=nphotons, seed=seed + 2,
                             metadata={"source": "bench.cases.weak_contrast_scan (GRF object, Siemens-star probe)"})
    true_positions = np.stack([x, y], axis=1)
    errors = np.random.default_rng(seed + 3).uniform(-position_error_px, position_error_px, true_positions.shape)
    return WeakContrastScan(scan=scan, truth=truth, true_positions=true_positions,
                            given_positions=true_positions + errors, probe=scan.probeGuess.astype(np.complex64))


@dataclass(frozen=True)
class SolverCase:
    """One scan for the solvers: the measured amplitudes, what the solver is given, what it is scored against."""

    name: str
    label: str
    amplitudes: np.ndarray
    """(S, N, N) float32 measured amplitudes (sqrt of counts), DC at the centre."""
    positions: np.ndarray
    """(S, 2) [x, y] the positions the solver is given."""
    probe: np.ndarray
    """(P, N, N) complex64 the probe the solver starts from."""
    object_shape: tuple[int, int]
    box: tuple[slice, slice]
    """The scored region on the object grid."""
    refine_probe: bool
    refine_positions: bool
    truth: np.ndarray | None = None
    """Ground truth on the object grid (simulated cases); None: a full-scan reference is computed."""
    true_positions: np.ndarray | None = None
    full_scan: SolverCase | None = None
    """The whole scan on the same grid (the star): what the reference is reconstructed from."""
    quality_parts: tuple[str, ...] = ("amplitude", "phase")
    """The SSIMs whose targets count for the time to quality (the star: the phase only, see
    :func:`siemens_cases`)."""
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> np.ndarray:
        """(S, N, N) float64 photon counts (pty-chi's input)."""
        return self.amplitudes.astype(np.float64) ** 2


def weak_contrast_cases(N: int = 64, side: int = 20, *, nphotons: float = 1e6, seed: int = 0) -> list[SolverCase]:
    """The weak-contrast case at the true positions (``weak_contrast``) and with random position errors
    of up to +-2 px x N/64 per axis (``weak_contrast_pos_errors``, positions refined)."""
    cases = []
    for error in (0.0, POSITION_ERROR_PX * N / 64):
        weak = weak_contrast_scan(N, side, nphotons=nphotons, position_error_px=error, seed=seed)
        tag = "" if error == 0 else "_pos_errors"
        given = "true positions" if error == 0 else f"positions with +-{error:g} px random errors"
        cases.append(SolverCase(
            name=f"weak_contrast{tag}",
            label=f"weak contrast (GRF, amplitude 0.9-1, phase +-0.15 rad), star probe, {N // 8} px step, "
                  f"{len(weak.scan)} patterns, {nphotons:.0e} photons, {given}",
            amplitudes=weak.scan.diff3d.astype(np.float32), positions=weak.given_positions,
            probe=weak.probe.reshape(1, N, N), object_shape=weak.truth.shape, box=box_of(weak.true_positions),
            refine_probe=True, refine_positions=error > 0, truth=weak.truth, true_positions=weak.true_positions,
            notes=[f"true probe given, refined; positions {'refined' if error > 0 else 'fixed'}"]))
    return cases


def siemens_scan(N: int) -> tuple[RawData, tuple[int, int]]:
    """The real Siemens-star scan, detector cropped to N (its own measured dose), and its object grid."""
    scan = load_siemens_star(SIEMENS, n=N)
    shape = (int(np.ceil(scan.ycoords.max() + N / 2)) + 2, int(np.ceil(scan.xcoords.max() + N / 2)) + 2)
    return scan, shape


def _star_case(name: str, label: str, scan: RawData, shape: tuple[int, int], **extra: object) -> SolverCase:
    N = scan.diff3d.shape[-1]
    positions = np.stack([scan.xcoords, scan.ycoords], axis=1).astype(np.float64)
    return SolverCase(name=name, label=label, amplitudes=scan.diff3d.astype(np.float32), positions=positions,
                      probe=np.asarray(scan.probeGuess, np.complex64).reshape(-1, N, N), object_shape=shape,
                      box=box_of(positions), refine_probe=True, refine_positions=False, **extra)  # type: ignore[arg-type]


def siemens_cases(N: int = 64) -> list[SolverCase]:
    """The real star's held-out bottom half (flat start, the file's probe, refined), with the full scan
    it is scored against. Its time to quality counts the phase SSIM only: at N = 64 the full-scan
    references of pty-chi (LSQML, 150 epochs) and ours (ER, 400 iterations) agree on the phase (SSIM
    0.983, correlation 0.990) but not on the amplitude (SSIM 0.69): the star barely absorbs (amplitude
    std 6 % of its mean), and what is left of the amplitude is mostly a noise texture each solver draws
    its own way, so an amplitude target would favour whichever solver made the reference."""
    scan, shape = siemens_scan(N)
    full = _star_case("siemens_full", "real Siemens star, full scan (reference)", scan, shape)
    test = spatial_split(scan, axis="y", fraction=0.5)[1]
    return [_star_case("siemens", f"real Siemens star (APS Velociprobe), held-out bottom half, {len(test)} "
                       "patterns, the file's probe refined", test, shape, full_scan=full, quality_parts=("phase",),
                       notes=["scored against a full-scan reconstruction (probe refined) run to convergence",
                              "time to quality on the phase SSIM only: the star barely absorbs, and two converged "
                              "full-scan references agree on the phase but not on the amplitude's noise texture"])]
