"""Writing a reconstruction to disk: amplitude/phase PNGs and the arrays as NPZ (numpy-only).

Shared by the in-process workflow (:mod:`ptycho_torch.workflows.components`) and the remote path of
``ptychopinn reconstruct --server``, so both write the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.errors import DataContractError
from ptycho_torch.stitching import StitchResult


def save_outputs(
    amplitude: np.ndarray, phase: np.ndarray, results: dict[str, Any] | None, output_prefix: str | Path
) -> dict[str, Path]:
    """Write ``reconstructed_amplitude.png`` (gray), ``reconstructed_phase.png`` (viridis) and
    ``reconstruction.npz`` (amplitude, phase, and coverage/origin when ``results`` has a stitch:
    a ``stitched`` :class:`StitchResult`, or ``coverage`` and ``origin`` entries) into the folder
    ``output_prefix``; return the paths by kind."""
    from matplotlib.image import imsave  # no pyplot: no GUI backend, no global figure state

    out = Path(output_prefix)
    out.mkdir(parents=True, exist_ok=True)
    amplitude, phase = np.squeeze(amplitude), np.squeeze(phase)
    if amplitude.ndim != 2 or phase.shape != amplitude.shape:
        raise DataContractError(f"`amplitude` and `phase` must be matching 2-D images, got shapes "
                                f"{amplitude.shape} and {phase.shape}")
    paths = {"amplitude_png": out / "reconstructed_amplitude.png", "phase_png": out / "reconstructed_phase.png",
             "npz": out / "reconstruction.npz"}
    imsave(paths["amplitude_png"], amplitude, cmap="gray")
    imsave(paths["phase_png"], phase, cmap="viridis", vmin=-np.pi, vmax=np.pi)
    arrays: dict[str, Any] = {"amplitude": amplitude.astype(np.float32), "phase": phase.astype(np.float32)}
    results = results or {}
    stitched = results.get("stitched")
    coverage, origin = (stitched.coverage, stitched.origin) if isinstance(stitched, StitchResult) else (
        results.get("coverage"), results.get("origin"))
    if coverage is not None and origin is not None:
        arrays["coverage"] = np.asarray(coverage, dtype=np.float32)
        arrays["origin"] = np.asarray(origin, dtype=np.float64)
    np.savez(paths["npz"], **arrays)
    return paths
