"""The input normalisation of the network (design.md section 2): one scalar per scan.

``x_norm = x * input_scale(x)`` makes the mean per-pattern energy ``sum_hw x_norm**2`` equal to
``(N/2)**2``. The scalar is computed on the host (numpy only) and fed to the exported graph as its
``scale`` input, so training, export and serving share this one function.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ptycho_torch.errors import DataContractError


def input_scale(amplitudes: ArrayLike) -> float:
    """Return ``sqrt((N/2)**2 / mean_over_patterns sum_hw x**2)`` for amplitudes ``(..., N, N)``.

    The mean runs over every leading axis (patterns, groups, channels); the patterns must be
    channels-first, i.e. the last two axes are the square ``N x N`` detector.
    """
    x = np.asarray(amplitudes)
    if x.ndim < 2 or x.shape[-1] != x.shape[-2] or x.size == 0:
        raise DataContractError(
            f"`amplitudes` must be (..., N, N) square diffraction amplitudes, got shape {x.shape}; "
            "pass patterns channels-first, e.g. (S, N, N) or (B, C, N, N)"
        )
    n = x.shape[-1]
    energy = np.einsum("...hw,...hw->...", x, x, dtype=np.float64).mean()
    if not np.isfinite(energy) or energy <= 0.0:
        raise DataContractError(
            f"`amplitudes` must have a positive finite mean energy sum(x**2), got {energy!r}; "
            "the patterns are all zero or contain NaN/inf"
        )
    return float(np.sqrt((n / 2) ** 2 / energy))
