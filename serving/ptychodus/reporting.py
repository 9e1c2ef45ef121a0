"""Errors into Ptychodus' log panel: it shows the records of a library's own logger, not exceptions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TypeVar

__all__ = ["reported"]

log = logging.getLogger(__name__)  # under `serving.ptychodus`, the logger Ptychodus gives our library

T = TypeVar("T")


def reported(outputs: Iterator[T], action: str) -> Iterator[T]:
    """Pass ``outputs`` through; an exception is logged as ``"<action> failed: <message>"`` (shown in the
    Reconstructor tab), then re-raised (Ptychodus records it; batch mode exits non-zero)."""
    try:
        yield from outputs
    except Exception as error:
        log.error("%s failed: %s: %s", action, type(error).__name__, error)
        raise
