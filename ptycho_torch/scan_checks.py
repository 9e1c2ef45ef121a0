"""One validation layer for every scan, whichever door it came in by (HTTP, file, Ptychodus). numpy only.

:func:`prepare_scan` turns the patterns a user sent into the amplitudes the network needs and says
what it saw, in three steps:

1. **Units, one rule** (:func:`to_amplitudes`): integer dtypes are photon counts, floats are
   amplitudes, unless the caller says otherwise (``units``).
2. **Bad pixels**: the caller's mask, sentinel values (the integer dtype's maximum, or the common
   maxima stored in float data) and persistent hot pixels are replaced by the mean of their good
   neighbours (:func:`inpaint`), so one defect cannot shift the scan-wide normalisation; frames far
   brighter than the rest are left out of the scale.
3. **Plausibility** (:class:`ScanReport`): what is certainly wrong raises
   :class:`ImplausibleScan` naming the convention (positions in metres, patterns not fftshifted);
   what is probably wrong becomes a warning in the report, which callers log and return.

:func:`check_network_input` is the last check before inference: the ``scale`` is positive and
finite and ``patterns * scale`` stays far from float32 overflow, so no NaN or inf reaches a result.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ptycho_torch.choices import Units, parse
from ptycho_torch.errors import DataContractError, InvalidInput, InvalidValues

__all__ = [
    "ImplausibleScan",
    "PreparedScan",
    "ScanReport",
    "bad_pixel_mask",
    "check_network_input",
    "inpaint",
    "prepare_scan",
    "to_amplitudes",
]

log = logging.getLogger(__name__)

HOT_PIXEL_RATIO = 10.0
"""A pixel whose median over frames exceeds this many times the largest of its 8 neighbours' mean
over frames is hot (amplitudes; 100x in counts). The real Siemens-star scan's largest ratio is 2.3.
The neighbours' mean, not their median: in the dark wings of a pattern (a photon per pixel or less)
the median of Poisson counts jumps between 0 and 1 from pixel to pixel, which made clean pixels look
infinitely brighter than their neighbours."""
BRIGHT_FRAME_RATIO = 10.0
"""A frame with more than this many times the median frame energy is left out of the scale."""
UNSHIFTED_RATIO = 10.0
UNSHIFTED_CORNER_SHARE = 0.5
"""Patterns are certainly in FFT order when the four N/4 corners hold more than this share of the
energy and UNSHIFTED_RATIO times the central N/2 box (a simulated scan in FFT order: 99.7 % vs 0.003 %);
twice the centre's energy in the corners is only a warning: a zone plate's central stop makes an
annular bright field, and the real Siemens-star scan cropped to 32 pixels has 43 % vs 3 % (flat noise:
25 % each)."""
MAX_NETWORK_INPUT = 1e15
"""Largest ``pattern * scale`` value accepted: the graph squares its input, float32 overflows at 3.4e38."""
SCALE_RANGE = (1e-30, 1e30)
"""``scale`` values accepted: float32 holds them with full precision, and their squares stay finite in float64."""
MAX_DETECTION_FRAMES = 256
"""Frames (evenly spaced) used to find hot pixels and the energy layout: cost independent of S."""
_FLOAT_SENTINELS = np.array([2.0**16 - 1, 2.0**15 - 1, 2.0**32 - 1, 2.0**31 - 1, float(np.finfo(np.float32).max)])


class ImplausibleScan(DataContractError):
    """The scan is certainly not in the project's conventions (positions in pixels, DC at the centre)."""


@dataclass
class ScanReport:
    """What :func:`prepare_scan` saw; ``warnings`` are the probable problems, one line each."""

    n_patterns: int
    units: Units
    """``counts`` (converted with sqrt) or ``amplitude``."""
    masked_pixels: int = 0
    """Detector pixels masked in every frame (caller's mask, hot pixels, sentinel pixels)."""
    sentinel_values: int = 0
    """Values equal to a sentinel (dtype maximum / detector gap) across the scan, all inpainted."""
    hot_pixels: list[list[int]] = field(default_factory=list)
    """``[row, col]`` of persistent hot pixels found (at most 20 listed)."""
    bright_frames: list[int] = field(default_factory=list)
    """Frames left out of the scale (energy > BRIGHT_FRAME_RATIO x median); at most 20 listed."""
    centre_energy_fraction: float = 0.0
    """Share of the mean intensity in the central N/2 x N/2 box (DC at the centre: large)."""
    corner_energy_fraction: float = 0.0
    """Share in the four N/4 x N/4 corners (patterns in FFT order: large)."""
    position_span: tuple[float, float] = (0.0, 0.0)
    """``(x, y)`` extent of the positions, object pixels."""
    scan_step: float = 0.0
    """``sqrt(span area / S)``: the typical distance between neighbouring positions, pixels."""
    warnings: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    """What is certainly wrong (``prepare_scan(strict=False)`` only; strict raises the first)."""

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("scan check: %s", message)

    def refuse(self, message: str) -> None:
        self.refusals.append(message)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (response metadata)."""
        return {"n_patterns": self.n_patterns, "units": self.units, "masked_pixels": self.masked_pixels,
                "sentinel_values": self.sentinel_values, "hot_pixels": self.hot_pixels,
                "bright_frames": self.bright_frames,
                "centre_energy_fraction": round(self.centre_energy_fraction, 4),
                "corner_energy_fraction": round(self.corner_energy_fraction, 4),
                "position_span": [float(v) for v in self.position_span], "scan_step": float(self.scan_step),
                "warnings": list(self.warnings), **({"refusals": list(self.refusals)} if self.refusals else {})}


@dataclass(frozen=True)
class PreparedScan:
    """Amplitudes ready for the network, and the report of how they were obtained."""

    amplitudes: npt.NDArray[np.float32]
    """``(S, N, N)`` float32, bad pixels inpainted."""
    scale_frames: npt.NDArray[np.intp]
    """Indices of the frames the scan-wide scale is computed from (bright outliers left out)."""
    report: ScanReport


def to_amplitudes(patterns: npt.NDArray[Any], units: Units | str | None) -> tuple[npt.NDArray[np.float32], Units]:
    """``(float32 amplitudes, units used)``; the one units rule: ``None`` means integer dtypes are
    photon counts (sqrt taken in float64) and floats are amplitudes."""
    if units is None:
        used = Units.COUNTS if patterns.dtype.kind in "iu" else Units.AMPLITUDE
    else:
        used = parse(Units, "units", units, DataContractError)
    if used == Units.COUNTS:
        return np.sqrt(patterns, dtype=np.float64).astype(np.float32), used
    return patterns.astype(np.float32, copy=False), used


MAX_MASKED_FRACTION = 0.5
"""Largest share of the detector a bad-pixel mask may cover; more is almost always an inverted mask."""


def bad_pixel_mask(mask: Any, N: int) -> npt.NDArray[np.bool_]:
    """The caller's bad-pixel mask as ``(N, N)`` bool (True = bad); 0/1 integers accepted.

    Raises :class:`InvalidInput` for a wrong shape or dtype, :class:`InvalidValues` for integers
    other than 0/1, :class:`DataContractError` for a mask too dense to inpaint."""
    array = np.asarray(mask)
    wrong = f"`mask` must be a ({N}, {N}) bool (or 0/1) array, True = bad pixel, got {array.dtype} {list(array.shape)}"
    if array.shape != (N, N) or array.dtype.kind not in "biu":
        raise InvalidInput(wrong)
    if array.dtype.kind != "b" and not np.isin(array, (0, 1)).all():
        raise InvalidValues(wrong)
    bad = array.astype(bool)
    if bad.mean() > MAX_MASKED_FRACTION:
        raise DataContractError(f"`mask` marks {bad.mean():.0%} of the {N}x{N} pixels bad (True = bad pixel); "
                                f"at most {MAX_MASKED_FRACTION:.0%} can be inpainted from good neighbours: "
                                "if True means good in your mask, send its inverse")
    return bad


def _sentinels(patterns: npt.NDArray[Any]) -> npt.NDArray[np.bool_] | None:
    """Where ``patterns`` hold a sentinel value: an integer dtype's maximum, or a float copy of one."""
    if patterns.dtype.kind in "iu":
        top = np.iinfo(patterns.dtype).max
        return patterns == top if patterns.size and patterns.max() == top else None
    if patterns.dtype.kind == "f" and patterns.size and np.isin(patterns.max(), _FLOAT_SENTINELS):
        return np.isin(patterns, _FLOAT_SENTINELS)
    return None


def _neighbour_max(image: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    padded = np.pad(image, 1)
    H, W = image.shape
    shifts = [padded[1 + i:1 + i + H, 1 + j:1 + j + W] for i in (-1, 0, 1) for j in (-1, 0, 1) if i or j]
    return np.max(shifts, axis=0)


def inpaint(amplitudes: npt.NDArray[np.float32], bad: npt.NDArray[np.bool_]) -> None:
    """Replace ``amplitudes[bad]`` in place by the mean of their good 3x3 neighbours, growing inwards
    until every bad pixel has one. ``bad`` is ``(N, N)`` (same pixels every frame) or ``(S, N, N)``.

    With an ``(N, N)`` mask which pixels fill in which round, and from which neighbours, is the same in
    every frame: it is worked out once on the mask (:func:`_fill_rounds`) and only the bad pixels are
    computed, with the same additions in the same order as the whole-frame rounds (equal bit for bit)."""
    if bad.ndim == 2 and bad.shape == amplitudes.shape[-2:]:
        _inpaint_fixed(amplitudes, bad)
        return
    good = ~np.broadcast_to(bad, amplitudes.shape)
    if good.all():
        return
    values = np.where(good, amplitudes, 0).astype(np.float64)
    weight = good.astype(np.float64)
    todo = ~good
    for _ in range(max(amplitudes.shape[-2:])):
        if not (todo & (weight.sum(axis=(-2, -1), keepdims=True) > 0)).any():
            break
        sums, counts = _box_sum(values), _box_sum(weight)
        fill = todo & (counts > 0)
        values[fill] = sums[fill] / counts[fill]
        weight[fill] = 1.0
        todo &= ~fill
    amplitudes[~good] = values[~good]


_OFFSETS: Final = tuple((i, j) for i in (-1, 0, 1) for j in (-1, 0, 1))
"""The 3x3 neighbourhood in :func:`_box_sum`'s order (the order of the additions)."""


FillRounds = tuple[npt.NDArray[np.intp], list[tuple[npt.NDArray[np.intp], ...]]]


def _fill_rounds(bad: npt.NDArray[np.bool_]) -> FillRounds:
    """The bad pixels ``(T, 2)`` [row, col], and per round of :func:`inpaint` the slots it fills and, per
    offset of :data:`_OFFSETS`, the neighbour each reads: its slot among the bad pixels, or -1 for a good
    pixel, -2 for none (outside the frame, or not filled yet: weight 0). Worked out once per mask (a
    model's, reused by every message of a live session), never changed by the caller."""
    return _rounds_of(bad.shape, np.packbits(bad).tobytes())


@functools.lru_cache(maxsize=16)
def _rounds_of(shape: tuple[int, ...], packed: bytes) -> FillRounds:
    H, W = shape
    bad = np.unpackbits(np.frombuffer(packed, np.uint8), count=H * W).astype(bool).reshape(H, W)
    targets = np.argwhere(bad)
    slot = np.full((H, W), -1, np.intp)
    slot[bad] = np.arange(len(targets))
    known = ~bad
    rounds = []
    for _ in range(max(H, W)):
        todo = np.flatnonzero(~known[targets[:, 0], targets[:, 1]])
        reads = []
        for i, j in _OFFSETS:
            r, c = targets[todo, 0] + i, targets[todo, 1] + j
            inside = (r >= 0) & (r < H) & (c >= 0) & (c < W)
            r, c = np.where(inside, r, 0), np.where(inside, c, 0)
            reads.append(np.where(inside & known[r, c], slot[r, c], -2))
        fill = (np.stack(reads) != -2).any(axis=0)
        if not fill.any():
            break
        rounds.append((todo[fill], *(read[fill] for read in reads)))
        known[targets[todo[fill], 0], targets[todo[fill], 1]] = True
    return targets, rounds


def _inpaint_fixed(amplitudes: npt.NDArray[np.float32], bad: npt.NDArray[np.bool_]) -> None:
    """:func:`inpaint` for one ``(N, N)`` mask shared by every frame: the bad pixels only."""
    targets, rounds = _fill_rounds(bad)
    if not len(targets):
        return
    rows, cols = targets[:, 0], targets[:, 1]
    filled = np.zeros((*amplitudes.shape[:-2], len(targets)), np.float64)  # 0 where no round reaches
    for fills, *reads in rounds:
        total = np.zeros((*amplitudes.shape[:-2], len(fills)), np.float64)
        count = np.zeros(len(fills), np.float64)
        for (i, j), read in zip(_OFFSETS, reads, strict=True):
            good, earlier = read == -1, read >= 0
            total[..., good] += amplitudes[..., rows[fills[good]] + i, cols[fills[good]] + j]
            total[..., earlier] += filled[..., read[earlier]]
            count += good | earlier
        filled[..., fills] = total / count
    amplitudes[..., rows, cols] = filled


def _box_sum(image: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    padded = np.pad(image, [(0, 0)] * (image.ndim - 2) + [(1, 1), (1, 1)])
    H, W = image.shape[-2:]
    total = np.zeros_like(image)
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            total += padded[..., 1 + i:1 + i + H, 1 + j:1 + j + W]
    return total


def _check_positions(positions: npt.NDArray[np.float64], N: int, report: ScanReport) -> None:
    S = len(positions)
    span = positions.max(axis=0) - positions.min(axis=0)
    report.position_span = (float(span[0]), float(span[1]))
    report.scan_step = float(np.sqrt(max(span[0], 1.0) * max(span[1], 1.0) / S)) if S > 1 else 0.0
    if S < 2:
        return
    if span.max() == 0:
        report.warn(f"all {S} positions are the same point: the patches do not overlap, so the object is one patch")
    elif span.max() < 1.0:
        report.refuse(
            f"`positions` span {span[0]:.3g} x {span[1]:.3g} object pixels for {S} patterns: they look like "
            "metres (or another physical unit), not pixels; divide them by the object pixel size in the "
            "same unit (e.g. positions_m / 10e-9 for 10 nm pixels)")
    elif report.scan_step > N:
        report.warn(f"positions are {report.scan_step:.0f} pixels apart on average for {N}-pixel patches: the "
                    "patches barely overlap; check the positions' unit (object pixels)")


def _check_layout(sample: npt.NDArray[np.float32], report: ScanReport) -> None:
    N = sample.shape[-1]
    intensity = np.einsum("shw,shw->hw", sample, sample, dtype=np.float64)
    total = intensity.sum()
    if total <= 0:
        return
    q = N // 4
    report.centre_energy_fraction = float(intensity[q:N - q, q:N - q].sum() / total)
    report.corner_energy_fraction = float(np.fft.ifftshift(intensity)[q:N - q, q:N - q].sum() / total)
    centre, corner = report.centre_energy_fraction, report.corner_energy_fraction
    message = (f"the central N/2 box holds {centre:.0%} of the diffraction energy and the corners {corner:.0%}: "
               "the patterns look unshifted (zero frequency in the corners, FFT order); the contract has the "
               "zero frequency at the centre: send numpy.fft.fftshift(patterns, axes=(-2, -1))")
    if corner > UNSHIFTED_CORNER_SHARE and corner > UNSHIFTED_RATIO * centre:
        report.refuse(f"`patterns`: {message}")
    elif corner > 2 * centre:
        report.warn(message)


def _hot_pixels(sample: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    median = np.median(sample, axis=0).astype(np.float64)
    return (median > 0) & (median > HOT_PIXEL_RATIO * _neighbour_max(sample.mean(axis=0, dtype=np.float64)))


def prepare_scan(patterns: npt.NDArray[Any], positions: npt.NDArray[np.float64], *, units: Units | str | None = None,
                 mask: Any = None, strict: bool = True) -> PreparedScan:
    """Validate and prepare one scan: ``patterns`` ``(S, N, N)`` real, finite, non-negative (shape and
    values already checked), ``positions`` ``(S, 2)`` object pixels, ``mask`` ``(N, N)`` bad pixels.

    Raises :class:`ImplausibleScan` for what is certainly wrong (see the module docstring); with
    ``strict=False`` (for describing a scan, not reconstructing it) those findings go to
    ``report.refusals`` instead.
    """
    S, N = patterns.shape[0], patterns.shape[-1]
    sentinels = _sentinels(patterns)
    amplitudes, used = to_amplitudes(patterns, units)
    report = ScanReport(n_patterns=S, units=used)
    if units is None and used == Units.AMPLITUDE and S and amplitudes.max() > 1 and \
            not np.any(np.mod(amplitudes[: MAX_DETECTION_FRAMES], 1)):
        report.warn("`patterns` are float but hold only whole numbers: if they are photon counts, send "
                    "units='counts' (or an integer dtype), otherwise they are taken as amplitudes")
    _check_positions(positions, N, report)
    frames = np.linspace(0, S - 1, min(S, MAX_DETECTION_FRAMES)).astype(np.intp)
    sample = amplitudes[frames]

    bad = np.zeros((N, N), bool) if mask is None else bad_pixel_mask(mask, N)
    if sentinels is not None:
        report.sentinel_values = int(np.count_nonzero(sentinels))
        always = sentinels.all(axis=0)
        bad |= always
        report.warn(f"{report.sentinel_values} values equal the sentinel {patterns.max()} (detector gaps or "
                    f"saturation; {int(always.sum())} pixels in every frame): masked and inpainted from neighbours")
    hot = _hot_pixels(np.where(bad, 0, sample)) & ~bad
    if hot.any():
        report.hot_pixels = np.argwhere(hot)[:20].tolist()
        report.warn(f"{int(hot.sum())} hot pixels (median over frames > {HOT_PIXEL_RATIO:g}x every neighbour), "
                    f"e.g. [row, col] {report.hot_pixels[:3]}: masked and inpainted from neighbours")
        bad |= hot
    report.masked_pixels = int(bad.sum())
    if sentinels is not None or bad.any():
        if amplitudes is patterns or not amplitudes.flags.writeable:
            amplitudes = amplitudes.copy()
        inpaint(amplitudes, bad if sentinels is None else bad | sentinels)
    _check_layout(amplitudes[frames], report)
    if strict and report.refusals:
        raise ImplausibleScan(report.refusals[0])

    energy = np.einsum("shw,shw->s", amplitudes, amplitudes, dtype=np.float64)
    typical = np.median(energy)
    bright = energy > BRIGHT_FRAME_RATIO * typical if typical > 0 else np.zeros(S, bool)
    if bright.any():
        report.bright_frames = np.flatnonzero(bright)[:20].tolist()
        report.warn(f"{int(bright.sum())} frames carry more than {BRIGHT_FRAME_RATIO:g}x the median frame energy "
                    f"(e.g. {report.bright_frames[:5]}): left out of the scan scale; check them for beam or "
                    "detector glitches")
    scale_frames = np.flatnonzero(~bright) if bright.any() else np.arange(S)
    return PreparedScan(amplitudes=amplitudes, scale_frames=scale_frames, report=report)


def check_network_input(scale: npt.ArrayLike, peak: float, *, field: str = "scale") -> None:
    """Refuse a ``scale`` (scalar or per item) that is not positive and finite, or that takes the
    largest input value ``peak`` past :data:`MAX_NETWORK_INPUT` (float32 overflow, NaN output)."""
    values = np.asarray(scale, dtype=np.float64)
    if values.size == 0:
        return
    if not (np.isfinite(values).all() and (values > 0).all()):
        bad = values[~(np.isfinite(values) & (values > 0))]
        raise DataContractError(f"`{field}` must be positive and finite, got {bad[:5].tolist()}; the network "
                                "input is patterns * scale with scale = sqrt((N/2)^2 / mean pattern energy)")
    low, high = SCALE_RANGE
    if values.min() < low or values.max() > high:
        got = f"{float(values.min()):.3g}" + ("" if values.min() == values.max() else f"..{float(values.max()):.3g}")
        raise DataContractError(
            f"`{field}` must be in [{low:g}, {high:g}], got {got}: "
            f"the patterns' largest value is {peak:.3g}; send amplitudes in photon units (sqrt of counts), "
            "not values near the float32 limits")
    top = float(values.max()) * float(peak)
    if not top <= MAX_NETWORK_INPUT:
        raise DataContractError(
            f"`{field}` {float(values.max()):.3g} times the largest pattern value {peak:.3g} is {top:.3g}, over "
            f"{MAX_NETWORK_INPUT:g}: float32 would overflow to NaN; send amplitudes in photon units "
            "(sqrt of counts), not values near the float32 limits")
