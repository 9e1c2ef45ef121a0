"""Iterative refinement against the measured patterns: the object, and optionally the probe modes and
the positions (numpy + ``scipy.fft`` on CPU threads, or CuPy on a GPU; no torch).

- :mod:`~ptycho_torch.refinement.scan_model`: the forward model and the sums of one pass;
- :mod:`~ptycho_torch.refinement.solver`: the update rules (:data:`ALGORITHMS`), ``"auto"`` convergence
  and the :func:`refine` loop;
- :mod:`~ptycho_torch.refinement.probe_modes`: orthogonal incoherent modes;
- :mod:`~ptycho_torch.refinement.stitched`: refining a stitched result on its canvas;
- :mod:`~ptycho_torch.refinement.backend`: numpy or CuPy.
"""

from ptycho_torch.choices import StopReason
from ptycho_torch.refinement.scan_model import ScanModel
from ptycho_torch.refinement.solver import (
    ALGORITHMS,
    AUTO,
    Refinement,
    RefineSettings,
    correction_size,
    correction_warning,
    default_algorithm,
    refine,
)
from ptycho_torch.refinement.stitched import STARTS, StitchedRefinement, canvas_model, refine_stitched

__all__ = ["ALGORITHMS", "AUTO", "STARTS", "RefineSettings", "Refinement", "ScanModel", "StitchedRefinement",
           "StopReason", "canvas_model", "correction_size", "correction_warning", "default_algorithm", "refine", "refine_stitched"]
