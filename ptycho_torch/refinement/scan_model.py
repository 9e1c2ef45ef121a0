"""A scan's forward model and the gradients of one pass over it (the arithmetic every update rule shares).

Pattern ``j`` at position ``x_j`` sees the exit waves ``psi_jm = P_jm * O_j`` of the incoherent probe modes
``P_m`` and the far field ``I_j = sum_m |FFT_ortho(psi_jm)|**2`` (the project's forward model,
:mod:`ptycho_torch.physics`). ``O_j`` is the ``N x N`` object window starting at the integer pixel below
``x_j - N/2``; the probe is moved by the remaining fraction with a Fourier shift, ``P_jm``.

One pass over a set of patterns computes, vectorised over a chunk of them::

    Psi = FFT(psi);   Psi' = Psi * sqrt(k) / sqrt(sum_m |Psi_m|**2)          (modulus projection)
    dpsi = IFFT(Psi') - psi                                                 (exit-wave correction)
    object:    sum_jm conj(P_jm) dpsi_jm  on the object grid, with  D = sum_jm |P_jm|**2
    probe:     sum_j  shift_-x_j(conj(O_j) dpsi_jm),                 with  D_P = sum_j |O_j|**2
    positions: the least-squares shift of each pattern, Re<P dO, dpsi> / ||P dO||**2 per axis, with dO the
               object's central difference (the intensity does not change when probe and window move
               together, so the probe's own derivative adds nothing to this inner product)

and the amplitude error ``sum (sqrt(I) - sqrt(k))**2``. Chunks are sized to stay in cache and run on
CPU threads (numpy and ``scipy.fft`` release the GIL); the sums are added in chunk order, so a result
does not depend on the thread count.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ptycho_torch.data_fit import DataFit, MeasuredCounts
from ptycho_torch.errors import DataContractError
from ptycho_torch.refinement.backend import ArrayBackend, array_backend, cpu_threads, default_backend

__all__ = ["CACHE_BYTES", "PassResult", "ScanModel"]

NO_SIGNAL_FRACTION = 0.01
"""A pattern with fewer counts than this fraction of the scan's median has no signal to locate it by."""
CACHE_BYTES = 4 << 20
"""Exit-wave bytes of one chunk of patterns: small enough to stay in a core's cache between the passes."""


@dataclass
class PassResult:
    """The sums of one pass over ``rows`` (see the module docstring); arrays live on the model's backend."""

    rows: npt.NDArray[np.int64]
    object_step: Any
    """``(H, W)`` complex64: ``sum conj(P) dpsi`` on the object grid."""
    illumination: Any
    """``(H, W)`` float32: ``D = sum |P|**2`` of these patterns on the object grid."""
    probe_step: Any = None
    """``(P, N, N)`` complex64: ``sum shift(conj(O) dpsi)`` (None unless asked for)."""
    object_power: Any = None
    """``(N, N)`` float32: ``D_P = sum |O_j|**2`` (None unless the probe step was asked for)."""
    shift_numerator: npt.NDArray[np.float64] | None = None
    """``(len(rows), 2)``: ``Re<P dO, dpsi>`` per pattern and axis ``[x, y]`` (None unless asked for)."""
    shift_denominator: npt.NDArray[np.float64] | None = None
    """``(len(rows), 2)``: ``||P dO||**2``; their ratio is the least-squares shift in pixels."""
    squared_error: float = 0.0
    """``sum (sqrt(I) - sqrt(k))**2`` of the object the pass started from."""


class _Scratch(threading.local):
    """Per-thread work arrays reused chunk after chunk: a pass's temporaries have the same few shapes every
    time, and a fresh multi-megabyte array per temporary costs its page faults again (one 100-pattern
    chunk at N=64: 10.4 ms with fresh temporaries, 5.7 ms reused, of which 2.9 ms are its FFTs). Each pool
    thread keeps at most one array per name, as large as the largest chunk it has seen."""

    def __init__(self) -> None:
        self.arrays: dict[str, Any] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: Any, xp: Any) -> Any:
        """A ``shape`` array of ``dtype`` (contents undefined) that stays this thread's until ``name`` is taken again."""
        size = math.prod(shape)
        array = self.arrays.get(name)
        if array is None or array.size < size or array.dtype != dtype or not isinstance(array, xp.ndarray):
            array = self.arrays[name] = xp.empty(size, dtype)
        return array[:size].reshape(shape)


_scratch = _Scratch()


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count for every model of the process (a pool per pass costs more than a small pass)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="refinement")


class ScanModel:
    """A scan: measured counts, the current probe modes and positions, and where they sit on an object grid.

    ``amplitudes`` ``(S, N, N)``: measured amplitudes (sqrt of counts), fftshifted (DC at the centre);
    ``positions`` ``(S, 2)`` ``[x, y]`` patch centres in object pixels; ``probe`` ``(N, N)`` or ``(P, N, N)``
    incoherent modes; ``shape`` and ``origin``: the object grid to refine on, object position ``(0, 0)`` at
    grid ``(col, row) = origin``. :attr:`shape` and :attr:`origin` are that grid grown (never shrunk) so
    every ``N x N`` window, ``margin`` pixels around it and a one-pixel border lie inside it; :attr:`crop`
    cuts the given grid back out. :attr:`probe` and :attr:`positions` are the model's current state
    (:meth:`set_probe`, :meth:`set_positions`); a position may move at most ``margin`` pixels.
    """

    def __init__(self, amplitudes: npt.ArrayLike, positions: npt.ArrayLike, probe: npt.ArrayLike, *,
                 shape: tuple[int, int], origin: tuple[float, float], max_bytes: int = 512 << 20,
                 workers: int = -1, backend: str | None = None, margin: int = 0) -> None:
        amps = np.asarray(amplitudes, dtype=np.float32)
        pos = np.asarray(positions, dtype=np.float64)
        modes = np.asarray(probe)
        if amps.ndim != 3 or amps.shape[1] != amps.shape[2]:
            raise DataContractError(f"`amplitudes` must be (S, N, N), got shape {amps.shape}")
        S, N = amps.shape[0], amps.shape[-1]
        if pos.shape != (S, 2):
            raise DataContractError(f"`positions` must be ({S}, 2) [x, y], got shape {pos.shape}")
        if not np.isfinite(pos).all():
            raise DataContractError("`positions` contain NaN or inf; every pattern needs a finite position")
        if modes.ndim not in (2, 3) or modes.shape[-2:] != (N, N):
            raise DataContractError(f"`probe` must be (N, N) or (P, N, N) with N={N}, got shape {modes.shape}")
        if not (np.abs(modes) > 0).any():
            raise DataContractError("`probe` is all zero; send the probe the scan was measured with")
        self.be: ArrayBackend = array_backend(default_backend() if backend is None else backend)
        xp = self.be.xp
        self.N, self.margin = N, int(margin)
        self.threads = cpu_threads(workers) if self.be.parallel else 1
        self.fft_workers = 1 if self.threads > 1 else workers
        self.measured = MeasuredCounts(np.fft.ifftshift(amps, axes=(-2, -1)))  # FFT layout: no shift per pass
        self.amplitudes = xp.asarray(self.measured.amplitudes)
        self.total_amplitude_power = float(self.measured.total)
        counts = np.square(amps, dtype=np.float64).sum(axis=(1, 2))
        self.has_signal = counts > NO_SIGNAL_FRACTION * np.median(counts)
        """``(S,)`` bool: patterns with counts enough to locate (a dropped, all-dark frame is not moved)."""

        # the grown grid: every window, the margin a position may move and a 1 px border for dO
        reach = self.margin + 1
        corner = pos - N / 2 + np.asarray(origin, dtype=np.float64)
        H, W = shape
        lo = np.minimum(np.floor(corner.min(axis=0)).astype(np.int64) - reach, 0)
        hi = np.maximum(np.floor(corner.max(axis=0)).astype(np.int64) + N + reach - np.array([W, H]), 0)
        self.pad = (int(-lo[1]), int(hi[1]), int(-lo[0]), int(hi[0]))  # top, bottom, left, right
        self.given_shape = (int(H), int(W))
        self.shape = (int(H + self.pad[0] + self.pad[1]), int(W + self.pad[2] + self.pad[3]))
        self.origin = (float(origin[0]) + self.pad[2], float(origin[1]) + self.pad[0])
        self.start_positions = pos.copy()

        P = len(modes.reshape(-1, N, N))
        # as many chunks as fit the cache, rounded up to a multiple of the threads so none waits for another
        chunks = max(1, math.ceil(S * P * N * N * 8 / CACHE_BYTES))
        self.chunk = math.ceil(S / (math.ceil(chunks / self.threads) * self.threads))
        # per pattern in flight: exit waves and spectrum (P modes), probes, gradients, counts
        self.bytes_per_pattern = N * N * (3 * 8 * P + 4 * 8 + 4 * 4)
        self._per_position_probe_bytes = S * P * N * N * 8
        self._max_bytes = max_bytes
        self._illumination_cache: Any = None
        self.positions = pos.copy()
        self._set_geometry(pos)
        self.set_probe(modes)
        # the given probe on every position's sub-pixel offset, if it fits: a fixed-probe refinement
        # then never shifts a probe again (a probe or position update drops it: the next would too)
        self._shifted: Any = None
        if self._fraction is not None and self._per_position_probe_bytes <= self._max_bytes // 2:
            self._shifted = self._shift_probes(np.arange(S))

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def peak_bytes(self) -> int:
        """Estimated working memory: the measured data, the object grids, cached probes and the chunks in flight."""
        shifted = 0 if self._shifted is None else self._per_position_probe_bytes
        grids = 4 * self.shape[0] * self.shape[1] * 8
        in_flight = self.threads * self.chunk * self.bytes_per_pattern
        return int(2 * self.measured.amplitudes.nbytes + shifted + grids + in_flight)

    # ---- state: probe and positions ----

    def set_probe(self, probe: Any) -> None:
        """Make ``probe`` ``(N, N)`` or ``(P, N, N)`` the current modes (complex64, on the backend)."""
        xp = self.be.xp
        self.probe = xp.asarray(probe, dtype=xp.complex64).reshape(-1, self.N, self.N)
        self._spectrum = self.be.fft2(self.probe)
        self._power = None
        self._illumination_cache = None
        self._shifted = None

    def set_positions(self, positions: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Move the patterns to ``positions`` ``(S, 2)``, each kept within ``margin`` pixels of where it
        started; returns the positions taken."""
        moved = np.clip(positions, self.start_positions - self.margin, self.start_positions + self.margin)
        self.positions = moved
        self._set_geometry(moved)
        self._illumination_cache = None
        self._shifted = None
        return moved

    def _set_geometry(self, positions: npt.NDArray[np.float64]) -> None:
        corner = positions - self.N / 2 + np.asarray(self.origin)
        first = np.floor(corner)
        fraction = (corner - first).astype(np.float32)
        self._rows = first[:, 1].astype(np.int64)
        self._cols = first[:, 0].astype(np.int64)
        self._fraction = fraction if fraction.any() else None

    def _ramps(self, rows: npt.NDArray[np.int64]) -> Any:
        """``(b, 1, N, N)`` Fourier factors moving a probe by each pattern's sub-pixel remainder."""
        assert self._fraction is not None
        xp = self.be.xp
        k = xp.asarray(np.fft.fftfreq(self.N).astype(np.float32))
        f = xp.asarray(self._fraction[rows])
        fx, fy = f[:, 0], f[:, 1]
        ramp = (xp.exp(-2j * np.pi * fy[:, None, None] * k[None, :, None])
                * xp.exp(-2j * np.pi * fx[:, None, None] * k[None, None, :]))
        return ramp.astype(xp.complex64)[:, None]

    def _shift_probes(self, rows: npt.NDArray[np.int64]) -> Any:
        return self.be.ifft2(self._spectrum[None] * self._ramps(rows), overwrite_x=True, workers=self.fft_workers)

    def probes(self, rows: npt.NDArray[np.int64]) -> Any:
        """``(b or 1, P, N, N)`` probe modes seen by patterns ``rows``."""
        if self._fraction is None:
            return self.probe[None]
        return self._shifted[rows] if self._shifted is not None else self._shift_probes(rows)

    def probe_power(self, rows: npt.NDArray[np.int64]) -> Any:
        """``(b or 1, N, N)`` float32 ``sum_m |P_jm|**2`` of patterns ``rows``."""
        if self._fraction is None:
            if self._power is None:
                self._power = (self.probe.real ** 2 + self.probe.imag ** 2).sum(axis=0)[None]
            return self._power
        probes = self.probes(rows)
        return (probes.real ** 2 + probes.imag ** 2).sum(axis=1)

    # ---- grids ----

    def crop(self, obj: Any) -> Any:
        """The part of a grown-grid ``obj`` on the grid given at construction."""
        top, _, left, _ = self.pad
        H, W = self.given_shape
        return obj[top:top + H, left:left + W]

    def grow(self, obj: npt.NDArray[np.complexfloating], fill: complex) -> Any:
        """``obj`` on the given grid placed on the grown grid, ``fill`` around it (complex64, on the backend)."""
        xp = self.be.xp
        out = xp.full(self.shape, fill, dtype=xp.complex64)
        top, _, left, _ = self.pad
        out[top:top + obj.shape[0], left:left + obj.shape[1]] = xp.asarray(obj)
        return out

    def chunks(self, rows: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
        """``rows`` cut into the chunks one thread works on at a time: at most :attr:`chunk` patterns each,
        and a multiple of the threads in number (a mini-batch smaller than a chunk still uses every thread)."""
        count = math.ceil(math.ceil(len(rows) / self.chunk) / self.threads) * self.threads
        size = max(1, math.ceil(len(rows) / count))
        return [rows[first:first + size] for first in range(0, len(rows), size)]

    def _map(self, function: Any, parts: list[Any]) -> Iterator[Any]:
        """``function(part)`` for every part, in order, as they finish (on the pool's threads)."""
        if self.threads == 1 or len(parts) == 1:
            return (function(part) for part in parts)
        return _pool(self.threads).map(function, parts)

    # ---- the forward model ----

    def _far_field(self, obj: Any, rows: npt.NDArray[np.int64], border: int = 0) -> tuple[Any, Any, Any]:
        """Windows (with ``border`` extra pixels each side), probes and spectra ``(b, P, N, N)``."""
        n = self.N + 2 * border
        windows = self.be.gather(obj, self._rows[rows] - border, self._cols[rows] - border, n)
        patch = windows[:, border:n - border, border:n - border] if border else windows
        probes = self.probes(rows)
        xp = self.be.xp
        exit_waves = xp.multiply(probes, patch[:, None], out=_scratch.take(
            "exit_waves", (len(rows), len(self.probe), self.N, self.N), xp.complex64, xp))
        spectrum = self.be.fft2(exit_waves, norm="ortho", overwrite_x=True, workers=self.fft_workers)
        return windows, probes, spectrum

    def _intensity(self, spectrum: Any) -> Any:
        """``sum_m |spectrum_m|**2`` ``(b, N, N)`` float32, in this thread's scratch array ``model``."""
        xp = self.be.xp
        shape = (len(spectrum), self.N, self.N)
        out = _scratch.take("model", shape, xp.float32, xp)
        square = _scratch.take("square", shape, xp.float32, xp)
        xp.square(spectrum[:, 0].real, out=out)
        for m in range(spectrum.shape[1]):
            for part in ((spectrum[:, m].imag,) if m == 0 else (spectrum[:, m].real, spectrum[:, m].imag)):
                out += xp.square(part, out=square)
        return out

    def _model_amplitude(self, spectrum: Any) -> Any:
        """``sqrt(sum_m |spectrum_m|**2)`` ``(b, N, N)`` float32 (one pass for a single mode), in this
        thread's scratch array ``model``."""
        xp = self.be.xp
        if spectrum.shape[1] == 1:
            return xp.abs(spectrum[:, 0], out=_scratch.take("model", (len(spectrum), self.N, self.N), xp.float32, xp))
        intensity = self._intensity(spectrum)
        return xp.sqrt(intensity, out=intensity)

    def intensity(self, obj: Any) -> npt.NDArray[np.float32]:
        """Model intensities ``(S, N, N)`` (numpy float32) of ``obj`` (grown grid) in FFT layout (DC at ``[0, 0]``)."""
        parts = self.chunks(np.arange(len(self)))
        # copied out of the thread's scratch: a pool thread takes its next chunk before these are gathered
        intensities = self._map(lambda r: self._intensity(self._far_field(obj, r)[2]).copy(), parts)
        return np.concatenate([self.be.to_numpy(i) for i in intensities])

    def fit(self, obj: Any) -> DataFit:
        """Data fit of ``obj`` (grown grid) to the measured patterns."""
        return self.measured.fit(self.intensity(obj))

    def amplitude_error(self, intensity: npt.NDArray[np.float32]) -> float:
        """``sum (sqrt(I) - sqrt(k))**2 / sum k`` of model intensities ``(S, N, N)`` (FFT layout)."""
        root = self.measured.amplitudes
        return float(np.square(np.sqrt(intensity) - root).sum(dtype=np.float64) / self.total_amplitude_power)

    def illumination(self) -> Any:
        """``D = sum_jm |P_jm|**2`` of the whole scan on the object grid (cached until probe or positions change)."""
        if self._illumination_cache is None:
            xp = self.be.xp
            total = xp.zeros(self.shape, xp.float32)
            for part in self.chunks(np.arange(len(self))):
                self.be.scatter_add(total, self._rows[part], self._cols[part],
                                    xp.broadcast_to(self.probe_power(part), (len(part), self.N, self.N)))
            self._illumination_cache = total
        return self._illumination_cache

    # ---- one pass ----

    def gradient_pass(self, obj: Any, rows: npt.NDArray[np.int64], *, probe: bool = False,
                      positions: bool = False) -> PassResult:
        """The sums of the module docstring over patterns ``rows`` for the object ``obj`` (grown grid)."""
        xp = self.be.xp
        border = 1 if positions else 0
        full = len(rows) == len(self)
        need_illumination = not full or self._illumination_cache is None

        def one_chunk(part: npt.NDArray[np.int64]) -> dict[str, Any]:
            windows, probes, spectrum = self._far_field(obj, part, border)
            patch = windows[:, border:self.N + border, border:self.N + border] if border else windows
            measured = self.amplitudes[part]
            model = self._model_amplitude(spectrum)
            residual = xp.subtract(model, measured, out=_scratch.take("residual", model.shape, xp.float32, xp)).ravel()
            out: dict[str, Any] = {"error": float(xp.dot(residual, residual))}
            ratio = xp.divide(measured, xp.maximum(model, xp.float32(1e-12), out=model), out=model)
            spectrum *= ratio[:, None]
            projected = self.be.ifft2(spectrum, norm="ortho", overwrite_x=True, workers=self.fft_workers)
            power = self.probe_power(part) if self._fraction is None else (probes.real ** 2 + probes.imag ** 2).sum(axis=1)
            # sum_m conj(P_m) psi'_m here; its "- |P_m|^2 O" part summed over windows is D O, taken once on the grid
            # (scratch: this thread adds it to the grid before it takes the next chunk)
            projected_sum = xp.multiply(xp.conj(probes[:, 0]), projected[:, 0], out=_scratch.take(
                "projected_sum", model.shape, xp.complex64, xp))
            for m in range(1, projected.shape[1]):
                projected_sum += xp.conj(probes[:, m]) * projected[:, m]
            out["object"] = projected_sum
            if need_illumination:
                out["power"] = xp.broadcast_to(power, (len(part), self.N, self.N))
            if probe:
                dpsi = projected
                dpsi -= probes * patch[:, None]
                weighted = xp.conj(patch)[:, None] * dpsi
                if self._fraction is not None:  # back to the probe's own frame: the adjoint of the shift
                    spectrum = self.be.fft2(weighted, overwrite_x=True, workers=self.fft_workers)
                    out["probe_spectrum"] = (spectrum * xp.conj(self._ramps(part))).sum(axis=0)
                else:
                    out["probe"] = weighted.sum(axis=0)
                out["object_power"] = (patch.real ** 2 + patch.imag ** 2).sum(axis=0)
            if positions:  # Re<P dO, dpsi> = Re<dO, sum_m conj(P_m) dpsi_m>
                step = projected_sum - power * patch
                c = slice(1, self.N + 1)
                numerators, denominators = [], []
                for gradient in (0.5 * (windows[:, c, 2:] - windows[:, c, :-2]),
                                 0.5 * (windows[:, 2:, c] - windows[:, :-2, c])):
                    numerators.append((xp.conj(gradient) * step).real.sum(axis=(1, 2), dtype=xp.float64))
                    denominators.append(((gradient.real ** 2 + gradient.imag ** 2) * power).sum(axis=(1, 2),
                                                                                            dtype=xp.float64))
                out["shift"] = (self.be.to_numpy(xp.stack(numerators, axis=1)),
                                self.be.to_numpy(xp.stack(denominators, axis=1)))
            return out

        parts = self.chunks(rows)
        object_step = xp.zeros(self.shape, xp.complex64)
        illumination = xp.zeros(self.shape, xp.float32) if need_illumination else self._illumination_cache
        added = [threading.Event() for _ in parts]

        def compute_and_add(k: int) -> dict[str, Any]:
            """Chunk ``k``'s sums, added to the grids right after chunk ``k - 1``'s (the same order, so the
            same result, on any number of threads; a pool thread adds while the others compute)."""
            try:
                result = one_chunk(parts[k])
                if k:
                    added[k - 1].wait()
                rows_k, cols_k = self._rows[parts[k]], self._cols[parts[k]]
                self.be.scatter_add(object_step, rows_k, cols_k, result.pop("object"))
                if need_illumination:
                    self.be.scatter_add(illumination, rows_k, cols_k, result.pop("power"))
                return result
            finally:
                added[k].set()  # also on an error, so no later chunk waits forever (map raises it)

        results = list(self._map(compute_and_add, list(range(len(parts)))))
        if full:
            self._illumination_cache = illumination
        object_step -= illumination * obj
        out = PassResult(rows=rows, object_step=object_step, illumination=illumination,
                         squared_error=sum(r["error"] for r in results))
        if probe:
            if self._fraction is not None:
                spectrum = sum(r["probe_spectrum"] for r in results[1:]) + results[0]["probe_spectrum"]
                out.probe_step = self.be.ifft2(spectrum, workers=self.fft_workers)
            else:
                out.probe_step = sum(r["probe"] for r in results[1:]) + results[0]["probe"]
            out.object_power = sum(r["object_power"] for r in results[1:]) + results[0]["object_power"]
        if positions:
            out.shift_numerator = np.concatenate([r["shift"][0] for r in results])
            out.shift_denominator = np.concatenate([r["shift"][1] for r in results])
        return out
