"""The probe a network should be trained with: the training scan's own, refined by the solver; and the
object the solver refined with it, as distillation targets.

A scan file's ``probeGuess`` is often not the probe of the measurement (the shipped Siemens star:
with the file's probe held fixed no solver gets past phase correlation 0.16, docs/benchmarks.md
"Solver"). A network trained through the physics with a wrong probe learns the wrong object, so
the training recipe for measured data first refines the probe on the training scan itself (flat
object start, ``rpie``, the probe and its modes updated, ``auto`` stop) and trains with the result.
Distillation (``TrainingConfig.distill_weight``) also keeps the refined object and cuts each
pattern's target patch from it (:func:`with_targets`).
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ptycho_torch.data import RawData
from ptycho_torch.grouping import extract_patches
from ptycho_torch.normalization import input_scale
from ptycho_torch.refinement.solver import AUTO, Refinement, RefineSettings, refine
from ptycho_torch.refinement.stitched import canvas_model
from ptycho_torch.stitching import canvas_geometry

#: the most iterations the estimate runs (the star converges in about 60)
MAX_ITERATIONS = 300


@dataclass(frozen=True)
class ProbeEstimate:
    """A probe refined on a scan, the object refined with it, and what the refinement did."""

    probe: npt.NDArray[np.complex64]
    """``(P, N, N)`` complex64 modes at the data's power."""
    iterations: int
    seconds: float
    stopped: str
    amplitude_error: tuple[float, float]
    """``sum (sqrt(I) - sqrt(k))**2 / sum k`` before and after."""
    object: npt.NDArray[np.complex64]
    """``(H, W)`` complex64 refined object on the canvas that holds every probe window; its global
    complex gain is arbitrary (the data's scale is carried by the probe)."""
    origin: tuple[int, int]
    """``(x0, y0)``: the canvas pixel ``(column, row)`` of scan position ``(0, 0)``."""

    def summary(self) -> dict[str, Any]:
        """JSON-able record for a manifest or a run's summary."""
        return {"method": "refined on the training scan (flat object start, probe refined)",
                "iterations": self.iterations, "seconds": round(self.seconds, 2), "stopped": self.stopped,
                "amplitude_error": [round(e, 5) for e in self.amplitude_error],
                "modes": int(self.probe.shape[0])}


def estimate_probe(scan: RawData, *, iterations: int | Literal["auto"] = AUTO, probe_modes: int | None = None,
                   time_limit_s: float | None = None, workers: int = -1) -> ProbeEstimate:
    """Refine ``scan.probeGuess`` on ``scan`` from a flat object (see the module docstring).

    ``probe_modes`` (None: the file's count) sets the modes refined. Raises
    :class:`~ptycho_torch.errors.DataContractError` on patterns without signal (the input normalisation's
    check) and on settings the solver rejects.
    """
    input_scale(scan.diff3d)  # all-zero or non-finite patterns: the one-line error training gives them too
    settings = RefineSettings(iterations=iterations, refine_probe=True, probe_modes=probe_modes,
                              time_limit_s=time_limit_s, workers=workers, max_iterations=MAX_ITERATIONS)
    positions = np.column_stack([scan.xcoords, scan.ycoords])
    N = scan.diff3d.shape[-1]
    origin, shape = canvas_geometry((positions[:, 0].min(), positions[:, 0].max()),
                                    (positions[:, 1].min(), positions[:, 1].max()), N)
    model = canvas_model(scan.diff3d, positions, scan.probeGuess, shape, origin, settings)
    last: Refinement = collections.deque(refine(model, model.grow(np.ones(shape, np.complex64), 1.0), settings),
                                         maxlen=1)[0]
    errors = (last.history[0]["amplitude_error"], last.history[-1]["amplitude_error"])
    return ProbeEstimate(np.asarray(last.probe, np.complex64), last.iteration, last.seconds, last.stopped or "",
                         errors, np.asarray(model.crop(last.object), np.complex64), origin)


def with_probe(scan: RawData, probe: npt.NDArray[np.complexfloating]) -> RawData:
    """``scan`` with ``probeGuess`` replaced (a 1-mode probe as ``(N, N)``, as scan files hold it)."""
    modes = np.asarray(probe, np.complex64)
    return dataclasses.replace(scan, probeGuess=modes[0] if modes.shape[0] == 1 else modes)


def target_patches(scan: RawData, estimate: ProbeEstimate) -> npt.NDArray[np.complex64]:
    """``(S, N, N)`` complex64: the estimate's object cut at each of ``scan``'s positions (bilinear,
    :func:`~ptycho_torch.grouping.extract_patches`; patch centre on the position, as the network's)."""
    x0, y0 = estimate.origin
    return extract_patches(estimate.object, scan.xcoords + x0, scan.ycoords + y0, scan.N).astype(np.complex64)


def with_targets(scan: RawData, estimate: ProbeEstimate) -> RawData:
    """``scan`` refined for distillation: the estimate's probe, and ``Y`` (the per-pattern patches the
    grouping cuts targets from) the estimate's object at each position (:func:`target_patches`).
    ``scan`` must be the scan the estimate was refined on."""
    return dataclasses.replace(with_probe(scan, estimate.probe), Y=target_patches(scan, estimate))
