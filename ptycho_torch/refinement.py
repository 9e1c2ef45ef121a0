"""Known-probe object refinement against measured amplitudes (numpy + scipy.fft, no torch).

The forward model is the project's (:mod:`ptycho_torch.physics`): pattern ``j`` at position
``x_j`` sees the exit waves ``psi_jm = P_m * O(window_j)`` of the incoherent probe modes ``P_m`` and
the far field ``I_j = sum_m |FFT_ortho(psi_jm)|**2``. Positions are fixed and may be sub-pixel: the
object window starts at the integer pixel below ``x_j - N/2`` and the probe is moved by the
remaining fraction with a Fourier shift (the intensity does not change when the window moves).

One iteration (an epoch over the scan, in batches of patterns) does, vectorised over a batch::

    Psi = FFT(psi);   Psi' = Psi * sqrt(k) / sqrt(sum_m |Psi_m|**2)        (modulus projection)
    O  += step * sum_jm conj(P_jm) (IFFT(Psi') - psi) / ((1 - a) D + a max D)
    D   = sum_jm |P_jm|**2 over the batch, on the object grid

Algorithms: ``er`` (error reduction: the whole scan in one update, ``a`` = 1e-3; with ``a -> 0`` the
update is the exact least-squares object ``sum conj(P) psi' / sum |P|**2``) and ``rpie`` (regularised
PIE, Maiden, Johnson & Li, Optica 4, 736 (2017), in mini-batches of ``batch_size`` patterns drawn
at random, ``a`` = 0.5).

Memory: the scan is processed in chunks sized so that the working arrays stay under ``max_bytes``
(the full-batch result does not depend on the chunking); :attr:`Refinement.peak_bytes` reports the
estimate. Time: iterations stop early once ``time_limit_s`` has passed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft

from ptycho_torch.choices import RefineAlgorithm, RefineStart, check_table, parse
from ptycho_torch.data_fit import DataFit, MeasuredCounts
from ptycho_torch.errors import DataContractError

__all__ = ["ALGORITHMS", "STARTS", "RefineSettings", "Refinement", "ScanModel", "StitchedRefinement", "refine",
           "refine_stitched"]



@dataclass(frozen=True)
class Algorithm:
    """How one refinement algorithm updates the object (see the module docstring)."""

    alpha: float
    """Default weight of ``max D`` in the update's denominator."""
    full_batch: bool
    """One update per iteration from the whole scan (else random mini-batches of ``batch_size``)."""


ALGORITHMS: Mapping[RefineAlgorithm, Algorithm] = check_table(RefineAlgorithm, {
    RefineAlgorithm.ER: Algorithm(alpha=1e-3, full_batch=True),
    RefineAlgorithm.RPIE: Algorithm(alpha=0.5, full_batch=False),
})
"""``algorithm`` -> its default ``alpha`` and batching."""


@dataclass(frozen=True, kw_only=True)
class RefineSettings:
    """How to refine; every field has a working default."""

    iterations: int = 20
    """Epochs over the scan."""
    algorithm: RefineAlgorithm = RefineAlgorithm.ER
    """``er`` (full batch) or ``rpie`` (mini-batches); see the module docstring."""
    alpha: float | None = None
    """Weight of ``max D`` in the update's denominator, in ``[0, 1]``; None: 1e-3 (er), 0.5 (rpie)."""
    batch_size: int | None = None
    """rpie: patterns per update (None: an eighth of the scan, at least 16); er ignores it."""
    step: float = 1.0
    """Relaxation of every update, in ``(0, 2]``."""
    max_bytes: int = 512 << 20
    """Bound on the working memory of one batch (the measured data and object come on top)."""
    time_limit_s: float | None = None
    """Stop after the iteration that passes this many seconds (None: no limit)."""
    workers: int = -1
    """Threads of ``scipy.fft`` (-1: all CPUs)."""
    seed: int = 0
    """Seed of the rpie batch order."""

    def __post_init__(self) -> None:
        if not isinstance(self.iterations, int) or isinstance(self.iterations, bool) or self.iterations < 0:
            raise DataContractError(f"`iterations` must be a non-negative integer, got {self.iterations!r}")
        object.__setattr__(self, "algorithm", parse(RefineAlgorithm, "algorithm", self.algorithm, DataContractError))
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise DataContractError(f"`alpha` must be in [0, 1], got {self.alpha!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise DataContractError(f"`batch_size` must be a positive integer, got {self.batch_size!r}")
        if not 0.0 < self.step <= 2.0:
            raise DataContractError(f"`step` must be in (0, 2], got {self.step!r}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise DataContractError(f"`time_limit_s` must be positive, got {self.time_limit_s!r}")


class ScanModel:
    """A scan's fixed part: probe modes, window positions on an object grid, and the measured counts.

    ``amplitudes`` ``(S, N, N)``: measured amplitudes (sqrt of counts), fftshifted (DC at the centre);
    ``positions`` ``(S, 2)`` ``[x, y]`` patch centres in object pixels; ``probe`` ``(N, N)`` or
    ``(P, N, N)`` incoherent modes; ``shape`` and ``origin``: the object grid to refine on, object
    position ``(0, 0)`` at grid ``(col, row) = origin``. :attr:`shape` and :attr:`origin` are that grid
    grown (never shrunk) so every ``N x N`` window lies inside it; :attr:`crop` cuts the given grid back out.
    """

    def __init__(self, amplitudes: npt.ArrayLike, positions: npt.ArrayLike, probe: npt.ArrayLike, *,
                 shape: tuple[int, int], origin: tuple[float, float], max_bytes: int = 512 << 20,
                 workers: int = -1) -> None:
        amps = np.asarray(amplitudes, dtype=np.float32)
        pos = np.asarray(positions, dtype=np.float64)
        modes = np.asarray(probe)
        if amps.ndim != 3 or amps.shape[1] != amps.shape[2]:
            raise DataContractError(f"`amplitudes` must be (S, N, N), got shape {amps.shape}")
        S, N = amps.shape[0], amps.shape[-1]
        if pos.shape != (S, 2):
            raise DataContractError(f"`positions` must be ({S}, 2) [x, y], got shape {pos.shape}")
        if modes.ndim not in (2, 3) or modes.shape[-2:] != (N, N):
            raise DataContractError(f"`probe` must be (N, N) or (P, N, N) with N={N}, got shape {modes.shape}")
        self.N, self.workers = N, workers
        self.probe = modes.reshape(-1, N, N).astype(np.complex64)
        if not (np.abs(self.probe) > 0).any():
            raise DataContractError("`probe` is all zero; send the probe the scan was measured with")
        self.measured = MeasuredCounts(np.fft.ifftshift(amps, axes=(-2, -1)))  # FFT layout: no shift per iteration
        self.amplitudes = self.measured.amplitudes

        # window corners on the grown grid, and the sub-pixel remainder the probe is moved by
        corner = pos - N / 2 + np.asarray(origin, dtype=np.float64)
        first = np.floor(corner)
        fraction = corner - first
        first = first.astype(np.int64)
        H, W = shape
        lo = np.minimum(first.min(axis=0), 0)
        hi = np.maximum(first.max(axis=0) + N - np.array([W, H]), 0)
        self.pad = (int(-lo[1]), int(hi[1]), int(-lo[0]), int(hi[0]))  # top, bottom, left, right
        self.given_shape = (int(H), int(W))
        self.shape = (int(H + self.pad[0] + self.pad[1]), int(W + self.pad[2] + self.pad[3]))
        self.origin = (float(origin[0]) + self.pad[2], float(origin[1]) + self.pad[0])
        first -= lo
        self._base = first[:, 1] * self.shape[1] + first[:, 0]
        self._window = (np.arange(N)[:, None] * self.shape[1] + np.arange(N)[None, :]).ravel()
        self._fraction = fraction.astype(np.float32) if fraction.any() else None
        self._shifted: npt.NDArray[np.complex64] | None = None
        P = len(self.probe)
        # per pattern in a batch: exit waves and their transform (P modes), gather index, update, counts
        self.bytes_per_pattern = N * N * (2 * 8 * P + 8 + 16 + 3 * 8)
        per_position_probes = S * P * N * N * 8
        if self._fraction is not None and per_position_probes <= max_bytes // 2:
            self._shifted = self._shift_probes(np.arange(S))
        self.chunk = max(1, min(S, (max_bytes - (0 if self._shifted is None else per_position_probes))
                                // self.bytes_per_pattern))
        # measured amplitudes and one model intensity per pattern (float32), the object grid's arrays
        self.resident_bytes = int(2 * self.amplitudes.nbytes
                                  + (0 if self._shifted is None else per_position_probes)
                                  + 3 * self.shape[0] * self.shape[1] * 16)
        self._illumination = self._sum_on_grid(np.arange(S), self._probe_power)

    def __len__(self) -> int:
        return len(self._base)

    @property
    def peak_bytes(self) -> int:
        """Estimated working memory: the resident arrays plus one chunk of patterns."""
        return int(self.resident_bytes + self.chunk * self.bytes_per_pattern)

    def crop(self, obj: npt.NDArray[np.complex64]) -> npt.NDArray[np.complex64]:
        """The part of a grown-grid ``obj`` on the grid given at construction."""
        top, _, left, _ = self.pad
        H, W = self.given_shape
        return obj[top:top + H, left:left + W]

    def grow(self, obj: npt.NDArray[np.complexfloating], fill: complex) -> npt.NDArray[np.complex64]:
        """``obj`` on the given grid placed on the grown grid, ``fill`` around it (complex64 copy)."""
        out = np.full(self.shape, fill, dtype=np.complex64)
        top, _, left, _ = self.pad
        out[top:top + obj.shape[0], left:left + obj.shape[1]] = obj
        return out

    def _shift_probes(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.complex64]:
        """Probe modes moved by each pattern's sub-pixel remainder: ``(b, P, N, N)``."""
        assert self._fraction is not None
        k = np.fft.fftfreq(self.N).astype(np.float32)
        fx, fy = self._fraction[rows, 0], self._fraction[rows, 1]
        ramp = (np.exp(-2j * np.pi * fy[:, None, None] * k[None, :, None])
                * np.exp(-2j * np.pi * fx[:, None, None] * k[None, None, :])).astype(np.complex64)
        spectrum = scipy.fft.fft2(self.probe, workers=self.workers)
        return scipy.fft.ifft2(spectrum[None] * ramp[:, None], workers=self.workers).astype(np.complex64)

    def _probes(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.complex64]:
        """``(b or 1, P, N, N)`` probe modes seen by patterns ``rows``."""
        if self._fraction is None:
            return self.probe[None]
        return self._shifted[rows] if self._shifted is not None else self._shift_probes(rows)

    def _probe_power(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        probes = self._probes(rows)
        power = (probes.real**2 + probes.imag**2).sum(axis=1)
        return np.broadcast_to(power, (len(rows), self.N, self.N))

    def _index(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return self._base[rows, None] + self._window[None, :]

    def _sum_on_grid(self, rows: npt.NDArray[np.int64],
                     values: Callable[[npt.NDArray[np.int64]], npt.NDArray[Any]]) -> npt.NDArray[Any]:
        """``sum_j values(j)`` placed at each pattern's window, over ``rows`` in chunks (bincount: fast, exact order)."""
        size = self.shape[0] * self.shape[1]
        total: npt.NDArray[Any] | None = None
        for start in range(0, len(rows), self.chunk):
            part = rows[start:start + self.chunk]
            v = values(part).reshape(len(part), -1)
            index = self._index(part).ravel()
            if np.iscomplexobj(v):
                summed = (np.bincount(index, v.real.ravel(), size) + 1j * np.bincount(index, v.imag.ravel(), size))
            else:
                summed = np.bincount(index, v.ravel(), size)
            total = summed if total is None else total + summed
        assert total is not None
        return total.reshape(self.shape)

    def far_field(self, obj: npt.NDArray[np.complex64], rows: npt.NDArray[np.int64]
                  ) -> tuple[npt.NDArray[np.complex64], npt.NDArray[np.complex64], npt.NDArray[np.float32]]:
        """Exit waves ``(b, P, N, N)``, their far fields (FFT layout) and the intensities ``(b, N, N)``."""
        patches = obj.ravel()[self._index(rows)].reshape(len(rows), 1, self.N, self.N)
        exit_waves = self._probes(rows) * patches
        spectrum = scipy.fft.fft2(exit_waves, norm="ortho", workers=self.workers)
        intensity = (spectrum.real**2 + spectrum.imag**2).sum(axis=1)
        return exit_waves, spectrum, intensity

    def intensity(self, obj: npt.NDArray[np.complex64]) -> npt.NDArray[np.float32]:
        """Model intensities ``(S, N, N)`` of ``obj`` (grown grid) in FFT layout (DC at ``[0, 0]``)."""
        out = np.empty((len(self), self.N, self.N), np.float32)
        for start in range(0, len(self), self.chunk):
            rows = np.arange(start, min(start + self.chunk, len(self)))
            out[rows] = self.far_field(obj, rows)[2]
        return out

    def fit(self, obj: npt.NDArray[np.complex64]) -> DataFit:
        """Data fit of ``obj`` (grown grid) to the measured patterns."""
        return self.measured.fit(self.intensity(obj))

    def update(self, obj: npt.NDArray[np.complex64], rows: npt.NDArray[np.int64], alpha: float,
               intensity_out: npt.NDArray[np.float32]) -> npt.NDArray[np.complex128]:
        """Object update from patterns ``rows`` (see the module docstring); the model intensities of
        the object it starts from go into ``intensity_out[rows]``."""

        def correction(part: npt.NDArray[np.int64]) -> npt.NDArray[np.complex64]:
            exit_waves, spectrum, intensity = self.far_field(obj, part)
            intensity_out[part] = intensity
            model = np.sqrt(intensity)
            measured = self.amplitudes[part]
            spectrum *= (measured / np.maximum(model, 1e-12))[:, None]
            exit_waves -= scipy.fft.ifft2(spectrum, norm="ortho", workers=self.workers, overwrite_x=True)
            return -(np.conj(self._probes(part)) * exit_waves).sum(axis=1)

        numerator = self._sum_on_grid(rows, correction)
        weight = self._illumination if len(rows) == len(self) else self._sum_on_grid(rows, self._probe_power)
        denominator = (1.0 - alpha) * weight + alpha * weight.max()
        return numerator / np.maximum(denominator, np.finfo(np.float32).tiny)


@dataclass
class Refinement:
    """State of a refinement after some iterations (what :func:`refine` yields)."""

    object: npt.NDArray[np.complex64]
    """The object on the model's grown grid (``ScanModel.crop`` gives the requested grid)."""
    iteration: int
    """Iterations done (0: the start object, scaled)."""
    fit: DataFit | None
    """Exact data fit of :attr:`object`: given for iteration 0 and the last state, else None (it
    would cost a pass; the next iteration's pass measures it and adds it to :attr:`history`)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """``history[i]``: :meth:`DataFit.summary` of the object after ``i`` iterations plus ``seconds``
    since the start, as far as measured (``iteration + 1`` entries in the last state). For rpie the
    entries between the first and the last are measured during the following epoch, while the
    object changes."""
    seconds: float = 0.0
    stopped: str | None = None
    """Why it stopped before the requested iterations (time limit), else None."""


def refine(model: ScanModel, start: npt.NDArray[np.complex64], settings: RefineSettings,
           ) -> Iterator[Refinement]:
    """Refine ``start`` (on ``model.shape``, any global scale); yield the state after the start's fit
    and after every iteration; the last state carries the exact fit of the final object.

    The start object is first given the maximum-likelihood global scale. Closing the generator
    between yields stops the refinement (how a GUI's Stop button is honoured).
    """
    t0 = time.perf_counter()
    if start.shape != model.shape:
        raise DataContractError(f"`start` must be on the model's grid {model.shape}, got {start.shape}")
    obj = np.array(start, dtype=np.complex64)
    fit = model.fit(obj)
    obj *= np.float32(math.sqrt(fit.scale))
    history = [{**fit.summary(), "seconds": time.perf_counter() - t0}]
    yield Refinement(obj, 0, fit, history, time.perf_counter() - t0)
    if settings.iterations == 0:
        return

    algorithm = ALGORITHMS[settings.algorithm]
    alpha = algorithm.alpha if settings.alpha is None else settings.alpha
    S = len(model)
    batch = S if algorithm.full_batch else min(S, settings.batch_size or max(16, S // 8))
    rng = np.random.default_rng(settings.seed)
    intensity = np.empty((S, model.N, model.N), np.float32)
    for iteration in range(1, settings.iterations + 1):
        order = np.arange(S) if batch == S else rng.permutation(S)
        for first in range(0, S, batch):
            direction = model.update(obj, order[first:first + batch], alpha, intensity)
            obj += (settings.step * direction).astype(np.complex64)
        seconds = time.perf_counter() - t0
        if iteration > 1:  # this pass measured the object the previous iteration left
            history.append({**model.measured.fit(intensity).summary(), "seconds": seconds})
        out_of_time = settings.time_limit_s is not None and seconds > settings.time_limit_s
        if iteration < settings.iterations and not out_of_time:
            yield Refinement(obj, iteration, None, history, seconds)
            continue
        fit = model.fit(obj)
        seconds = time.perf_counter() - t0
        history.append({**fit.summary(), "seconds": seconds})
        stopped = (f"time limit of {settings.time_limit_s} s reached after {iteration} of {settings.iterations} "
                   f"iterations") if iteration < settings.iterations else None
        yield Refinement(obj, iteration, fit, history, seconds, stopped)
        return


@dataclass(frozen=True)
class StitchedRefinement:
    """A refinement state on a stitched result's canvas (what :func:`refine_stitched` yields)."""

    canvas: npt.NDArray[np.complex64]
    """``(H, W)`` object on the stitched canvas (same shape and origin as the one given)."""
    state: Refinement
    peak_bytes: int
    """Estimated working memory of the refinement (:attr:`ScanModel.peak_bytes`)."""


def _flat_start(model: ScanModel, canvas: npt.NDArray[np.complexfloating], coverage: npt.NDArray[np.floating]
                ) -> npt.NDArray[np.complex64]:
    return np.ones(model.shape, np.complex64)


def _network_start(model: ScanModel, canvas: npt.NDArray[np.complexfloating], coverage: npt.NDArray[np.floating]
                   ) -> npt.NDArray[np.complex64]:
    covered = coverage > 0
    fill = complex(np.abs(canvas[covered]).mean()) if covered.any() else 1.0
    return model.grow(np.where(covered, canvas, fill), fill)


STARTS: Mapping[RefineStart, Callable[[ScanModel, npt.NDArray[np.complexfloating], npt.NDArray[np.floating]],
                                   npt.NDArray[np.complex64]]] = check_table(RefineStart, {
    RefineStart.NETWORK: _network_start,
    RefineStart.FLAT: _flat_start,
})
"""``start`` -> ``(model, stitched canvas, coverage) ->`` the object refinement starts from, on the grown grid."""


def refine_stitched(amplitudes: npt.ArrayLike, positions: npt.ArrayLike, probe: npt.ArrayLike,
                    canvas: npt.NDArray[np.complexfloating], coverage: npt.NDArray[np.floating],
                    origin: tuple[float, float], settings: RefineSettings, *, start: RefineStart | str
                    ) -> Iterator[StitchedRefinement]:
    """:func:`refine` a stitched result in place on its canvas (``(H, W)``, ``origin`` as the stitcher's).

    ``start="network"`` starts from ``canvas``; pixels no patch covered (``coverage == 0``) and the
    margin the probe windows need around the canvas start at the covered pixels' mean amplitude, phase
    0. ``start="flat"`` starts from amplitude 1, phase 0 (``canvas`` only gives the grid). Every state
    is cut back to the canvas; the refinement itself runs on the grown grid (see :class:`ScanModel`).
    """
    initialise = STARTS[parse(RefineStart, "start", start, DataContractError)]
    model = ScanModel(amplitudes, positions, probe, shape=canvas.shape, origin=origin, max_bytes=settings.max_bytes,
                      workers=settings.workers)
    for state in refine(model, initialise(model, canvas, coverage), settings):
        yield StitchedRefinement(model.crop(state.object).copy(), state, model.peak_bytes)
