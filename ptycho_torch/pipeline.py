"""Reconstruct a whole scan: validate -> amplitudes -> scale -> group -> batched inference -> stitch
-> data fit [-> physics refinement].

The one reconstruct implementation, behind ``POST /v1/reconstruct``, ``ptychopinn reconstruct`` and
the Ptychodus reconstructors. It is model-agnostic: a :class:`Runner` brings the model's facts
(:class:`ModelInfo`, which a :class:`~ptycho_torch.bundle.Bundle` satisfies) and batched inference
``infer(diffraction, scale)``. Runners live at the edges: the onnxruntime engine and dynamic batcher
in ``serving``, the remote runner in ``serving.client``. Every result carries its ``data_fit``
(:mod:`ptycho_torch.data_fit`) against the measured patterns, with the request's probe or else the
model's; ``refine_iterations`` adds a known-probe refinement (:mod:`ptycho_torch.refinement`) after
the network, or instead of it with ``refine_start="flat"``. numpy only.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from ptycho_torch.choices import RefineAlgorithm, RefineStart, values
from ptycho_torch.errors import DataContractError, InvalidInput, InvalidValues
from ptycho_torch.grouping import group_indices
from ptycho_torch.normalization import input_scale
from ptycho_torch.pixel_size import check_pixel_size, valid_pixel_size
from ptycho_torch.refinement import RefineSettings, refine_stitched
from ptycho_torch.scan_checks import PreparedScan, bad_pixel_mask, check_network_input, prepare_scan
from ptycho_torch.stitching import Stitcher, complex_patches

__all__ = ["MAX_REFINE_ITERATIONS", "ModelInfo", "ReconstructOptions", "Reconstruction", "Runner", "network_scale",
           "reconstruct", "reconstruct_steps", "require_finite_outputs", "require_non_negative"]

MAX_REFINE_ITERATIONS = 1000
"""Most refinement iterations one request may ask for (with ``refine_time_limit_s``, bounds its time)."""


class ModelInfo(Protocol):
    """The facts about a model that reconstructing with it needs (a bundle, a served model, a checkpoint)."""

    @property
    def N(self) -> int: ...  # noqa: N802 - the project-wide name of the patch size

    @property
    def gridsize(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def stitch_M(self) -> int: ...  # noqa: N802

    @property
    def neighbor_count(self) -> int:
        """K nearest neighbours a group's members are drawn from when the request gives none (gridsize > 1):
        what the model was trained with."""
        ...

    @property
    def training_scale(self) -> float:
        """The normalisation scalar measured on the training data (the ``bundle`` scale policy)."""
        ...

    @property
    def default_scale_policy(self) -> str: ...

    @property
    def probe(self) -> npt.NDArray[np.complex64] | None:
        """The training probe ``(P, N, N)``, or None when unknown (then no probe check is made)."""
        ...

    @property
    def bad_pixels(self) -> npt.NDArray[np.bool_] | None:
        """The detector's bad-pixel mask ``(N, N)`` (True = bad) masked in every scan, or None."""
        ...

    @property
    def pixel_size_m(self) -> float | None:
        """Object pixel size of the training data in metres, or None when unknown (then no check)."""
        ...


class Runner(Protocol):
    """What :func:`reconstruct` needs: the model's facts, and batched inference
    ``(B, C, N, N)`` float32 amplitudes and ``(B,)`` float32 scales -> amplitude, phase ``(B, C, N, N)``."""

    @property
    def model(self) -> ModelInfo: ...

    def infer(
        self, diffraction: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...


@dataclass(frozen=True, kw_only=True)
class ReconstructOptions:
    """Per-request choices; :meth:`from_mapping` builds one from JSON (unknown keys refused)."""

    __pydantic_config__ = {"extra": "forbid"}  # a typed HTTP body field (serving): unknown keys refused there too

    scale_policy: Literal["scan", "bundle"] | None = None
    """``scan``: normalise by this scan's own patterns; ``bundle``: the training value (streams);
    None: the bundle's default policy."""
    units: Literal["amplitude", "counts"] | None = None
    """What ``patterns`` hold: amplitudes (sqrt of counts, the project convention) or raw counts;
    None: integer dtypes are counts, floats amplitudes (the rule of every entry point)."""
    stitch_M: int | None = None
    """Central crop kept from each patch when stitching; None: the bundle's value."""
    scale: float | None = None
    """The network's ``scale`` input, given explicitly (e.g. one value for every chunk of a scan);
    None: computed by ``scale_policy``."""
    neighbor_count: int | None = None
    """K nearest neighbours a group's members are drawn from (gridsize > 1 only); None: the model's
    (:attr:`ModelInfo.neighbor_count`, what it was trained with)."""
    seed: int = 0
    """Seed of the neighbour draw (gridsize > 1 only), so a request is reproducible."""
    pixel_size_m: float | None = None
    """The scan's object pixel size in metres; refused when it differs from the model's training
    pixel size by more than 1 % (:func:`~ptycho_torch.pixel_size.check_pixel_size`). None: unchecked."""
    refine_iterations: int = 0
    """Iterations of known-probe object refinement against the measured patterns after the network
    (:mod:`ptycho_torch.refinement`); 0: none. At most :data:`MAX_REFINE_ITERATIONS`."""
    refine_algorithm: Literal["er", "rpie"] = "er"
    """``er``: error reduction over the whole scan at once (fast); ``rpie``: regularised PIE in mini-batches."""
    refine_start: Literal["network", "flat"] = "network"
    """``network``: refine the network's stitched object; ``flat``: start from amplitude 1, phase 0 and
    skip the network (for a scan the model was not trained for)."""
    refine_time_limit_s: float = 300.0
    """Refinement stops after the iteration that passes this many seconds (the response says so)."""

    def __post_init__(self) -> None:
        if self.scale_policy not in (None, "scan", "bundle"):
            raise InvalidInput(f"`scale_policy` must be 'scan' or 'bundle', got {self.scale_policy!r}")
        if self.units not in (None, "amplitude", "counts"):
            raise InvalidInput(f"`units` must be 'amplitude' or 'counts' (or absent), got {self.units!r}")
        for name in ("stitch_M", "neighbor_count", "seed", "refine_iterations"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise InvalidInput(f"`{name}` must be a non-negative integer, got {value!r}")
        if self.pixel_size_m is not None:
            try:
                valid_pixel_size(self.pixel_size_m, what="`pixel_size_m`")
            except DataContractError as error:
                raise InvalidInput(str(error)) from None
        if self.scale is not None and (isinstance(self.scale, bool) or not isinstance(self.scale, (int, float))
                                       or not np.isfinite(self.scale) or self.scale <= 0):
            raise InvalidInput(f"`scale` must be a positive finite number, got {self.scale!r}")

        if self.refine_iterations > MAX_REFINE_ITERATIONS:
            raise InvalidInput(f"`refine_iterations` must be at most {MAX_REFINE_ITERATIONS}, got "
                               f"{self.refine_iterations}; 20-50 iterations reach the noise floor on typical scans")
        if self.refine_algorithm not in values(RefineAlgorithm):
            raise InvalidInput(f"`refine_algorithm` must be one of {list(values(RefineAlgorithm))}, got "
                               f"{self.refine_algorithm!r}")
        if self.refine_start not in values(RefineStart):
            raise InvalidInput(f"`refine_start` must be 'network' or 'flat', got {self.refine_start!r}")
        if self.refine_start == RefineStart.FLAT and self.refine_iterations == 0:
            raise InvalidInput("`refine_start` 'flat' needs `refine_iterations` >= 1 (a flat object explains nothing); "
                               "ask for e.g. 20 iterations")
        if (isinstance(self.refine_time_limit_s, bool) or not isinstance(self.refine_time_limit_s, (int, float))
                or not self.refine_time_limit_s > 0):
            raise InvalidInput(f"`refine_time_limit_s` must be a positive number, got {self.refine_time_limit_s!r}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ReconstructOptions:
        """Options from a JSON object; unknown keys raise :class:`InvalidInput` listing the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise InvalidInput(f"unknown options {unknown}; known options are {sorted(known)}")
        return cls(**mapping)


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
    n_patterns: int
    n_groups: int
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: validate, scale, group, inference, stitch, data_fit, refine, total."""
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
    (``request`` or ``model``: which probe the figures use) and ``iterations`` (the summary figures after
    each refinement iteration, 0 = the start object). None when neither the request nor the model has
    a probe, and in the states of :func:`reconstruct_steps` between the first and the last iteration."""
    refinement: dict[str, Any] | None = None
    """``iterations`` done, ``algorithm``, ``start``, ``stopped`` (why it ended early, else None) and
    ``peak_bytes`` (estimated working memory) when refinement ran."""


def _check_patterns(patterns: Any, N: int) -> npt.NDArray[np.float32]:
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
    """Raise :class:`~serving.errors.InvalidValues` naming the items (first axis) of ``array`` that
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


def _probe_difference(probe: Any, model: ModelInfo) -> float | None:
    array = np.asarray(probe)
    N = model.N
    if array.dtype.kind not in "fc" or array.ndim not in (2, 3) or array.shape[-2:] != (N, N):
        raise InvalidInput(f"`probe` must be complex (N, N) or (P, N, N) with N={N}, got {array.dtype} "
                             f"{list(array.shape)}")
    if not np.isfinite(array).all():
        raise InvalidValues("`probe` must be finite, got NaN/inf")
    if model.probe is None:
        return None
    given = array.reshape(-1, N, N)[0].astype(np.complex128).ravel()
    trained = model.probe[0].astype(np.complex128).ravel()
    best = np.vdot(given, trained) / max(np.vdot(given, given).real, np.finfo(float).tiny)  # optimal complex gain
    return float(np.linalg.norm(best * given - trained) / np.linalg.norm(trained))


def network_scale(amplitudes: npt.NDArray[np.float32], policy: str, training_scale: float) -> float:
    """The network's ``scale`` input: ``input_scale(amplitudes)`` for the ``scan`` policy (raises
    :class:`~ptycho_torch.errors.InvalidValues` when they are all zero), else ``training_scale``."""
    if policy != "scan":
        return training_scale
    if not (amplitudes > 0).any():
        raise InvalidValues("`patterns` are all zero: the `scan` scale policy needs some signal; send real "
                            "patterns or use scale_policy='bundle'")
    return input_scale(amplitudes)


def scan_scale(scan: PreparedScan, policy: str, training_scale: float) -> float:
    """:func:`network_scale` of a prepared scan: its frames without the too-bright ones
    (:attr:`~ptycho_torch.scan_checks.PreparedScan.scale_frames`)."""
    x, frames = scan.amplitudes, scan.scale_frames
    return network_scale(x if len(frames) == len(x) else x[frames], policy, training_scale)  # usually no copy


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
    options = options or ReconstructOptions()
    model = runner.model
    t0 = time.perf_counter()
    x = _check_patterns(patterns, model.N)
    pos = _check_positions(positions, len(x))
    probe_difference = None if probe is None else _probe_difference(probe, model)
    M = model.stitch_M if options.stitch_M is None else options.stitch_M
    if not 1 <= M <= model.N // 2:
        raise InvalidInput(f"`stitch_M` must be in [1, N/2 = {model.N // 2}], got {M}")
    if model.channels > 1 and options.neighbor_count is not None and options.neighbor_count < model.channels:
        raise InvalidInput(f"`neighbor_count` must be >= gridsize**2 = {model.channels} for this model, got "
                           f"{options.neighbor_count}; omit it for the model's {model.neighbor_count}")
    if model.channels > 1 and len(x) <= model.channels:
        raise InvalidInput(f"`patterns` must hold more than gridsize**2 = {model.channels} patterns for this "
                           f"model (gridsize {model.gridsize}), got {len(x)}; send the whole scan")
    try:
        pixel_size_m = check_pixel_size(options.pixel_size_m, model.pixel_size_m, model="the model")
    except DataContractError as error:
        raise InvalidInput(str(error)) from None
    fit_probe, probe_source = (probe, "request") if probe is not None else (model.probe, "model")
    if fit_probe is None and options.refine_iterations:
        raise InvalidInput("`refine_iterations` needs the probe the scan was measured with: send `probe` (this "
                           "model has none)")
    t1 = time.perf_counter()

    if model.bad_pixels is not None:  # the detector's own mask, always; the request's adds to it
        mask = model.bad_pixels if mask is None else model.bad_pixels | bad_pixel_mask(mask, model.N)
    scan = prepare_scan(x, pos, units=options.units, mask=mask)
    x = scan.amplitudes
    if options.scale is not None:
        policy, scale = "explicit", float(options.scale)
    else:
        policy = options.scale_policy or model.default_scale_policy
        scale = scan_scale(scan, policy, model.training_scale)
    check_network_input(scale, float(x.max()))
    t2 = time.perf_counter()

    network = options.refine_start == RefineStart.NETWORK
    if model.channels == 1:
        members = np.arange(len(x))[:, None]
        diffraction = x[:, None]
    else:
        K = model.neighbor_count if options.neighbor_count is None else options.neighbor_count  # noqa: N806
        members = group_indices(pos[:, 0], pos[:, 1], gridsize=model.gridsize, K=K, seed=options.seed)
        diffraction = x[members]
    t3 = time.perf_counter()

    patch_positions = pos[members.ravel()]
    if network:
        amplitude, phase = runner.infer(diffraction, np.full(len(diffraction), scale, np.float32))
        require_finite_outputs(amplitude, phase)
        patches = complex_patches(amplitude, phase).reshape(-1, model.N, model.N)
    else:  # the canvas and its coverage only; the object starts flat
        patches = np.zeros((len(patch_positions), model.N, model.N), np.complex64)
    t4 = time.perf_counter()

    stitcher = Stitcher.from_positions(patch_positions, M=M)
    stitcher.add(patches, patch_positions)
    stitched = stitcher.result()
    t5 = time.perf_counter()
    timings = {"validate": t1 - t0, "scale": t2 - t1, "group": t3 - t2, "inference": t4 - t3, "stitch": t5 - t4}
    result = Reconstruction(
        amplitude=stitched.amplitude, phase=stitched.phase, coverage=stitched.coverage.astype(np.float32),
        origin=stitched.origin, scale=float(scale), scale_policy=policy, n_patterns=len(x), n_groups=len(members),
        timings={**timings, "total": t5 - t0}, pixel_size_m=pixel_size_m, probe_difference=probe_difference,
        scan_report=scan.report.to_json(),
    )
    if fit_probe is None:  # nothing to check the result against
        yield result
        return

    settings = RefineSettings(iterations=options.refine_iterations, algorithm=options.refine_algorithm,
                              time_limit_s=float(options.refine_time_limit_s))
    for step in refine_stitched(x, pos, fit_probe, stitched.canvas, stitched.coverage, stitched.origin, settings,
                                start=options.refine_start):
        state = step.state
        if state.iteration == 0 and not network:
            continue  # a flat object is not a result
        stage = {"data_fit": state.history[0]["seconds"],
                 "refine": state.seconds - state.history[0]["seconds"] if state.iteration else 0.0}
        # iteration 0 returns the network's object as stitched (the refinement's copy is rescaled and filled)
        canvas = stitched.canvas if state.iteration == 0 else step.canvas
        yield dataclasses.replace(
            result, amplitude=np.abs(canvas).astype(np.float32), phase=np.angle(canvas).astype(np.float32),
            timings={**timings, **stage, "total": time.perf_counter() - t0},
            data_fit=(None if state.fit is None else
                      {**state.fit.to_json(), "probe": probe_source, "iterations": state.history}),
            refinement=None if not options.refine_iterations else {
                "iterations": state.iteration, "algorithm": options.refine_algorithm, "start": options.refine_start,
                "stopped": state.stopped, "peak_bytes": step.peak_bytes},
        )


def require_finite_outputs(amplitude: npt.NDArray[np.float32], phase: npt.NDArray[np.float32]) -> None:
    """Raise :class:`~serving.errors.InvalidValues` if the model returned NaN or inf: never in a result."""
    bad = ~(np.isfinite(amplitude).all(axis=tuple(range(1, amplitude.ndim)))
            & np.isfinite(phase).all(axis=tuple(range(1, phase.ndim))))
    if bad.any():
        raise InvalidValues(f"the model returned NaN/inf for items {np.flatnonzero(bad)[:10].tolist()}: their "
                            "input (patterns x scale) is outside what the network handles; check the units "
                            "and the scale")

