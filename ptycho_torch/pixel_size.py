"""The physical object pixel size: where a scan and a bundle record it, and the check between them.

A network reconstructs patches at the pixel scale of its training data: fed a scan with another
object pixel size (another photon energy, detector distance or detector crop), it returns an object
at the wrong scale, silently. A scan records the size in its ``_metadata`` as ``pixel_size_m``
(metres, square pixels); a bundle in its manifest (``pixel_size_m``, from the training scan or
``ptychopinn export --pixel-size-m``). When both are known they must agree within
:data:`RELATIVE_TOLERANCE`. numpy-free, torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ptycho_torch.errors import DataContractError

METADATA_KEY = "pixel_size_m"
RELATIVE_TOLERANCE = 0.01
"""1 %: far below the factor a different detector crop or energy makes, far above float rounding."""


def valid_pixel_size(value: Any, *, what: str) -> float | None:
    """``value`` as a positive finite float of metres (None stays None); raises
    :class:`DataContractError` naming ``what`` otherwise."""
    if value is None:
        return None
    try:
        size = float(value)
    except (TypeError, ValueError):
        size = math.nan
    if not (math.isfinite(size) and 0 < size < 1e-3):
        raise DataContractError(f"{what} must be the object pixel size in metres (0 < size < 1e-3), got {value!r}; "
                                "e.g. 1e-8 for 10 nm pixels")
    return size


def scan_pixel_size(metadata: Mapping[str, Any]) -> float | None:
    """The object pixel size a scan's ``_metadata`` records, or None."""
    return valid_pixel_size(metadata.get(METADATA_KEY), what=f"the scan's `_metadata.{METADATA_KEY}`")


def check_pixel_size(scan_m: float | None, model_m: float | None, *, model: str,
                     subject: str = "the scan's object pixel size") -> float | None:
    """The pixel size the reconstruction is at: the scan's, else the model's (None when neither
    says). Raises :class:`DataContractError` when both are known and differ by more than
    :data:`RELATIVE_TOLERANCE`."""
    if scan_m is not None and model_m is not None and abs(scan_m - model_m) > RELATIVE_TOLERANCE * model_m:
        raise DataContractError(
            f"{subject} {scan_m:.4g} m differs from {model}'s training pixel size {model_m:.4g} m "
            f"(ratio {scan_m / model_m:.3f}); the network only works at its training scale: crop or bin the "
            "detector so the pixel sizes match, or use a model trained at this pixel size")
    return scan_m if scan_m is not None else model_m
