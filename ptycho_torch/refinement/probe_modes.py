"""Incoherent probe modes: adding modes, orthogonalising them, holding their power.

The far field of incoherent modes, ``sum_m |FFT(P_m O)|**2``, does not change when the modes are mixed
by a unitary matrix. :func:`orthogonalise` uses that freedom to keep the modes orthogonal and sorted by
power (the SVD of the ``(P, N*N)`` mode matrix: ``U^H P``), as pty-chi and PtyLab do after each probe
update, so mode 0 is the dominant, coherent part of the beam.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SEED_MODE_POWER", "orthogonalise", "power", "with_modes"]

SEED_MODE_POWER = 0.05
"""Power of each added mode, as a fraction of the first mode's (the update grows what the data need)."""


def power(modes: Any) -> float:
    """Total power ``sum_m ||P_m||**2`` of ``(P, N, N)`` modes."""
    return float((modes.real ** 2 + modes.imag ** 2).sum())


def orthogonalise(modes: Any, xp: Any) -> Any:
    """``(P, N, N)`` modes mixed into orthogonal ones sorted by power (same far-field intensity)."""
    P, N, _ = modes.shape
    if P == 1:
        return modes
    _, singular, rows = xp.linalg.svd(modes.reshape(P, N * N), full_matrices=False)
    return (singular[:, None] * rows).reshape(P, N, N).astype(xp.complex64)


def with_modes(modes: Any, count: int, xp: Any) -> Any:
    """``modes`` ``(P, N, N)`` cut to ``count`` or grown to it with modes seeded from the first: the first
    mode times a linear ramp across x, then y, then both (orthogonal to it for a symmetric beam), each
    at :data:`SEED_MODE_POWER` of its power."""
    P, N, _ = modes.shape
    if count <= P:
        return modes[:count]
    coordinate = xp.asarray(np.linspace(-1.0, 1.0, N, dtype=np.float32))
    ramps = [coordinate[None, :], coordinate[:, None], coordinate[None, :] * coordinate[:, None]]
    first = modes[0]
    extra = []
    for k in range(count - P):
        seed = first * ramps[k % len(ramps)] * (1 + k // len(ramps))
        extra.append(seed * np.sqrt(SEED_MODE_POWER * power(first) / max(power(seed), 1e-30)))
    return xp.concatenate([modes, xp.stack(extra).astype(xp.complex64)])
