"""Refinement of a stitched result in place on its canvas: where it starts, and the grid it runs on."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ptycho_torch.choices import RefineStart, check_table, parse
from ptycho_torch.errors import DataContractError
from ptycho_torch.refinement.scan_model import ScanModel
from ptycho_torch.refinement.solver import POSITION_MARGIN_PX, Refinement, RefineSettings, refine

__all__ = ["STARTS", "StitchedRefinement", "canvas_model", "refine_stitched"]


@dataclass(frozen=True)
class StitchedRefinement:
    """A refinement state on a stitched result's canvas (what :func:`refine_stitched` yields)."""

    canvas: npt.NDArray[np.complex64]
    """``(H, W)`` object on the stitched canvas (same shape and origin as the one given)."""
    state: Refinement
    peak_bytes: int
    """Estimated working memory of the refinement (:attr:`ScanModel.peak_bytes`)."""


def _flat_start(model: ScanModel, canvas: npt.NDArray[np.complexfloating], coverage: npt.NDArray[np.floating]
                ) -> npt.NDArray[np.complex64]:
    return model.grow(np.ones(canvas.shape, np.complex64), 1.0)


def _network_start(model: ScanModel, canvas: npt.NDArray[np.complexfloating], coverage: npt.NDArray[np.floating]
                   ) -> npt.NDArray[np.complex64]:
    covered = coverage > 0
    fill = complex(np.abs(canvas[covered]).mean()) if covered.any() else 1.0
    return model.grow(np.where(covered, canvas, fill), fill)


STARTS: Mapping[RefineStart, Callable[[ScanModel, npt.NDArray[np.complexfloating], npt.NDArray[np.floating]],
                                   npt.NDArray[np.complex64]]] = check_table(RefineStart, {
    RefineStart.NETWORK: _network_start,
    RefineStart.FLAT: _flat_start,
})
"""``start`` -> ``(model, stitched canvas, coverage) ->`` the object refinement starts from, on the grown grid."""


def canvas_model(amplitudes: npt.ArrayLike, positions: npt.ArrayLike, probe: npt.ArrayLike,
                 canvas_shape: tuple[int, int], origin: tuple[float, float], settings: RefineSettings) -> ScanModel:
    """The :class:`ScanModel` that refines a scan on a stitched canvas of ``canvas_shape`` under ``settings``
    (its memory bound, threads, backend, and the margin refined positions may move within)."""
    return ScanModel(amplitudes, positions, probe, shape=canvas_shape, origin=origin, max_bytes=settings.max_bytes,
                     workers=settings.workers, backend=settings.backend,
                     margin=POSITION_MARGIN_PX if settings.refine_positions else 0)


def refine_stitched(amplitudes: npt.ArrayLike, positions: npt.ArrayLike, probe: npt.ArrayLike,
                    canvas: npt.NDArray[np.complexfloating], coverage: npt.NDArray[np.floating],
                    origin: tuple[float, float], settings: RefineSettings, *, start: RefineStart | str
                    ) -> Iterator[StitchedRefinement]:
    """:func:`refine` a stitched result in place on its canvas (``(H, W)``, ``origin`` as the stitcher's).

    ``start="network"`` starts from ``canvas``; pixels no patch covered (``coverage == 0``) and the
    margin the probe windows need around the canvas start at the covered pixels' mean amplitude, phase
    0. ``start="flat"`` starts from amplitude 1, phase 0 (``canvas`` only gives the grid). Every state
    is cut back to the canvas; the refinement itself runs on the grown grid (see :class:`ScanModel`).
    """
    initialise = STARTS[parse(RefineStart, "start", start, DataContractError)]
    model = canvas_model(amplitudes, positions, probe, canvas.shape, origin, settings)
    for state in refine(model, initialise(model, canvas, coverage), settings):
        yield StitchedRefinement(model.crop(state.object).copy(), state, model.peak_bytes)
