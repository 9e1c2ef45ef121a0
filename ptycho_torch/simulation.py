"""Simulate ptychography scans (numpy only): synthetic objects, probes, scan paths, diffraction.

Forward model (incoherent probe modes ``P_m``, object patch ``O_j`` at position ``j``)::

    I_j = sum_m |fftshift(fft2(s * P_m * O_j, norm="ortho"))|**2,   counts_j ~ Poisson(I_j)

with ``s`` chosen so that the mean over patterns of ``sum_hw I_j`` equals ``nphotons``. The written
scan stores ``diffraction = sqrt(counts)`` (amplitudes in photon units, fftshifted) and
``probeGuess = s * P``, so ``|fft2(probeGuess * patch, 'ortho')|**2`` is the expected count of
each pixel; ``objectGuess`` is the ground-truth object and ``_metadata`` records ``nphotons``,
``probe_factor`` (= s; not the model's ``intensity_scale``), the object kind, probe origin, scan kind and seed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.fft
from scipy.ndimage import gaussian_filter

from ptycho_torch.data import RawData, counts_to_amplitude
from ptycho_torch.errors import DataContractError
from ptycho_torch.grouping import extract_patches

ObjectKind = Literal["lines", "grf"]
ScanKind = Literal["random", "raster"]
_CHUNK = 256  # patterns per batched FFT, bounds memory to a few tens of MB


def _to_complex(texture: np.ndarray, phase_range: float) -> np.ndarray:
    """Map a texture to amplitude in [0.5, 1] and phase in [-phase_range/2, phase_range/2]."""
    t = (texture - texture.min()) / max(float(np.ptp(texture)), 1e-12)
    return ((0.5 + 0.5 * t) * np.exp(1j * phase_range * (t - 0.5))).astype(np.complex64)


def lines_object(size: int, rng: np.random.Generator, *, n_lines: int = 400, phase_range: float = np.pi / 2) -> np.ndarray:
    """PtychoPINN's "lines" object (as in hoidn/PtychoPINN): random straight lines on a ``2*size`` canvas,
    blurred as ``gf(1) + 2 gf(5) + 5 gf(10)``, central ``size x size`` kept; the same texture sets
    amplitude ([0.5, 1]) and phase."""
    canvas_size = 2 * size
    ends = rng.uniform(0, canvas_size - 1, size=(n_lines, 2, 2))  # (line, end, [row, col])
    t = np.linspace(0.0, 1.0, 2 * canvas_size)[None, :, None]
    points = np.rint(ends[:, :1] + t * (ends[:, 1:] - ends[:, :1])).astype(np.int64).reshape(-1, 2)
    canvas = np.zeros((canvas_size, canvas_size))
    canvas[points[:, 0], points[:, 1]] = 1.0
    blurred = gaussian_filter(canvas, 1) + 2 * gaussian_filter(canvas, 5) + 5 * gaussian_filter(canvas, 10)
    lo = size // 2
    return _to_complex(blurred[lo:lo + size, lo:lo + size], phase_range)


def grf_object(size: int, rng: np.random.Generator, *, correlation_length: float = 6.0) -> np.ndarray:
    """A Gaussian-random-field object: independent smooth fields (Gaussian spectrum, correlation
    length in pixels) for amplitude ([0.5, 1]) and phase ([-pi/2, pi/2])."""
    freq = np.fft.fftfreq(size)
    spectrum = np.exp(-((freq[:, None] ** 2 + freq[None, :] ** 2) * (np.pi * correlation_length) ** 2))
    fields = np.fft.ifft2(np.fft.fft2(rng.standard_normal((2, size, size))) * spectrum).real
    amplitude = np.abs(_to_complex(fields[0], 0.0))
    phase = np.angle(_to_complex(fields[1], np.pi))
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def make_object(kind: ObjectKind, size: int, rng: np.random.Generator) -> np.ndarray:
    """Return a ``size x size`` complex64 synthetic object of ``kind`` ('lines' or 'grf')."""
    builders: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {"lines": lines_object, "grf": grf_object}
    if kind not in builders:
        raise DataContractError(f"`object` must be one of {sorted(builders)}, got {kind!r}")
    return builders[kind](size, rng)


def default_probe(N: int) -> np.ndarray:
    """A disk-like probe: a soft-edged disk of radius N/4 (2x oversampled) with a quadratic phase
    (a defocused aperture), peak amplitude 1; (N, N) complex64."""
    r = np.hypot(*np.meshgrid(np.arange(N) - N / 2, np.arange(N) - N / 2, indexing="ij"))
    amplitude = gaussian_filter((r < N / 4).astype(np.float64), sigma=1.0)
    return (amplitude / amplitude.max() * np.exp(1j * np.pi * r**2 / (2 * N))).astype(np.complex64)


def load_probe(path: str | Path, N: int) -> np.ndarray:
    """Load a probe (key ``probeGuess`` or ``probe``; (H, W) or (P, H, W) modes) and bring it to N.

    Resampling is a real-space centre crop or zero-pad around the intensity centroid, so the object
    pixel size of the file is kept (the gold-balls probe keeps about 93% of its energy at N=64).
    Returns (N, N) for one mode, else (P, N, N), complex64.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("probeGuess", "probe") if key in npz.files}
    except (OSError, ValueError) as error:
        raise DataContractError(f"`probe` must be 'default' or a readable NPZ file, got {str(path)!r} ({error})") from error
    if not arrays:
        raise DataContractError(f"`probe` is missing from {path}: expected key probeGuess or probe "
                                "(H, W) or (P, H, W) complex")
    probe = np.asarray(arrays.get("probeGuess", arrays.get("probe")), dtype=np.complex64)
    if probe.ndim not in (2, 3):
        raise DataContractError(f"`probe` must be (H, W) or (P, H, W) complex, got shape {probe.shape}")
    modes = probe.reshape(-1, *probe.shape[-2:])
    intensity = (np.abs(modes) ** 2).sum(axis=0)
    rows, cols = np.indices(intensity.shape)
    centre = np.rint([(intensity * rows).sum() / intensity.sum(), (intensity * cols).sum() / intensity.sum()])
    pad = N
    padded = np.pad(modes, ((0, 0), (pad, pad), (pad, pad)))
    top, left = (centre + pad - N // 2).astype(int)
    out = padded[:, top:top + N, left:left + N]
    return out[0] if out.shape[0] == 1 else out


def scan_positions(
    count: int, object_size: int, N: int, kind: ScanKind, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)`` patch centres (float64) keeping every ``N x N`` window inside the object:
    uniform random, or a raster filled row by row (the last row may be partial)."""
    lo, hi = N / 2, object_size - N / 2 - 1
    if hi <= lo:
        raise DataContractError(f"`object_size` must exceed N + 1 = {N + 1}, got {object_size}")
    if kind == "random":
        x, y = rng.uniform(lo, hi, size=(2, count))
        return x, y
    if kind == "raster":
        cols = int(np.ceil(np.sqrt(count)))
        rows = int(np.ceil(count / cols))
        grid_y, grid_x = np.meshgrid(np.linspace(lo, hi, rows), np.linspace(lo, hi, cols), indexing="ij")
        return grid_x.ravel()[:count], grid_y.ravel()[:count]
    raise DataContractError(f"`scan` must be 'random' or 'raster', got {kind!r}")


def far_field_intensity(patches: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """Return fftshifted ``sum_m |fft2(P_m * patch, 'ortho')|**2`` (S, N, N) float64, batched FFTs."""
    modes = probe.reshape(-1, *probe.shape[-2:])
    out = np.empty(patches.shape, dtype=np.float64)
    for start in range(0, patches.shape[0], _CHUNK):  # chunks of patterns, each one batched FFT
        field = scipy.fft.fft2(modes[None] * patches[start:start + _CHUNK, None], norm="ortho")
        out[start:start + _CHUNK] = (np.abs(field) ** 2).sum(axis=1)
    return np.fft.fftshift(out, axes=(-2, -1))


def simulate_scan(
    obj: np.ndarray, probe: np.ndarray, x: np.ndarray, y: np.ndarray, *, nphotons: float, seed: int | None = None,
    metadata: dict | None = None,
) -> RawData:
    """Diffract ``probe`` on ``obj`` at centres ``(x, y)`` with Poisson noise at ``nphotons`` mean
    photons per pattern; returns a contract scan (see the module docstring)."""
    if not (np.isfinite(nphotons) and nphotons > 0):
        raise DataContractError(f"`nphotons` must be a positive finite number, got {nphotons!r}")
    N = probe.shape[-1]
    intensity = far_field_intensity(extract_patches(obj, x, y, N), probe)
    scale = float(np.sqrt(nphotons / intensity.sum(axis=(-2, -1)).mean()))
    counts = np.random.default_rng(seed).poisson(intensity * scale**2)
    info = {"nphotons": float(nphotons), "probe_factor": scale, "diffraction": "sqrt(counts)", "noise_seed": seed}
    return RawData.from_coords_without_pc(
        x, y, counts_to_amplitude(counts, source="simulate"), (probe * scale).astype(np.complex64), objectGuess=obj,
        metadata={**(metadata or {}), **info},
    )


MIN_N, MAX_N = 8, 1024
"""Pattern sizes :func:`simulate` accepts (even: the contract centres the zero frequency at N/2)."""
MAX_OBJECT_SIZE = 8192
"""Largest simulated object side in pixels (1 GiB of complex128 before the float32 copy)."""


def simulate(
    *,
    object_kind: ObjectKind = "lines",
    N: int = 64,
    n_positions: int = 2000,
    nphotons: float = 1e6,
    probe: str | Path = "default",
    scan: ScanKind = "random",
    object_size: int | None = None,
    seed: int = 0,
) -> RawData:
    """Simulate a whole scan: object (``object_size``, default 4N), probe ('default' or an NPZ
    file), ``n_positions`` scan positions, Poisson diffraction at ``nphotons``."""
    if n_positions < 1:
        raise DataContractError(f"`positions` must be >= 1, got {n_positions}")
    if not (isinstance(N, int) and N % 2 == 0 and MIN_N <= N <= MAX_N):
        raise DataContractError(f"`N` must be an even number of pixels in [{MIN_N}, {MAX_N}], got {N!r} "
                                f"(the model takes powers of two >= 32, e.g. 64)")
    size = 4 * N if object_size is None else object_size
    if size > MAX_OBJECT_SIZE:
        raise DataContractError(f"`object_size` must be at most {MAX_OBJECT_SIZE} px (a larger object is "
                                f"{size}**2 complex pixels in memory), got {size}")
    rng = np.random.default_rng(seed)
    obj = make_object(object_kind, size, rng)
    probe_array = default_probe(N) if str(probe) == "default" else load_probe(probe, N)
    x, y = scan_positions(n_positions, size, N, scan, rng)
    metadata = {"object": object_kind, "probe": str(probe), "scan": scan, "seed": seed, "source": "ptychopinn simulate"}
    return simulate_scan(obj, probe_array, x, y, nphotons=nphotons, seed=int(rng.integers(2**32)), metadata=metadata)
