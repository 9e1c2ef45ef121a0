"""A ``frames`` or ``positions`` message of a live session, checked whole before any of it is kept.

A malformed message (wrong dtype or shape) raises :class:`~serving.errors.InvalidRequest` and
nothing of it is kept. Otherwise every item gets a reason, or None: the first problem found with it
(index out of range, NaN/inf, negative values), in an ``(K,)`` object array the session's tables
add their own reasons to (:func:`flag`) and turn into the receipt's rejections. Frames become the
network's amplitudes here, by the session's plan: its units rule and the model's bad-pixel mask
(inpainted per message; a stream cannot find hot pixels across the scan). numpy only, no state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ptycho_torch.plan import Plan
from ptycho_torch.scan_checks import check_network_input, inpaint, to_amplitudes
from serving.errors import InvalidRequest

__all__ = ["FrameMessage", "IndexRange", "PositionMessage", "Reasons", "flag", "read_frames", "read_positions",
           "unflagged"]

Reasons = npt.NDArray[np.object_]
"""``(K,)`` the reason each item of a message is refused (str), or None where it is fine so far."""


def unflagged(reasons: Reasons) -> npt.NDArray[np.bool_]:
    """Where ``reasons`` holds no reason yet."""
    return np.equal(reasons, None)  # type: ignore[call-overload]  # numpy's stubs lack object comparisons


def flag(reasons: Reasons, mask: npt.NDArray[np.bool_], reason: str) -> None:
    """Give ``reason`` to the items of ``mask`` that have none yet (an item reports its first problem)."""
    reasons[mask & unflagged(reasons)] = reason


@dataclass(frozen=True)
class IndexRange:
    """Scan indices a session takes: ``[0, limit)``; ``limit`` is ``expected_frames`` when given, else
    the server's largest scan (``max_frames``)."""

    expected_frames: int | None
    limit: int

    @classmethod
    def of(cls, expected_frames: int | None, max_frames: int) -> IndexRange:
        """Raises :class:`InvalidRequest` when ``expected_frames`` is not an integer in ``[1, max_frames]``."""
        if expected_frames is not None and not (isinstance(expected_frames, int) and 1 <= expected_frames <= max_frames):
            raise InvalidRequest(f"`expected_frames` must be an integer in [1, {max_frames}], got {expected_frames!r}")
        return cls(expected_frames, expected_frames or max_frames)

    def problems(self, index: npt.NDArray[np.int64]) -> Reasons:
        """The reason each of ``index (K,)`` is refused, or None where it is in range."""
        reasons = np.full(len(index), None, object)
        if self.expected_frames is not None:
            too_large = f"index must be < expected_frames = {self.expected_frames}"
        else:
            too_large = f"index must be < {self.limit}, this server's largest scan (give expected_frames)"
        reasons[index >= self.limit] = too_large
        reasons[index < 0] = "index must be >= 0"
        return reasons


@dataclass(frozen=True)
class PositionMessage:
    """``positions (K, 2)`` ``[x, y]`` object pixels (patch centres) for scan ``index (K,)``."""

    index: npt.NDArray[np.int64]
    positions: npt.NDArray[np.float64]
    reasons: Reasons


@dataclass(frozen=True)
class FrameMessage:
    """``amplitudes (K, N, N)`` float32 (the network's input, bad pixels inpainted) for scan ``index (K,)``,
    with the message's positions when it carried them."""

    index: npt.NDArray[np.int64]
    amplitudes: npt.NDArray[np.float32]
    reasons: Reasons
    positions: PositionMessage | None


def read_positions(indices: npt.ArrayLike, positions: npt.ArrayLike, index_range: IndexRange) -> PositionMessage:
    """A positions message; items out of range or not finite get their reason."""
    index = _indices(indices, "positions")
    return _position_message(index, _position_array(positions, len(index)), index_range)


def read_frames(plan: Plan, indices: npt.ArrayLike, patterns: npt.ArrayLike, positions: npt.ArrayLike | None,
                index_range: IndexRange) -> FrameMessage:
    """A frames message: ``patterns (K, N, N)`` real, in the plan's units; frames out of range, not
    finite or negative get their reason. Raises :class:`~ptycho_torch.errors.DataContractError` when
    the plan's scale would take the largest frame value past what the network handles."""
    index = _indices(indices, "frames")
    N = plan.N
    array = np.asarray(patterns)
    if array.dtype.kind not in "fiu" or array.shape != (len(index), N, N):
        raise InvalidRequest(f"`patterns` must be real numbers of shape ({len(index)}, {N}, {N}) (one "
                             f"fftshifted pattern per index, N={N} for this model), got {array.dtype} "
                             f"{list(array.shape)}")
    pos = None if positions is None else _position_array(positions, len(index))
    finite = np.isfinite(array).all(axis=(1, 2))
    negative = (array < 0).any(axis=(1, 2)) & finite
    amplitudes = _amplitudes(plan, np.where(negative[:, None, None], 0, array) if negative.any() else array)
    assert plan.scale is not None, "a stream's scale is known before its first frame (resolve(stream=True))"
    check_network_input(plan.scale, float(amplitudes[finite].max()) if finite.any() else 0.0)
    reasons = index_range.problems(index)
    flag(reasons, ~finite, "pattern holds NaN/inf")
    flag(reasons, negative, "pattern holds negative values (amplitudes or counts must be >= 0)")
    return FrameMessage(index, amplitudes, reasons, None if pos is None else _position_message(index, pos, index_range))


def _amplitudes(plan: Plan, patterns: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    """``patterns (K, N, N)`` as float32 amplitudes by the one units rule (integer frames are counts),
    the model's bad pixels inpainted (in a copy: never the caller's array)."""
    amplitudes = to_amplitudes(patterns, plan.units)[0]
    bad_pixels = plan.bad_pixels()
    if bad_pixels is not None:
        if amplitudes is patterns or not amplitudes.flags.writeable:
            amplitudes = amplitudes.copy()
        inpaint(amplitudes, bad_pixels)
    return amplitudes


def _indices(indices: npt.ArrayLike, what: str) -> npt.NDArray[np.int64]:
    array = np.asarray(indices)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        raise InvalidRequest(f"`indices` of a {what} message must be a 1-D integer array (K,), one scan index "
                             f"per item, got {array.dtype} {list(array.shape)}")
    if len(array) == 0:
        raise InvalidRequest(f"a {what} message must hold at least one index, got 0")
    return array.astype(np.int64, copy=False)


def _position_array(positions: npt.ArrayLike, count: int) -> npt.NDArray[np.float64]:
    array = np.asarray(positions)
    if array.dtype.kind not in "fiu" or array.shape != (count, 2):
        raise InvalidRequest(f"`positions` must be real numbers of shape ({count}, 2) as [x, y] object pixels, "
                             f"one row per index, got {array.dtype} {list(array.shape)}")
    return array.astype(np.float64, copy=False)


def _position_message(index: npt.NDArray[np.int64], pos: npt.NDArray[np.float64],
                      index_range: IndexRange) -> PositionMessage:
    reasons = index_range.problems(index)
    flag(reasons, ~np.asarray(np.isfinite(pos).all(axis=1)), "position holds NaN/inf")
    return PositionMessage(index, pos, reasons)
