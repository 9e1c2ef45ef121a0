"""Values kept per scan index, looked up and stored a whole message at a time (numpy, no per-index loop)."""

from __future__ import annotations

from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["ScanTable"]

_FIRST_CAPACITY = 1024

T = TypeVar("T", bound=np.generic)


class ScanTable(Generic[T]):
    """A value of ``width`` items of ``dtype`` per scan index ``0 <= i < limit``: row ``i`` of a dense
    array, grown (doubling) to the largest index stored, so memory is ``width * itemsize + 1`` bytes
    per index up to that index."""

    def __init__(self, width: int, dtype: type[T], limit: int) -> None:
        self.limit = limit
        self._values: npt.NDArray[T] = np.zeros((min(limit, _FIRST_CAPACITY), width), dtype)
        self._held = np.zeros(len(self._values), bool)

    def get(self, index: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[T]]:
        """``(held (K,), values (K, width))`` for ``index (K,)``: whether each index has a value (an
        index outside ``[0, limit)`` has none), and the values (meaningless where not held)."""
        rows = index.clip(0, len(self._held) - 1)
        return self._held[rows] & (rows == index), self._values[rows]

    def put(self, index: npt.NDArray[np.int64], values: npt.ArrayLike) -> None:
        """Store ``values (K, width)`` at ``index (K,)`` (each in ``[0, limit)``)."""
        if len(index) == 0:
            return
        needed = int(index.max()) + 1
        if needed > len(self._held):
            self._grow(min(self.limit, max(needed, 2 * len(self._held))))
        self._values[index] = values
        self._held[index] = True

    def _grow(self, capacity: int) -> None:
        values = np.zeros((capacity, self._values.shape[1]), self._values.dtype)
        values[: len(self._values)] = self._values
        held = np.zeros(capacity, bool)
        held[: len(self._held)] = self._held
        self._values, self._held = values, held
