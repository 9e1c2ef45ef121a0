"""Reconstruct a whole scan in named, timed stages: validate -> prepare -> scale -> group -> inference
-> stitch -> data fit [-> refine].

The one reconstruct implementation, behind ``POST /v1/reconstruct``, ``ptychopinn reconstruct`` and
the Ptychodus reconstructors. It is model-agnostic: a :class:`Runner` brings the model's facts
(:class:`~ptycho_torch.model_facts.ModelFacts`) and batched inference ``infer(diffraction, scale)``.
Runners live at the edges: the onnxruntime engine and dynamic batcher in ``serving``, the remote
runner in ``serving.client``, the torch runner in :mod:`ptycho_torch.torch_runner`. What the
reconstruction will do is decided once, by :func:`~ptycho_torch.plan.resolve`; each stage below
only carries it out, and its time is reported under its name (``Reconstruction.timings``). Every
result carries its ``data_fit`` (:mod:`ptycho_torch.data_fit`) against the measured patterns, with
the request's probe or else the model's; the plan's refinement (:mod:`ptycho_torch.refinement`) runs
after the network, or instead of it from a flat object. numpy only.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ptycho_torch.choices import ArrayBackendName, RefineStart
from ptycho_torch.errors import InvalidInput, InvalidValues
from ptycho_torch.group_merge import merge_groups
from ptycho_torch.grouping import group_indices, relative_offsets
from ptycho_torch.model_facts import ModelFacts
from ptycho_torch.plan import Plan, ProbeSource, ReconstructOptions, resolve
from ptycho_torch.refinement import (
    RefineSettings,
    StitchedRefinement,
    correction_size,
    correction_warning,
    refine_stitched,
)
from ptycho_torch.refinement.solver import POSITION_START, PROBE_START
from ptycho_torch.scan_checks import check_network_input
from ptycho_torch.stitching import Stitcher, StitchResult, complex_patches

__all__ = ["Reconstruction", "Runner", "describe_refinement", "reconstruct", "reconstruct_steps", "refinement_summary",
           "require_finite_outputs", "require_non_negative"]


class Runner(Protocol):
    """What :func:`reconstruct` needs: the model's facts, and batched inference
    ``(B, C, N, N)`` float32 amplitudes and ``(B,)`` float32 scales -> amplitude, phase ``(B, C, N, N)``."""

    @property
    def model(self) -> ModelFacts: ...

    def infer(
        self, diffraction: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...


@dataclass(frozen=True)
class Reconstruction:
    """A stitched object and how it was made."""

    amplitude: npt.NDArray[np.float32]
    """``(H, W)`` object amplitude; 0 where no patch landed (see ``coverage``)."""
    phase: npt.NDArray[np.float32]
    """``(H, W)`` object phase in radians, ``[-pi, pi]``."""
    coverage: npt.NDArray[np.float32]
    """``(H, W)`` summed stitching weights: how many patch crops cover each pixel."""
    origin: tuple[float, float]
    """``(x0, y0)``: canvas ``(col, row)`` where object position ``(0, 0)`` lands."""
    scale: float
    """The ``scale`` fed to the network."""
    scale_policy: str
    """The :class:`~ptycho_torch.choices.ScalePolicy` that gave ``scale``: ``scan``, ``bundle`` or ``explicit``."""
    n_patterns: int
    n_groups: int
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage (:class:`StageClock`): validate, prepare, scale, group, inference, stitch, data_fit,
    refine, and the wall time ``total``."""
    pixel_size_m: float | None = None
    """Object pixel size of the result in metres: the scan's, else the model's; None when neither says."""
    probe_difference: float | None = None
    """``min_c ||c * probe - bundle probe|| / ||bundle probe||`` (first mode, best complex gain ``c``, so
    normalisation and global phase do not count) when a probe was given: the network assumes its
    training probe, so a value near 1 means the result is not trustworthy."""
    scan_report: dict[str, Any] = field(default_factory=dict)
    """The plausibility report (:class:`~ptycho_torch.scan_checks.ScanReport`): masked pixels, energy
    layout, position span, and ``warnings`` about what is probably wrong."""
    data_fit: dict[str, Any] | None = None
    """How well this object explains each measured pattern (:meth:`~ptycho_torch.data_fit.DataFit.to_json`:
    per-pattern ``nll`` and ``r_factor``, their ``*_median`` and ``*_p95``, ``outliers``), plus ``probe``
    (``request`` or ``model``: which probe the figures use) and ``iterations`` (one entry per refinement
    iteration, 0 = the start object: ``amplitude_error`` and ``seconds`` in each, the summary figures
    ``nll_median``, ... in the first and the last). None when neither the request nor the model has
    a probe, and in the states of :func:`reconstruct_steps` between the first and the last iteration."""
    refinement: dict[str, Any] | None = None
    """When refinement ran (:func:`refinement_summary`): ``iterations`` done, ``algorithm``, ``start``,
    ``refine_probe``, ``refine_positions``, ``peak_bytes`` (estimated working memory), ``stop_reason``
    (:class:`~ptycho_torch.choices.StopReason`: ``iterations``, ``converged`` or ``time_limit``; a live
    session closed before its final round: ``cancelled``) and
    ``stopped`` (a sentence saying why it stopped; both None before the last state), ``warnings`` (list of
    str), and with ``refine_positions`` ``position_correction_px`` ``{"rms", "max"}`` (pixels)."""
    probe: npt.NDArray[np.complex64] | None = None
    """``(P, N, N)`` complex64: the refined probe modes (``refine_probe``), else None."""
    positions: npt.NDArray[np.float64] | None = None
    """``(S, 2)`` float64 ``[x, y]``: the corrected scan positions (``refine_positions``), in the request's
    coordinates and unit (object pixels, patch centres, one row per pattern as sent), else None."""


class StageClock:
    """Seconds spent per named stage, and in total since the clock was made."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (added to its earlier time, if any)."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - begin

    def timings(self, **extra: float) -> dict[str, float]:
        """Every stage's seconds, ``extra`` stages, and ``total`` (wall time since the clock was made)."""
        return {**self.seconds, **extra, "total": time.perf_counter() - self.start}


@dataclass(frozen=True)
class ScanInput:
    """A request's arrays after the checks of :func:`check_inputs`."""

    patterns: npt.NDArray[Any]
    """``(S, N, N)`` real, finite, non-negative (amplitudes or counts, as sent)."""
    positions: npt.NDArray[np.float64]
    """``(S, 2)`` ``[x, y]`` object pixels, finite."""
    probe: npt.NDArray[Any] | None
    """``(N, N)`` or ``(P, N, N)`` complex, finite; None when none was sent."""


def check_inputs(model: ModelFacts, patterns: Any, positions: Any, probe: Any = None) -> ScanInput:
    """Check a request's arrays against ``model``; raises :class:`InvalidInput` (names, dtypes, shapes)
    or :class:`InvalidValues` (NaN, inf, negative values) naming the array and the fix."""
    x = _check_patterns(patterns, model.N)
    if model.channels > 1 and len(x) <= model.channels:
        raise InvalidInput(f"`patterns` must hold more than gridsize**2 = {model.channels} patterns for this "
                           f"model (gridsize {model.gridsize}), got {len(x)}; send the whole scan")
    return ScanInput(x, _check_positions(positions, len(x)), None if probe is None else _check_probe(probe, model.N))


def _check_patterns(patterns: Any, N: int) -> npt.NDArray[Any]:
    array = np.asarray(patterns)
    if array.dtype.kind not in "fiu":
        raise InvalidInput(f"`patterns` must be real numbers (float32 amplitudes), got dtype {array.dtype}")
    if array.ndim != 3 or array.shape[1:] != (N, N):
        raise InvalidInput(
            f"`patterns` must have shape (S, {N}, {N}) for this model (N={N}), got {list(array.shape)}; "
            f"crop the central {N}x{N} of each pattern (DC at the centre)"
        )
    if len(array) == 0:
        raise InvalidInput("`patterns` must hold at least one pattern, got 0")
    if array.dtype.kind == "f":  # integer counts are always finite
        finite = np.isfinite(array).all(axis=(1, 2))
        if not finite.all():
            raise InvalidValues(f"`patterns` must be finite, got NaN/inf in patterns "
                                f"{np.flatnonzero(~finite)[:10].tolist()}")
    require_non_negative(array, "patterns")
    return array


def require_non_negative(array: npt.NDArray[Any], field: str) -> None:
    """Raise :class:`~ptycho_torch.errors.InvalidValues` naming the items (first axis) of ``array`` that
    hold negative values: amplitudes and counts never do."""
    if array.size and array.dtype.kind != "u" and (array < 0).any():  # unsigned counts never are
        rows = np.flatnonzero((array < 0).reshape(len(array), -1).any(axis=1))
        raise InvalidValues(
            f"`{field}` must be non-negative (amplitudes or counts), got negative values in {field} "
            f"{rows[:10].tolist()}; subtract no background below zero"
        )


def _check_positions(positions: Any, count: int) -> npt.NDArray[np.float64]:
    array = np.asarray(positions)
    if array.dtype.kind not in "fiu" or array.shape != (count, 2):
        raise InvalidInput(
            f"`positions` must be real numbers of shape ({count}, 2) as [x, y] object pixels, one row per "
            f"pattern, got {array.dtype} {list(array.shape)}"
        )
    if not np.isfinite(array).all():
        raise InvalidValues(f"`positions` must be finite, got NaN/inf in rows "
                            f"{np.flatnonzero(~np.isfinite(array).all(axis=1))[:10].tolist()}")
    return array.astype(np.float64, copy=False)


def _check_probe(probe: Any, N: int) -> npt.NDArray[Any]:
    array = np.asarray(probe)
    if array.dtype.kind not in "fc" or array.ndim not in (2, 3) or array.shape[-2:] != (N, N):
        raise InvalidInput(f"`probe` must be complex (N, N) or (P, N, N) with N={N}, got {array.dtype} "
                           f"{list(array.shape)}")
    if not np.isfinite(array).all():
        raise InvalidValues("`probe` must be finite, got NaN/inf")
    return array


def probe_difference(probe: npt.NDArray[Any] | None, model: ModelFacts) -> float | None:
    """``min_c ||c * probe - model probe|| / ||model probe||`` over the first modes (None when either
    probe is unknown): how far the scan's probe is from the one the network was trained with."""
    if probe is None or model.probe is None:
        return None
    given = probe.reshape(-1, model.N, model.N)[0].astype(np.complex128).ravel()
    trained = model.probe[0].astype(np.complex128).ravel()
    best = np.vdot(given, trained) / max(np.vdot(given, given).real, np.finfo(float).tiny)  # optimal complex gain
    return float(np.linalg.norm(best * given - trained) / np.linalg.norm(trained))


def group_members(plan: Plan, positions: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """``(B, C)`` pattern indices of each group: every pattern alone at gridsize 1, else a group seeded
    at every position with members drawn from its ``plan.neighbor_count`` nearest neighbours."""
    if not plan.grouped:
        return np.arange(len(positions))[:, None]
    return group_indices(positions[:, 0], positions[:, 1], gridsize=plan.model.gridsize, K=plan.neighbor_count,
                         seed=plan.seed)


def infer_patches(runner: Runner, plan: Plan, amplitudes: npt.NDArray[np.float32], members: npt.NDArray[np.int64],
                  scale: float, positions: npt.NDArray[np.float64]) -> npt.NDArray[np.complex64]:
    """The network's complex patches ``(B * C, N, N)`` for the groups ``members`` at ``positions`` ``(S, 2)``;
    a grouped model's patches are its merged groups (:func:`~ptycho_torch.group_merge.merge_groups`: what
    its training loss saw with ``object_big``, which a bundle does not record; without it each patch was
    fitted alone and the merge averages agreeing patches); zeros (the canvas and its coverage only) when
    the plan skips the network."""
    N = plan.N
    if not plan.run_network:
        return np.zeros((members.size, N, N), np.complex64)
    diffraction = amplitudes[:, None] if not plan.grouped else amplitudes[members]
    amplitude, phase = runner.infer(diffraction, np.full(len(diffraction), scale, np.float32))
    require_finite_outputs(amplitude, phase)
    patches = complex_patches(amplitude, phase)
    if plan.grouped:
        patches = merge_groups(patches, relative_offsets(positions[:, 0], positions[:, 1], members))
    return patches.reshape(-1, N, N)


def stitch(plan: Plan, patches: npt.NDArray[np.complex64], positions: npt.NDArray[np.float64]) -> StitchResult:
    """``patches (K, N, N)`` stitched at ``positions (K, 2)`` with the plan's crop."""
    stitcher = Stitcher.from_positions(positions, M=plan.stitch_M)
    stitcher.add(patches, positions)
    return stitcher.result()


def reconstruct(
    runner: Runner,
    patterns: npt.ArrayLike,
    positions: npt.ArrayLike,
    *,
    probe: npt.ArrayLike | None = None,
    options: ReconstructOptions | None = None,
    mask: npt.ArrayLike | None = None,
) -> Reconstruction:
    """Reconstruct one scan: ``patterns`` ``(S, N, N)`` (fftshifted, DC at the centre) measured at
    ``positions`` ``(S, 2)`` ``[x, y]`` object pixels (patch centres); ``mask`` ``(N, N)`` bool marks
    bad detector pixels (inpainted, see :func:`~ptycho_torch.scan_checks.prepare_scan`). The last
    state of :func:`reconstruct_steps`.

    Raises :class:`~ptycho_torch.errors.InvalidInput` (wrong shapes, dtypes, options),
    :class:`~ptycho_torch.errors.InvalidValues` (NaN, inf, negative values) or
    :class:`~ptycho_torch.scan_checks.ImplausibleScan` before any inference runs.
    """
    steps = reconstruct_steps(runner, patterns, positions, probe=probe, options=options, mask=mask)
    return collections.deque(steps, maxlen=1)[0]


def reconstruct_steps(
    runner: Runner,
    patterns: npt.ArrayLike,
    positions: npt.ArrayLike,
    *,
    probe: npt.ArrayLike | None = None,
    options: ReconstructOptions | None = None,
    mask: npt.ArrayLike | None = None,
) -> Iterator[Reconstruction]:
    """:func:`reconstruct` as it goes: the network's result (with its data fit), then the object after
    every refinement iteration; the last state carries the final data fit and every iteration's
    figures. Closing the generator between states stops the refinement (a GUI's Stop)."""
    clock = StageClock()
    model = runner.model
    with clock.stage("validate"):
        given = check_inputs(model, patterns, positions, probe)
        plan = resolve(model, options, probe_given=given.probe is not None)
    with clock.stage("prepare"):
        scan = plan.prepare(given.patterns, given.positions, mask)
    with clock.stage("scale"):
        scale = plan.network_scale(scan)
        check_network_input(scale, float(scan.amplitudes.max()))
    with clock.stage("group"):
        members = group_members(plan, given.positions)
    with clock.stage("inference"):
        patches = infer_patches(runner, plan, scan.amplitudes, members, scale, given.positions)
    with clock.stage("stitch"):
        patch_positions = given.positions[members.ravel()]
        stitched = stitch(plan, patches, patch_positions)
    result = Reconstruction(
        amplitude=stitched.amplitude, phase=stitched.phase, coverage=stitched.coverage.astype(np.float32),
        origin=stitched.origin, scale=float(scale), scale_policy=str(plan.scale_policy), n_patterns=len(given.patterns),
        n_groups=len(members), timings=clock.timings(), pixel_size_m=plan.pixel_size_m,
        probe_difference=probe_difference(given.probe, model), scan_report=scan.report.to_json(),
    )
    if plan.probe_source is None:  # nothing to check the result against
        yield result
        return
    fit_probe = given.probe if plan.probe_source == ProbeSource.REQUEST else model.probe
    yield from _fit_and_refine(plan, result, stitched, scan.amplitudes, given.positions, fit_probe, clock)


def _fit_and_refine(plan: Plan, result: Reconstruction, stitched: StitchResult, amplitudes: npt.NDArray[np.float32],
                    positions: npt.NDArray[np.float64], probe: Any, clock: StageClock) -> Iterator[Reconstruction]:
    """The data fit of ``result`` (the network's object), then the plan's refinement iteration by iteration."""
    # no refinement: the data fit alone, one forward pass on the CPU (never the host's refine backend)
    settings = plan.refinement or RefineSettings(iterations=0, backend=ArrayBackendName.NUMPY)
    for step in refine_stitched(amplitudes, positions, probe, stitched.canvas, stitched.coverage, stitched.origin,
                                settings, start=plan.refine_start):
        state = step.state
        if state.iteration == 0 and not plan.run_network:
            continue  # a flat object is not a result
        fit_s = state.history[0]["seconds"]
        # iteration 0 returns the network's object as stitched (the refinement's copy is rescaled and filled)
        canvas = stitched.canvas if state.iteration == 0 else step.canvas
        yield dataclasses.replace(
            result, amplitude=np.abs(canvas).astype(np.float32), phase=np.angle(canvas).astype(np.float32),
            timings=clock.timings(data_fit=fit_s, refine=state.seconds - fit_s if state.iteration else 0.0),
            data_fit=(None if state.fit is None else
                      {**state.fit.to_json(), "probe": str(plan.probe_source), "iterations": state.history}),
            refinement=None if plan.refinement is None else refinement_summary(settings, plan.refine_start, step,
                                                                                positions),
            probe=np.array(state.probe, np.complex64) if settings.refine_probe else None,  # copies: the solver
            positions=np.array(state.positions, np.float64) if settings.refine_positions else None,  # goes on
        )


def refinement_summary(settings: RefineSettings, start: RefineStart, step: StitchedRefinement,
                       given_positions: npt.NDArray[np.float64]) -> dict[str, Any]:
    """:attr:`Reconstruction.refinement` of one state of a refinement under ``settings`` from ``start``, whose
    positions were ``given_positions`` ``(S, 2)`` (plain JSON values; every path that refines reports this)."""
    state = step.state
    summary: dict[str, Any] = {
        "iterations": state.iteration, "algorithm": str(settings.algorithm), "start": str(start),
        "refine_probe": settings.refine_probe, "refine_positions": settings.refine_positions,
        "stop_reason": None if state.stop_reason is None else str(state.stop_reason), "stopped": state.stopped,
        "peak_bytes": step.peak_bytes, "warnings": []}
    if settings.refine_positions:
        shift = np.asarray(state.positions, np.float64) - given_positions  # (S, 2) [dx, dy] object pixels
        summary["position_correction_px"] = correction_size(shift)
        warning = correction_warning(shift)
        summary["warnings"] += [] if warning is None else [warning]
    if state.stop_reason is not None:
        summary["warnings"] += _too_short(settings, state.iteration)
    return summary


def _too_short(settings: RefineSettings, iterations: int) -> list[str]:
    """A warning per asked-for update the solver never made: it moves the probe from iteration
    ``PROBE_START`` and the positions from ``POSITION_START`` on."""
    return [f"`refine_{what}` had no effect: the solver updates the {what} from iteration {first} on and stopped "
            f"after {iterations}; ask for more iterations, or 'auto'"
            for what, first in (("probe", PROBE_START), ("positions", POSITION_START))
            if getattr(settings, f"refine_{what}") and iterations < first]


def describe_refinement(summary: Mapping[str, Any]) -> str:
    """One line for a log from a refinement summary (:func:`refinement_summary`): what ran, why it stopped,
    how far the positions moved; its ``warnings`` are for the caller to log as warnings."""
    line = (f"refinement ({summary['algorithm']} from the {summary['start']} object): {summary['iterations']} "
            f"iterations, stopped ({summary['stop_reason']}): {summary['stopped']}")
    moved = summary.get("position_correction_px")
    return line if moved is None else f"{line}; positions corrected by {moved['rms']:.3g} px rms (max {moved['max']:.3g} px)"


def require_finite_outputs(amplitude: npt.NDArray[np.float32], phase: npt.NDArray[np.float32]) -> None:
    """Raise :class:`~ptycho_torch.errors.InvalidValues` if the model returned NaN or inf: never in a result."""
    bad = ~(np.isfinite(amplitude).all(axis=tuple(range(1, amplitude.ndim)))
            & np.isfinite(phase).all(axis=tuple(range(1, phase.ndim))))
    if bad.any():
        raise InvalidValues(f"the model returned NaN/inf for items {np.flatnonzero(bad)[:10].tolist()}: their "
                            "input (patterns x scale) is outside what the network handles; check the units "
                            "and the scale")

