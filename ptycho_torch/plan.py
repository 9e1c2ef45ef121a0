"""What one reconstruction will do, decided once: ``resolve(model, options) -> Plan``.

Every path that reconstructs (``POST /v1/reconstruct``, ``ptychopinn reconstruct``, the Ptychodus
reconstructors, a live session) turns a request's :class:`ReconstructOptions` and the model's
:class:`~ptycho_torch.model_facts.ModelFacts` into one frozen :class:`Plan` with :func:`resolve`:
the stitch crop, the neighbour count, where the network's scale comes from, the pixel size, which
probe the data fit and the refinement use, and the refinement itself. This module is the only home
of those rules and their errors (:class:`~ptycho_torch.errors.InvalidInput`, HTTP 400). A live
session resolves with ``stream=True``, which adds only what a stream cannot do. numpy only.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ptycho_torch.choices import RefineAlgorithm, RefineStart, ScalePolicy, Units, choice_fields, parse
from ptycho_torch.config import to_primitives
from ptycho_torch.errors import DataContractError, InvalidInput, InvalidValues
from ptycho_torch.model_facts import ModelFacts
from ptycho_torch.normalization import input_scale
from ptycho_torch.pixel_size import check_pixel_size, valid_pixel_size
from ptycho_torch.refinement import AUTO, RefineSettings
from ptycho_torch.scan_checks import SCALE_RANGE, PreparedScan, bad_pixel_mask, prepare_scan
from ptycho_torch.stitching import check_stitch_M

__all__ = ["MAX_REFINE_ITERATIONS", "Plan", "ProbeSource", "ReconstructOptions", "RefineIterations", "resolve"]

MAX_REFINE_ITERATIONS = 1000
"""Most refinement iterations one request may ask for (with ``refine_time_limit_s``, bounds its time)."""

RefineIterations = int | Literal["auto"]
"""A count of refinement iterations, or ``"auto"`` (:data:`~ptycho_torch.refinement.AUTO`): until the data
fit stops improving."""

_ITERATIONS_EXPECTED = (f"a whole number of iterations in [0, {MAX_REFINE_ITERATIONS}] or {AUTO!r} (refine until the "
                        "data fit stops improving, within `refine_time_limit_s`)")

class ProbeSource(StrEnum):
    """Which probe the data fit and the refinement use: the one sent with the scan, else the model's."""

    REQUEST = "request"
    MODEL = "model"


@dataclass(frozen=True, kw_only=True)
class ReconstructOptions:
    """Per-request choices; :meth:`from_mapping` builds one from JSON (unknown keys refused)."""

    # Each option is checked on its own here; the rules that need the model are resolve()'s. This
    # docstring is published as the schema's description (a typed HTTP body field), so it stays short.

    __pydantic_config__ = {"extra": "forbid"}  # a typed HTTP body field (serving): unknown keys refused there too

    scale_policy: ScalePolicy | None = None
    """``scan``: normalise by this scan's own patterns; ``bundle``: the training value (streams);
    ``explicit``: the option ``scale``; None: ``explicit`` when ``scale`` is given, else the model's default.
    ``scan`` or ``bundle`` together with ``scale`` is refused (which one was meant?)."""
    units: Units | None = None
    """What ``patterns`` hold: amplitudes (sqrt of counts, the project convention) or raw counts;
    None: integer dtypes are counts, floats amplitudes (the rule of every entry point)."""
    stitch_M: int | None = None
    """Central crop kept from each patch when stitching; None: the model's value."""
    scale: float | None = None
    """The network's ``scale`` input, given explicitly (e.g. one value for every chunk of a scan), in
    ``[1e-30, 1e30]``; None: computed by ``scale_policy``."""
    neighbor_count: int | None = None
    """K nearest neighbours a group's members are drawn from (gridsize > 1 only); None: the model's
    (:attr:`ModelFacts.neighbor_count`, what it was trained with)."""
    seed: int = 0
    """Seed of the neighbour draw (gridsize > 1 only), so a request is reproducible."""
    pixel_size_m: float | None = None
    """The scan's object pixel size in metres; refused when it differs from the model's training
    pixel size by more than 1 % (:func:`~ptycho_torch.pixel_size.check_pixel_size`). None: unchecked."""
    refine_iterations: RefineIterations = 0
    """Iterations of refinement against the measured patterns after the network
    (:mod:`ptycho_torch.refinement`), at most :data:`MAX_REFINE_ITERATIONS`; ``"auto"``: until the data
    fit stops improving, within ``refine_time_limit_s``; 0: none."""
    refine_algorithm: RefineAlgorithm | None = None
    """The update rule: ``er`` error reduction over the whole scan at once, ``rpie`` regularised PIE in
    mini-batches, ``mpie`` rPIE with momentum; None: chosen per case
    (:func:`~ptycho_torch.refinement.default_algorithm`: ``er`` for the object alone, ``rpie`` when the probe
    or the positions are refined too)."""
    refine_probe: bool = False
    """Refine the probe (its incoherent modes) with the object; the response carries it (``probe``)."""
    refine_positions: bool = False
    """Correct each scan position with the object; the response carries them (``positions``)."""
    refine_start: RefineStart = RefineStart.NETWORK
    """``network``: refine the network's stitched object; ``flat``: start from amplitude 1, phase 0 and
    skip the network (for a scan the model was not trained for)."""
    refine_time_limit_s: float = 300.0
    """Refinement stops after the iteration that passes this many seconds (the response says so)."""

    def __post_init__(self) -> None:
        for name in ("stitch_M", "neighbor_count", "seed"):
            _require_count(name, getattr(self, name))
        object.__setattr__(self, "refine_iterations", _require_iterations(self.refine_iterations))
        for name in ("refine_probe", "refine_positions"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInput(f"`{name}` must be true or false, got {getattr(self, name)!r}")
        for name, choice in choice_fields(ReconstructOptions).items():
            value = getattr(self, name)
            if value is not None or name not in _optional_fields(ReconstructOptions):  # null for a choice: 400
                object.__setattr__(self, name, parse(choice, name, value, InvalidInput))
        if self.scale is not None:
            _require_positive("scale", self.scale, "a positive finite number")
            low, high = SCALE_RANGE
            if not low <= self.scale <= high:  # well formed, but no network input is that far out: 422
                raise InvalidValues(f"`scale` must be in [{low:g}, {high:g}], got {self.scale!r}: the network's input "
                                    "is patterns * scale; leave it out to normalise by the scan")
        if self.pixel_size_m is not None:
            try:
                valid_pixel_size(self.pixel_size_m, what="`pixel_size_m`")
            except DataContractError as error:
                raise InvalidInput(str(error)) from None
        _require_positive("refine_time_limit_s", self.refine_time_limit_s, "a positive number")
        self._check_combinations()

    def _check_combinations(self) -> None:
        if self.scale_policy == ScalePolicy.EXPLICIT and self.scale is None:
            raise InvalidInput("`scale_policy` 'explicit' needs the option `scale` (the network's scale input); "
                               "send it, or use 'scan' or 'bundle'")
        if self.scale is not None and self.scale_policy not in (None, ScalePolicy.EXPLICIT):
            raise InvalidInput(f"`scale` and `scale_policy` {str(self.scale_policy)!r} contradict each other: a given "
                               "scale is the 'explicit' policy; send one of them")
        if self.refine_start == RefineStart.FLAT and self.refine_iterations == 0:
            raise InvalidInput("`refine_start` 'flat' needs `refine_iterations` >= 1 (a flat object explains nothing); "
                               f"ask for {AUTO!r} (until the data fit stops improving) or a number of iterations")
        if self.refine_algorithm is not None and self.refine_iterations == 0:
            raise InvalidInput(f"`refine_algorithm` {str(self.refine_algorithm)!r} needs `refine_iterations` >= 1 or "
                               f"{AUTO!r} (it is the refinement's update rule); ask for {AUTO!r} or a number of "
                               "iterations, or leave `refine_algorithm` out")
        for name, what in (("refine_probe", "the probe is refined with the object"),
                           ("refine_positions", "the positions are corrected with the object")):
            if getattr(self, name) and self.refine_iterations == 0:
                raise InvalidInput(f"`{name}` needs `refine_iterations` >= 1 or {AUTO!r} ({what}, iteration by "
                                   f"iteration); ask for {AUTO!r}, or leave `{name}` out")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ReconstructOptions:
        """Options from a JSON object; unknown keys raise :class:`InvalidInput` listing the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise InvalidInput(f"unknown options {unknown}; known options are {sorted(known)}")
        return cls(**mapping)

    def refinement(self) -> RefineSettings | None:
        """The refinement these options ask for (None: ``refine_iterations`` is 0); which probe it uses is
        :func:`resolve`'s question."""
        if self.refine_iterations == 0:
            return None
        return RefineSettings(iterations=self.refine_iterations, algorithm=self.refine_algorithm,
                              time_limit_s=float(self.refine_time_limit_s), refine_probe=self.refine_probe,
                              refine_positions=self.refine_positions)

    def network_only(self) -> ReconstructOptions:
        """These options without any refinement (every ``refine_*`` option at its default): for a path that
        runs the network through the pipeline and refines elsewhere (the Ptychodus reconstructors)."""
        defaults = ReconstructOptions()
        return dataclasses.replace(self, **{name: getattr(defaults, name) for name in _REFINE_OPTIONS})

    def to_json(self) -> dict[str, Any]:
        """The options that differ from their defaults, as JSON values (what a client sends)."""
        defaults = to_primitives(ReconstructOptions())
        return {name: value for name, value in to_primitives(self).items() if value != defaults[name]}


_REFINE_OPTIONS = tuple(f.name for f in dataclasses.fields(ReconstructOptions) if f.name.startswith("refine_"))


def _require_iterations(value: Any) -> RefineIterations:
    """``value`` as ``refine_iterations``: ``"auto"``, or a whole number as an ``int`` (an integral float such as
    JSON's ``3.0`` and numpy integers count; bools do not)."""
    if isinstance(value, str) and value == AUTO:
        return AUTO
    whole = (isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and value.is_integer())
             ) and not isinstance(value, bool)
    if not whole or value < 0:
        raise InvalidInput(f"`refine_iterations` must be {_ITERATIONS_EXPECTED}, got {value!r}")
    if value > MAX_REFINE_ITERATIONS:
        raise InvalidInput(f"`refine_iterations` must be at most {MAX_REFINE_ITERATIONS}, got {value}; ask for "
                           f"fewer, or for {AUTO!r} to refine until the data fit stops improving (within "
                           "`refine_time_limit_s`)")
    return int(value)


@cache
def _optional_fields(cls: type) -> frozenset[str]:
    """The fields of dataclass ``cls`` whose annotation admits None (a null means "the default rule")."""
    return frozenset(name for name, hint in typing.get_type_hints(cls).items() if type(None) in typing.get_args(hint))


def _require_count(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise InvalidInput(f"`{name}` must be a non-negative integer, got {value!r}")


def _require_positive(name: str, value: Any, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InvalidInput(f"`{name}` must be {expected}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What one reconstruction will do (see the module docstring); made by :func:`resolve`."""

    model: ModelFacts
    stitch_M: int  # the project-wide name of the crop
    """Central crop kept from each patch when stitching, in ``[1, N/2]``."""
    neighbor_count: int
    """K nearest neighbours each group's members are drawn from (gridsize > 1; unused at gridsize 1)."""
    seed: int
    """Seed of the neighbour draw."""
    units: Units | None
    """What the patterns hold; None: the dtype decides (integers are counts)."""
    scale_policy: ScalePolicy
    """Where the network's ``scale`` comes from (never None: the model's default filled in)."""
    scale: float | None
    """The network's ``scale`` when known before the scan is seen (``bundle``, ``explicit``); None for
    ``scan``, where :meth:`network_scale` measures it."""
    pixel_size_m: float | None
    """Object pixel size of the result in metres: the scan's, else the model's; None when neither says."""
    probe_source: ProbeSource | None
    """The probe the data fit and the refinement use; None when neither the request nor the model has one."""
    refinement: RefineSettings | None
    """The refinement after the network (None: none)."""
    refine_start: RefineStart
    """Where the refinement starts: the network's object, or a flat one (then the network is skipped)."""

    @property
    def N(self) -> int:  # the project-wide name of the patch size
        return self.model.N

    @property
    def run_network(self) -> bool:
        """False when refinement starts from a flat object: the network is skipped."""
        return self.refine_start == RefineStart.NETWORK

    @property
    def grouped(self) -> bool:
        """The model takes groups of ``gridsize**2 > 1`` patterns (drawn from K neighbours)."""
        return self.model.channels > 1

    def bad_pixels(self, request_mask: Any = None) -> npt.NDArray[np.bool_] | None:
        """The detector pixels to inpaint: the model's mask always, the request's ``(N, N)`` added to it."""
        own = self.model.bad_pixels
        if request_mask is None or own is None:
            return own if request_mask is None else request_mask
        return own | bad_pixel_mask(request_mask, self.N)

    def prepare(self, patterns: npt.NDArray[Any], positions: npt.NDArray[np.float64],
                mask: Any = None) -> PreparedScan:
        """:func:`~ptycho_torch.scan_checks.prepare_scan` under this plan: its units, the model's bad
        pixels and the request's ``mask`` inpainted (what :meth:`network_scale` and the network see)."""
        return prepare_scan(patterns, positions, units=self.units, mask=self.bad_pixels(mask))

    def network_scale(self, scan: PreparedScan) -> float:
        """The network's ``scale`` for a prepared scan: :attr:`scale` when known, else ``input_scale`` of
        its frames without the too-bright ones; raises :class:`InvalidValues` when they are all zero."""
        if self.scale is not None:
            return self.scale
        x, frames = scan.amplitudes, scan.scale_frames
        x = x if len(frames) == len(x) else x[frames]  # usually no copy
        if not (x > 0).any():
            raise InvalidValues("`patterns` are all zero: the `scan` scale policy needs some signal; send real "
                                "patterns or use scale_policy='bundle'")
        return input_scale(x)


def resolve(model: ModelFacts, options: ReconstructOptions | None = None, *, probe_given: bool = False,
            stream: bool = False) -> Plan:
    """The :class:`Plan` for reconstructing with ``model`` under ``options``; ``probe_given``: the
    request sends the probe the scan was measured with. ``stream``: a live session, which sees frames
    as they are measured, so its scale cannot come from the whole scan (the policy defaults to
    ``bundle``), its patterns cannot be grouped with neighbours not measured yet (gridsize 1 only), and
    it refines (when asked) with the model's probe, the only one it has. Raises :class:`InvalidInput`
    naming the option and the fix."""
    options = options or ReconstructOptions()
    if stream:
        _check_streamable(model, options)
    M = model.stitch_M if options.stitch_M is None else options.stitch_M
    check_stitch_M(M, model.N)
    policy, scale = _scale(model, options, stream)
    probe_source = ProbeSource.REQUEST if probe_given else ProbeSource.MODEL if model.probe is not None else None
    return Plan(model=model, stitch_M=M, neighbor_count=_neighbor_count(model, options), seed=options.seed,
                units=options.units, scale_policy=policy, scale=scale, pixel_size_m=_pixel_size(model, options),
                probe_source=probe_source, refinement=_refinement(options, probe_source), refine_start=options.refine_start)


def _check_streamable(model: ModelFacts, options: ReconstructOptions) -> None:
    if options.scale_policy == ScalePolicy.SCAN:
        raise InvalidInput(
            "`scale_policy` must be 'bundle' for a session, got 'scan': a stream cannot normalise by the whole scan "
            "before it has been measured; send options {\"scale_policy\": \"bundle\"}, or the scale itself when the "
            "client knows it (option `scale`)")
    if model.channels != 1:
        raise InvalidInput(
            f"sessions stream single-pattern models (gridsize 1); model {model.name!r} has gridsize "
            f"{model.gridsize}, whose neighbour groups need the whole scan: use POST /v1/reconstruct")
    if options.refine_iterations != 0 and model.probe is None:
        raise InvalidInput(
            f"`refine_iterations` in a session refines with the model's probe, and model {model.name!r} has none: "
            "refine the whole scan with POST /v1/reconstruct and its `probe` once it is measured, or leave the "
            "option out")


def _scale(model: ModelFacts, options: ReconstructOptions, stream: bool) -> tuple[ScalePolicy, float | None]:
    """The scale policy in force and the scale it gives before the scan is seen (None: measured on the scan)."""
    if options.scale is not None:  # in range (ReconstructOptions); checked against the patterns when they come
        return ScalePolicy.EXPLICIT, float(options.scale)
    policy = options.scale_policy or (ScalePolicy.BUNDLE if stream else model.default_scale_policy)
    return policy, None if policy == ScalePolicy.SCAN else float(model.training_scale)


def _neighbor_count(model: ModelFacts, options: ReconstructOptions) -> int:
    K = model.neighbor_count if options.neighbor_count is None else options.neighbor_count
    if model.channels > 1 and K < model.channels:
        raise InvalidInput(f"`neighbor_count` must be >= gridsize**2 = {model.channels} for this model, got "
                           f"{K}; omit it for the model's {model.neighbor_count}")
    return K


def _pixel_size(model: ModelFacts, options: ReconstructOptions) -> float | None:
    try:
        return check_pixel_size(options.pixel_size_m, model.pixel_size_m, model=f"model {model.name}")
    except DataContractError as error:
        raise InvalidInput(str(error)) from None


def _refinement(options: ReconstructOptions, probe_source: ProbeSource | None) -> RefineSettings | None:
    if options.refine_iterations != 0 and probe_source is None:
        raise InvalidInput("`refine_iterations` needs the probe the scan was measured with: send `probe` (this "
                           "model has none)")
    return options.refinement()
