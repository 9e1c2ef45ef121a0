"""The array library the solver runs on: numpy + ``scipy.fft`` on the CPU, CuPy on a GPU.

The solver's arithmetic is written once against ``backend.xp`` (numpy's API, which CuPy mirrors); the
few operations whose fastest form differs between a CPU and a GPU live here: gathering the ``N x N``
windows of an object, adding windows back onto it, and the FFTs. CuPy comes with the ``gpu`` extra
(``pip install 'ptychopinn-serve[gpu]'``, CUDA 12); nothing imports it unless ``backend="cupy"``
is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import scipy.fft

from ptycho_torch.choices import ArrayBackendName, check_table, parse, values
from ptycho_torch.errors import DataContractError

__all__ = ["ENVIRONMENT", "ArrayBackend", "array_backend", "backend_problem", "cpu_threads", "default_backend",
           "flat_index_kernels"]

ENVIRONMENT = "PTYCHOPINN_REFINE_BACKEND"
"""Environment variable naming the process's default backend (``numpy`` when unset; ``ptychopinn serve
--refine-backend`` sets it): how a GPU host's server, Ptychodus or ``ptychopinn reconstruct`` refine on
the GPU without a per-request setting (where to compute is the host's choice, not the client's)."""


def cpu_threads(workers: int) -> int:
    """``workers`` threads, -1: every CPU this process may use."""
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ArrayBackend:
    """One array library's ``xp`` namespace and the solver's library-specific kernels."""

    name: ArrayBackendName
    xp: ModuleType
    fft2: Callable[..., Any]
    """``fft2(a, norm="ortho", overwrite_x=..., workers=...)`` over the last two axes."""
    ifft2: Callable[..., Any]
    gather: Callable[[Any, Any, Any, int], Any]
    """``gather(obj, rows, cols, n)``: the ``(b, n, n)`` windows of 2-D ``obj`` whose top-left corners are
    ``(rows[j], cols[j])`` (a copy)."""
    scatter_add: Callable[[Any, Any, Any, Any], None]
    """``scatter_add(grid, rows, cols, values)``: ``grid[r:r+n, c:c+n] += values[j]`` for every ``j``,
    overlapping windows summed."""
    to_numpy: Callable[[Any], np.ndarray]
    parallel: bool
    """True when independent chunks of patterns are worth running on CPU threads."""


def _numpy_gather(obj: np.ndarray, rows: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(obj, (n, n))[rows, cols]


def _numpy_scatter_add(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
    # one slice add per window: contiguous rows, no index arrays (faster than np.add.at or bincount here)
    n = values.shape[-1]
    for r, c, v in zip(rows.tolist(), cols.tolist(), values, strict=True):
        grid[r:r + n, c:c + n] += v


def _numpy() -> ArrayBackend:
    return ArrayBackend(ArrayBackendName.NUMPY, np, scipy.fft.fft2, scipy.fft.ifft2, _numpy_gather, _numpy_scatter_add,
                        np.asarray, parallel=True)


def flat_index_kernels(xp: ModuleType, scatter_add: Callable[[Any, Any, Any], None]
                       ) -> tuple[Callable[[Any, Any, Any, int], Any], Callable[[Any, Any, Any, Any], None]]:
    """``gather`` and ``scatter_add`` through flat pixel indices (one kernel each, what a GPU wants), given
    the library's unbuffered ``scatter_add(flat, index, values)`` (``cupyx.scatter_add``, ``np.add.at``)."""

    def window_index(obj: Any, rows: Any, cols: Any, n: int) -> Any:
        offsets = (xp.arange(n)[:, None] * obj.shape[1] + xp.arange(n)[None, :]).ravel()
        starts = xp.asarray(rows) * obj.shape[1] + xp.asarray(cols)
        return starts[:, None] + offsets[None, :]

    def gather(obj: Any, rows: Any, cols: Any, n: int) -> Any:
        return obj.ravel()[window_index(obj, rows, cols, n)].reshape(len(rows), n, n)

    def add_windows(grid: Any, rows: Any, cols: Any, values: Any) -> None:
        n = values.shape[-1]
        scatter_add(grid.reshape(-1), window_index(grid, rows, cols, n).ravel(), values.reshape(-1))

    return gather, add_windows


def _cupy() -> ArrayBackend:
    try:
        import cupy  # type: ignore[import-not-found]
        import cupyx  # type: ignore[import-not-found]
        import cupyx.scipy.fft as cufft  # type: ignore[import-not-found]
    except ImportError as error:
        raise DataContractError("backend 'cupy' needs CuPy: pip install 'ptychopinn-serve[gpu]' "
                                f"(CUDA 12), or use backend 'numpy' ({error})") from None

    def fft(function: Callable[..., Any]) -> Callable[..., Any]:
        def run(a: Any, *, norm: str | None = None, overwrite_x: bool = False, workers: int | None = None) -> Any:
            return function(a, norm=norm, overwrite_x=overwrite_x)
        return run

    gather, scatter_add = flat_index_kernels(cupy, cupyx.scatter_add)
    return ArrayBackend(ArrayBackendName.CUPY, cupy, fft(cufft.fft2), fft(cufft.ifft2), gather, scatter_add,
                        cupy.asnumpy, parallel=False)


_BACKENDS: Mapping[ArrayBackendName, Callable[[], ArrayBackend]] = check_table(ArrayBackendName, {
    ArrayBackendName.NUMPY: _numpy,
    ArrayBackendName.CUPY: _cupy,
})


def _from_environment() -> str | None:
    """``$PTYCHOPINN_REFINE_BACKEND`` as set; None when unset or empty (numpy)."""
    return os.environ.get(ENVIRONMENT) or None


def default_backend() -> ArrayBackendName:
    """The backend a refinement uses unless told: ``$PTYCHOPINN_REFINE_BACKEND``, else (unset or empty) ``numpy``."""
    return parse(ArrayBackendName, f"${ENVIRONMENT}", _from_environment() or "numpy", DataContractError)


def backend_problem(name: str | None = None) -> str | None:
    """Why refinements cannot run on ``name`` (``--refine-backend``; None: on ``$PTYCHOPINN_REFINE_BACKEND``), in
    one line naming the fix; None when they can (numpy always can)."""
    given = name if name is not None else _from_environment()
    if given is None:
        return None
    where = f"`--refine-backend {given}`" if name is not None else f"`${ENVIRONMENT}={given}`"
    fix = ("" if name is not None else
           f"; unset ${ENVIRONMENT} or set it to numpy (CPU threads), or install the gpu extra for cupy "
           "(pip install 'ptychopinn-serve[gpu]')")
    if given not in values(ArrayBackendName):
        return f"{where}: refinements run on one of {list(values(ArrayBackendName))}, got {given!r}{fix}"
    try:
        array_backend(given)
    except DataContractError as error:
        return f"{where}: {error}{fix}"
    return None


def array_backend(name: ArrayBackendName | str) -> ArrayBackend:
    """The backend called ``name`` (``numpy`` or ``cupy``); :class:`DataContractError` naming the fix if
    its library is not installed."""
    return _BACKENDS[parse(ArrayBackendName, "backend", name, DataContractError)]()
