"""Iterative refinement of the object, and optionally the probe and the positions, against the measured
amplitudes (numpy or CuPy; no torch).

Every update rule uses the sums of one pass (:meth:`ScanModel.gradient_pass`) the same way::

    O   += step * sum conj(P) dpsi / ((1 - alpha) D   + alpha max D)
    P_m += step * sum conj(O) dpsi / ((1 - beta)  D_P + beta  max D_P)     (refine_probe, after PROBE_START)
    x_j += clip(least-squares shift, +-MAX_POSITION_STEP_PX) - their mean (refine_positions, after POSITION_START)

and differs in how many patterns one update sees, and what happens between epochs (:data:`ALGORITHMS`):

- ``er``, error reduction: the whole scan per update; with ``alpha -> 0`` the object update is the exact
  least-squares object ``sum conj(P) psi' / sum |P|**2``.
- ``rpie``, regularised PIE (Maiden, Johnson & Li, Optica 4, 736 (2017)) in random mini-batches.
- ``mpie``, momentum-accelerated PIE (the same paper): rPIE, then after every epoch the object and probe
  move on along their velocity ``v = eta v + (X - X_previous epoch)``, ``X += eta v``.

After a probe update the modes are orthogonalised and their power is held at the power the start fit
gave them (the global scale of the data is carried by the probe once it is refined, by the object
otherwise). ``iterations="auto"`` stops when the amplitude error fell by less than
:data:`AUTO_TOLERANCE` of itself over the last :data:`AUTO_WINDOW` iterations (and, when positions are
refined, they moved less than :data:`AUTO_POSITION_TOLERANCE_PX` rms over them: they keep improving after
the error has flattened), and always at ``time_limit_s`` or ``max_iterations``; the last state says which.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from ptycho_torch.choices import ArrayBackendName, RefineAlgorithm, StopReason, check_table, parse
from ptycho_torch.data_fit import DataFit
from ptycho_torch.errors import DataContractError
from ptycho_torch.refinement.backend import default_backend
from ptycho_torch.refinement.probe_modes import orthogonalise, power, with_modes
from ptycho_torch.refinement.scan_model import PassResult, ScanModel

__all__ = ["ALGORITHMS", "AUTO", "AUTO_TOLERANCE", "AUTO_WINDOW", "Algorithm", "RefineSettings", "Refinement",
           "correction_size", "correction_warning", "default_algorithm", "refine"]

AUTO: Final = "auto"
"""``RefineSettings.iterations`` value: refine until the data fit stops improving."""
AUTO_WINDOW = 10
"""Iterations over which ``auto`` measures the improvement."""
AUTO_TOLERANCE = 0.01
"""``auto`` stops when the amplitude error fell by less than this fraction over :data:`AUTO_WINDOW` iterations."""
AUTO_POSITION_TOLERANCE_PX = 0.05
"""... and, when positions are refined, they moved less than this (rms, pixels) over those iterations."""
PROBE_START = 2
"""First iteration that updates the probe (the object gets one update from the given probe first)."""
POSITION_START = 10
"""First iteration that moves positions (a shift is only measurable once the object has structure)."""
POSITION_PRIOR = 0.01
"""Weight ``mu`` of the pull of each position towards where it was given, as a fraction of the median
``||P dO||**2``: a 2 px error with typical object gradients is corrected to within a few per cent,
while a direction the data do not pin (sparse overlap, weak contrast) no longer random-walks freely."""
MAX_POSITION_STEP_PX = 0.5
"""Largest position change per update, in pixels (pty-chi and PtyLab bound their steps the same way)."""
POSITION_MARGIN_PX = 8
"""Furthest a position may move from where it was given, in pixels."""
LARGE_CORRECTION_RMS_PX, LARGE_CORRECTION_MAX_PX = 1.0, 3.0
"""Corrections above these (rms or largest) get a warning: the scan's positions are probably wrong."""


@dataclass(frozen=True)
class Algorithm:
    """How one update rule runs (see the module docstring)."""

    alpha: float
    """Default weight of ``max D`` in the object update's denominator."""
    beta: float
    """Weight of ``max D_P`` in the probe update's denominator."""
    full_batch: bool
    """One update per iteration from the whole scan (else random mini-batches of ``batch_size``)."""
    momentum: float = 0.0
    """``eta`` of the velocity added after each epoch (0: none)."""


ALGORITHMS: Mapping[RefineAlgorithm, Algorithm] = check_table(RefineAlgorithm, {
    RefineAlgorithm.ER: Algorithm(alpha=1e-3, beta=1e-3, full_batch=True),
    RefineAlgorithm.RPIE: Algorithm(alpha=0.5, beta=0.5, full_batch=False),
    RefineAlgorithm.MPIE: Algorithm(alpha=0.5, beta=0.5, full_batch=False, momentum=0.7),
})
"""``algorithm`` -> its update parameters."""


def default_algorithm(refine_probe: bool, refine_positions: bool) -> RefineAlgorithm:
    """The update rule a refinement uses unless told: ``er`` for the object alone, ``rpie`` once the probe
    or the positions are refined too.

    From the figures in docs/benchmarks.md ("Solver"): with the probe fixed, ``er`` reaches the same
    object as ``rpie`` in about as many iterations and keeps a corrupted frame's damage to that frame
    (the data fit still names it as the one outlier; rPIE's mini-batches spread it to the neighbours:
    19 patterns flagged instead of 2 in the test); with the probe refined, ``er`` is slow (the real star:
    phase SSIM 0.99 after 170 iterations, ``rpie`` after 20)."""
    return RefineAlgorithm.RPIE if refine_probe or refine_positions else RefineAlgorithm.ER


@dataclass(frozen=True, kw_only=True)
class RefineSettings:
    """How to refine; every field has a working default."""

    iterations: int | Literal["auto"] = 20
    """Epochs over the scan, or ``"auto"``: until the data fit stops improving (see the module docstring)."""
    algorithm: RefineAlgorithm | None = None
    """The update rule (:data:`ALGORITHMS`); None: :func:`default_algorithm` for this case."""
    alpha: float | None = None
    """Weight of ``max D`` in the object update's denominator, in ``[0, 1]``; None: the algorithm's."""
    batch_size: int | None = None
    """Mini-batch algorithms: patterns per update (None: an eighth of the scan, at least 16)."""
    step: float = 1.0
    """Relaxation of every update, in ``(0, 2]``."""
    max_bytes: int = 512 << 20
    """Bound on the per-position probe cache (the measured data, object and chunks in flight come on top)."""
    time_limit_s: float | None = None
    """Stop after the iteration that passes this many seconds (None: no limit)."""
    workers: int = -1
    """CPU threads (-1: every CPU this process may use)."""
    seed: int = 0
    """Seed of the mini-batch order."""
    refine_probe: bool = False
    """Update the probe modes too (orthogonalised, power held; see the module docstring)."""
    probe_modes: int | None = None
    """Modes to refine (None: as many as given); added modes are seeded from the first."""
    refine_positions: bool = False
    """Correct each pattern's position (bounded steps; at most :data:`POSITION_MARGIN_PX` in all)."""
    max_iterations: int = 1000
    """The most iterations ``"auto"`` runs."""
    backend: ArrayBackendName | None = None
    """``numpy`` (CPU threads) or ``cupy`` (a GPU; the ``gpu`` extra); None: the process's default
    (:func:`~ptycho_torch.refinement.backend.default_backend`)."""

    def __post_init__(self) -> None:
        if self.iterations != AUTO and (not isinstance(self.iterations, (int, np.integer))
                                        or isinstance(self.iterations, bool) or self.iterations < 0):
            raise DataContractError(f"`iterations` must be a non-negative integer or 'auto', got {self.iterations!r}")
        algorithm = (default_algorithm(self.refine_probe, self.refine_positions) if self.algorithm is None
                     else parse(RefineAlgorithm, "algorithm", self.algorithm, DataContractError))
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "backend", default_backend() if self.backend is None
                           else parse(ArrayBackendName, "backend", self.backend, DataContractError))
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise DataContractError(f"`alpha` must be in [0, 1], got {self.alpha!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise DataContractError(f"`batch_size` must be a positive integer, got {self.batch_size!r}")
        if not 0.0 < self.step <= 2.0:
            raise DataContractError(f"`step` must be in (0, 2], got {self.step!r}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise DataContractError(f"`time_limit_s` must be positive, got {self.time_limit_s!r}")
        if self.probe_modes is not None and not 1 <= self.probe_modes <= 16:
            raise DataContractError(f"`probe_modes` must be 1-16, got {self.probe_modes!r}")
        if self.max_iterations < 1:
            raise DataContractError(f"`max_iterations` must be positive, got {self.max_iterations!r}")

    @property
    def iteration_cap(self) -> int:
        """The most iterations these settings run."""
        return self.max_iterations if self.iterations == AUTO else int(self.iterations)


@dataclass
class Refinement:
    """State of a refinement after some iterations (what :func:`refine` yields)."""

    object: npt.NDArray[np.complex64]
    """The object on the model's grown grid (``ScanModel.crop`` gives the requested grid)."""
    probe: npt.NDArray[np.complex64]
    """``(P, N, N)`` probe modes of this state (the given ones, power-scaled, when the probe is not refined)."""
    positions: npt.NDArray[np.float64]
    """``(S, 2)`` ``[x, y]`` positions of this state, in the coordinates they were given in."""
    iteration: int
    """Iterations done (0: the start object, scaled)."""
    fit: DataFit | None
    """Exact data fit: given for iteration 0 and the last state, else None (it would cost a pass)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """``history[i]``: ``amplitude_error`` (``sum (sqrt(I) - sqrt(k))**2 / sum k``) of the state after ``i``
    iterations and ``seconds`` since the start, as far as measured; entry 0 and the last also carry
    :meth:`DataFit.summary`. Mini-batch algorithms measure entries 1..last-1 during the following
    epoch, while the object changes."""
    seconds: float = 0.0
    stopped: str | None = None
    """On the last state, why the refinement stopped (a sentence); None before."""
    stop_reason: StopReason | None = None
    """On the last state, why it stopped; None before."""


def correction_size(shift_px: npt.NDArray[np.floating]) -> dict[str, float]:
    """``{"rms", "max"}`` length in pixels of position corrections ``(S, 2)`` (0 for none)."""
    shift = np.asarray(shift_px, dtype=np.float64).reshape(-1, 2)
    length = np.hypot(shift[:, 0], shift[:, 1])
    if not length.size:
        return {"rms": 0.0, "max": 0.0}
    return {"rms": float(np.sqrt(np.mean(length ** 2))), "max": float(length.max())}


def correction_warning(shift_px: npt.NDArray[np.floating]) -> str | None:
    """A sentence when position corrections ``(S, 2)`` (pixels) are large, else None."""
    size = correction_size(shift_px)
    if size["rms"] <= LARGE_CORRECTION_RMS_PX and size["max"] <= LARGE_CORRECTION_MAX_PX:
        return None
    shift = np.asarray(shift_px, dtype=np.float64)
    largest = int(np.argmax(np.hypot(shift[:, 0], shift[:, 1])))
    return (f"positions were corrected by {size['rms']:.2f} px rms (largest {size['max']:.2f} px, pattern "
            f"{largest}): either the scan's positions are off (check the encoder calibration "
            f"and the units), or the data do not pin them (sparse overlap, weak contrast, a poor start: "
            f"compare with a run from refine_start 'flat', or without refine_positions) before trusting them")


class _Run:
    """The mutable state of one refinement: object, probe velocity, history."""

    def __init__(self, model: ScanModel, start: Any, settings: RefineSettings) -> None:
        xp = model.be.xp
        self.model, self.settings, self.xp = model, settings, xp
        assert settings.algorithm is not None  # resolved by RefineSettings
        self.rule = ALGORITHMS[settings.algorithm]
        self.alpha = self.rule.alpha if settings.alpha is None else settings.alpha
        self.obj = xp.array(start, dtype=xp.complex64)
        if settings.probe_modes is not None:
            model.set_probe(with_modes(model.probe, settings.probe_modes, xp))
        self.S = len(model)
        self.batch = self.S if self.rule.full_batch else min(self.S, settings.batch_size or max(16, self.S // 8))
        self.rng = np.random.default_rng(settings.seed)
        self.velocity: dict[str, Any] = {}
        self.previous: dict[str, Any] = {}
        self.probe_power = 0.0

    def scale_to_data(self, fit: DataFit) -> None:
        """Give the start the fit's maximum-likelihood scale: the probe when it is refined, else the object."""
        gain = np.float32(math.sqrt(fit.scale))
        if self.settings.refine_probe:
            self.model.set_probe(self.model.probe * gain)
        else:
            self.obj *= gain
        self.probe_power = power(self.model.probe)

    def epoch(self, iteration: int) -> float:
        """One pass over the scan; returns the amplitude error measured on the way."""
        update_probe = self.settings.refine_probe and iteration >= PROBE_START
        move = self.settings.refine_positions and iteration >= POSITION_START
        order = np.arange(self.S) if self.batch == self.S else self.rng.permutation(self.S)
        error = 0.0
        for first in range(0, self.S, self.batch):
            sums = self.model.gradient_pass(self.obj, order[first:first + self.batch], probe=update_probe,
                                            positions=move)
            self._apply(sums)
            error += sums.squared_error
        if self.rule.momentum:
            self._momentum(update_probe)
        return error / self.model.total_amplitude_power

    def _apply(self, sums: PassResult) -> None:
        xp, step = self.xp, np.float32(self.settings.step)
        weight = sums.illumination
        self.obj += step * sums.object_step / xp.maximum((1 - self.alpha) * weight + self.alpha * weight.max(),
                                                         xp.float32(np.finfo(np.float32).tiny))
        if sums.probe_step is not None:
            weight = sums.object_power
            beta = self.rule.beta
            probe = self.model.probe + step * sums.probe_step / xp.maximum((1 - beta) * weight + beta * weight.max(),
                                                                           xp.float32(1e-12))
            self._set_probe(probe)
        if sums.shift_numerator is not None and sums.shift_denominator is not None:
            # one Gauss-Newton step of  ||residual||^2 + mu ||x - x_given||^2  per pattern and axis
            mu = POSITION_PRIOR * np.median(sums.shift_denominator, axis=0)
            offset = self.model.positions[sums.rows] - self.model.start_positions[sums.rows]
            shift = np.clip(step * (sums.shift_numerator - mu * offset) / np.maximum(sums.shift_denominator + mu, 1e-30),
                            -MAX_POSITION_STEP_PX, MAX_POSITION_STEP_PX)
            located = self.model.has_signal[sums.rows]  # a dark frame's misfit says nothing about where it is
            shift[~located] = 0.0
            if located.any():
                shift[located] -= _affine_part(self.model.start_positions[sums.rows][located], shift[located])
            positions = self.model.positions.copy()
            positions[sums.rows] += shift
            self.model.set_positions(positions)

    def _set_probe(self, probe: Any) -> None:
        probe = orthogonalise(probe, self.xp)
        self.model.set_probe(probe * np.float32(math.sqrt(self.probe_power / max(power(probe), 1e-30))))

    def _momentum(self, probe_moves: bool) -> None:
        eta = np.float32(self.rule.momentum)
        current = {"object": self.obj}
        if probe_moves:
            current["probe"] = self.model.probe
        for name, value in current.items():
            if name in self.previous:
                self.velocity[name] = eta * self.velocity.get(name, 0) + (value - self.previous[name])
                value = value + eta * self.velocity[name]
            self.previous[name] = value.copy()
            if name == "object":
                self.obj = value
            else:
                self._set_probe(value)

    def state(self, iteration: int, fit: DataFit | None, history: list[dict[str, Any]], seconds: float,
              reason: StopReason | None = None, stopped: str | None = None) -> Refinement:
        to_numpy = self.model.be.to_numpy
        return Refinement(to_numpy(self.obj), to_numpy(self.model.probe), self.model.positions.copy(), iteration, fit,
                          history, seconds, stopped, reason)


def _affine_part(positions: npt.NDArray[np.float64], shift: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The part of ``shift`` ``(b, 2)`` that is an affine map of ``positions`` ``(b, 2)`` (least squares):
    a common shift moves the object, and a scaling, rotation or shear of the whole scan trades against
    the object and probe (the data barely pin it), so corrections keep only what differs from pattern to
    pattern. With fewer than 6 patterns, only the common shift."""
    if len(shift) < 6:
        return np.broadcast_to(shift.mean(axis=0), shift.shape)
    design = np.column_stack([positions - positions.mean(axis=0), np.ones(len(positions))])
    coefficients, *_ = np.linalg.lstsq(design, shift, rcond=None)
    return design @ coefficients


def _converged(history: list[dict[str, Any]], positions: list[npt.NDArray[np.float64]], iteration: int,
               settings: RefineSettings) -> bool:
    """The ``auto`` rule of the module docstring; ``positions[i]``: the positions after iteration ``i``."""
    if settings.iterations != AUTO:
        return False
    first_useful = POSITION_START if settings.refine_positions else PROBE_START if settings.refine_probe else 1
    if iteration < first_useful + AUTO_WINDOW or len(history) <= AUTO_WINDOW:
        return False
    before, now = history[-1 - AUTO_WINDOW]["amplitude_error"], history[-1]["amplitude_error"]
    if not before - now < AUTO_TOLERANCE * before:
        return False
    if not settings.refine_positions:
        return True
    moved = positions[-1] - positions[-1 - AUTO_WINDOW]
    return float(np.sqrt(np.mean(np.sum(moved ** 2, axis=1)))) < AUTO_POSITION_TOLERANCE_PX


def _why(reason: StopReason, iteration: int, settings: RefineSettings) -> str:
    if reason == StopReason.CONVERGED:
        moved = (f" and the positions moved less than {AUTO_POSITION_TOLERANCE_PX} px rms"
                 if settings.refine_positions else "")
        return (f"converged after {iteration} iterations: the amplitude error fell by less than "
                f"{AUTO_TOLERANCE:.0%}{moved} over the last {AUTO_WINDOW}")
    if reason == StopReason.TIME_LIMIT:
        return f"time limit of {settings.time_limit_s} s reached after {iteration} iterations"
    if settings.iterations == AUTO:
        return f"stopped at max_iterations={settings.max_iterations} before converging"
    return f"completed the {iteration} requested iterations"


def refine(model: ScanModel, start: npt.NDArray[np.complexfloating], settings: RefineSettings,
           ) -> Iterator[Refinement]:
    """Refine ``start`` (on ``model.shape``, any global scale); yield the state after the start's fit and
    after every iteration; the last state carries the exact fit of the final object and why it stopped.

    The start is first given the maximum-likelihood global scale. Closing the generator between yields
    stops the refinement (how a GUI's Stop button is honoured). The model's probe and positions are
    updated in place when they are refined.
    """
    t0 = time.perf_counter()
    if tuple(start.shape) != model.shape:
        raise DataContractError(f"`start` must be on the model's grid {model.shape}, got {start.shape}")
    run = _Run(model, start, settings)
    fit = model.fit(run.obj)
    run.scale_to_data(fit)
    history = [{**fit.summary(), "amplitude_error": model.amplitude_error(model.intensity(run.obj)),
                "seconds": time.perf_counter() - t0}]
    if settings.iteration_cap == 0:
        yield run.state(0, fit, history, time.perf_counter() - t0, StopReason.ITERATIONS,
                        _why(StopReason.ITERATIONS, 0, settings))
        return
    yield run.state(0, fit, history, time.perf_counter() - t0)
    trail = [model.positions]  # positions after each iteration, for the auto rule
    for iteration in range(1, settings.iteration_cap + 1):
        error = run.epoch(iteration)
        trail = [*trail[-AUTO_WINDOW:], model.positions]
        seconds = time.perf_counter() - t0
        if iteration > 1:  # this pass measured the state the previous iteration left
            history.append({"amplitude_error": error, "seconds": seconds})
        reason = (StopReason.CONVERGED if _converged(history, trail, iteration, settings)
                  else StopReason.TIME_LIMIT if settings.time_limit_s is not None and seconds > settings.time_limit_s
                  else StopReason.ITERATIONS if iteration == settings.iteration_cap else None)
        if reason is None:
            yield run.state(iteration, None, history, seconds)
            continue
        intensity = model.intensity(run.obj)
        fit = model.measured.fit(intensity)
        seconds = time.perf_counter() - t0
        history.append({**fit.summary(), "amplitude_error": model.amplitude_error(intensity), "seconds": seconds})
        yield run.state(iteration, fit, history, seconds, reason, _why(reason, iteration, settings))
        return
