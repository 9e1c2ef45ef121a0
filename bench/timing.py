"""Timing helpers shared by the benchmark parts: medians over repeats after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def median_seconds(function: Callable[[], T], *, repeat: int, warmup: int = 1) -> tuple[float, T]:
    """Median wall time of ``repeat`` calls of ``function`` after ``warmup`` untimed calls, and the
    last call's result."""
    result = None
    for _ in range(warmup):
        result = function()
    times = []
    for _ in range(max(repeat, 1)):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result  # type: ignore[return-value]
