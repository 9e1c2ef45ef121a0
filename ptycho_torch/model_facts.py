"""The facts about a model that reconstructing with it needs: one type for every place a model lives.

A bundle (:attr:`~ptycho_torch.bundle.Bundle.facts`), a generator in this process
(:class:`~ptycho_torch.torch_runner.TorchRunner`) and a model served elsewhere
(:class:`~serving.client.RemoteRunner`, read from the server's Open Inference Protocol metadata)
all describe their model as one :class:`ModelFacts`; :func:`~ptycho_torch.plan.resolve` reads
nothing else. The server publishes them as its OIP metadata ``parameters``
(:meth:`ModelFacts.to_parameters`) and the client reads them back (:meth:`ModelFacts.from_parameters`),
so the two halves of that wire format live here together. numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ptycho_torch.choices import ScalePolicy
from ptycho_torch.grouping import default_neighbor_count

__all__ = ["ModelFacts"]


@dataclass(frozen=True, kw_only=True)
class ModelFacts:
    """A model's geometry, normalisation and training conditions (see the module docstring)."""

    name: str
    """The model's name (a bundle's manifest name, a served model's name, ``torch`` in this process)."""
    N: int  # the project-wide name of the patch size
    """Patch (and detector crop) size in pixels."""
    gridsize: int
    """Patterns per group along one side; the network sees ``gridsize**2`` channels."""
    stitch_M: int
    """Central crop kept from each patch when stitching, unless a request chooses another."""
    training_scale: float
    """The normalisation scalar measured on the training data (the ``bundle`` scale policy)."""
    neighbor_count: int
    """K nearest neighbours a group's members are drawn from (gridsize > 1): what the model was trained with."""
    default_scale_policy: ScalePolicy = ScalePolicy.SCAN
    """The scale policy of a request that names none."""
    pixel_size_m: float | None = None
    """Object pixel size of the training data in metres; None when unknown (then no check)."""
    version: str | None = None
    """The model's version where it has one (a bundle, a served model)."""
    probe: npt.NDArray[np.complex64] | None = field(default=None, compare=False, repr=False)
    """The training probe ``(P, N, N)``; None when unknown (a served model does not publish it)."""
    bad_pixels: npt.NDArray[np.bool_] | None = field(default=None, compare=False, repr=False)
    """The detector's bad-pixel mask ``(N, N)`` (True = bad) masked in every scan, or None."""

    @property
    def channels(self) -> int:
        """``C = gridsize**2``: patterns per group."""
        return self.gridsize * self.gridsize

    def to_parameters(self) -> dict[str, Any]:
        """The facts a server publishes in its OIP model metadata ``parameters`` (JSON values; the
        probe is not published, the bad pixels as a ``[row, col]`` list)."""
        return {"N": self.N, "gridsize": self.gridsize, "stitch_M": self.stitch_M,
                "neighbor_count": self.neighbor_count, "training_scale": self.training_scale,
                "pixel_size_m": self.pixel_size_m, "default_scale_policy": str(self.default_scale_policy),
                "bad_pixels": [] if self.bad_pixels is None else np.argwhere(self.bad_pixels).tolist()}

    @classmethod
    def from_parameters(cls, name: str, parameters: Mapping[str, Any], *, version: str | None = None) -> ModelFacts:
        """The facts :meth:`to_parameters` published (``GET /v2/models/{name}``'s ``parameters``). A server
        older than ``neighbor_count`` gets :func:`~ptycho_torch.grouping.default_neighbor_count`, one older
        than ``default_scale_policy`` the ``scan`` policy."""
        N, gridsize = int(parameters["N"]), int(parameters["gridsize"])
        bad_pixels = None
        if parameters.get("bad_pixels"):
            bad_pixels = np.zeros((N, N), bool)
            bad_pixels[tuple(np.asarray(parameters["bad_pixels"], dtype=np.intp).T)] = True
        return cls(name=name, version=version, N=N, gridsize=gridsize, stitch_M=int(parameters["stitch_M"]),
                   training_scale=float(parameters["training_scale"]), pixel_size_m=parameters.get("pixel_size_m"),
                   neighbor_count=int(parameters.get("neighbor_count") or default_neighbor_count(gridsize**2)),
                   default_scale_policy=ScalePolicy(parameters.get("default_scale_policy", ScalePolicy.SCAN)),
                   bad_pixels=bad_pixels)
