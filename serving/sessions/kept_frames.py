"""The frames a refining session keeps once they are on its canvas: what its refinement runs over.

The :class:`~serving.sessions.frame_table.FrameTable` lets a frame go once it is inferred; a session
whose plan refines keeps every stitched frame here instead (``4 N**2 + 24`` bytes each: the amplitude
and its position and index), because each refinement round runs over the whole scan so far.
Append-only: a :class:`ScanFrames` snapshot's arrays never change afterwards (growing copies into
new arrays and leaves the old ones to the snapshots that hold them), so a snapshot taken under the
session's lock is read by the refinement thread without it. Not thread-safe otherwise: the
:class:`~serving.sessions.session.Session` holds the lock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["KeptFrames", "ScanFrames", "bytes_per_frame"]

_FIRST_CAPACITY = 256


def bytes_per_frame(N: int) -> int:
    """Bytes one kept frame of ``N x N`` pixels takes: its float32 amplitudes, position and index."""
    return 4 * N * N + 2 * 8 + 8


@dataclass(frozen=True)
class ScanFrames:
    """Frames in the order they were stitched: ``indices (S,)`` int64 scan indices, ``amplitudes
    (S, N, N)`` float32 (the network's input: units applied, bad pixels inpainted, fftshifted),
    ``positions (S, 2)`` float64 ``[x, y]`` object pixels (patch centres)."""

    indices: npt.NDArray[np.int64]
    amplitudes: npt.NDArray[np.float32]
    positions: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.indices)

    def by_index(self) -> ScanFrames:
        """The same frames in scan-index order (copies): the order of a whole-scan request."""
        order = np.argsort(self.indices, kind="stable")
        return ScanFrames(self.indices[order], self.amplitudes[order], self.positions[order])


class KeptFrames:
    """Up to ``limit`` frames of ``N x N`` pixels kept in stitch order; memory ``(4 N**2 + 24)`` bytes per
    frame (the capacity doubles as frames come, so up to twice that, and never past ``limit`` frames)."""

    def __init__(self, N: int, limit: int) -> None:
        self.N, self.limit = N, limit
        self._count = 0
        first = min(limit, _FIRST_CAPACITY)
        self._indices = np.zeros(first, np.int64)
        self._amplitudes = np.zeros((first, N, N), np.float32)
        self._positions = np.zeros((first, 2), np.float64)

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes held (the capacity, not only the frames kept)."""
        return self._indices.nbytes + self._amplitudes.nbytes + self._positions.nbytes

    def add(self, indices: npt.NDArray[np.int64], amplitudes: npt.NDArray[np.float32],
            positions: npt.NDArray[np.float64]) -> None:
        """Keep frames ``amplitudes (K, N, N)`` of scan ``indices (K,)`` stitched at ``positions (K, 2)``."""
        first, last = self._count, self._count + len(indices)
        if last > len(self._indices):
            self._grow(min(self.limit, max(last, 2 * len(self._indices))))
        self._indices[first:last] = indices
        self._amplitudes[first:last] = amplitudes
        self._positions[first:last] = positions
        self._count = last

    def snapshot(self) -> ScanFrames:
        """The frames kept so far (views that later frames never change)."""
        count = self._count
        return ScanFrames(self._indices[:count], self._amplitudes[:count], self._positions[:count])

    def _grow(self, capacity: int) -> None:
        count = self._count
        indices, amplitudes, positions = (np.zeros((capacity, *a.shape[1:]), a.dtype)
                                          for a in (self._indices, self._amplitudes, self._positions))
        indices[:count], amplitudes[:count], positions[:count] = (
            self._indices[:count], self._amplitudes[:count], self._positions[:count])
        self._indices, self._amplitudes, self._positions = indices, amplitudes, positions
