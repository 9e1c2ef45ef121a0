"""The ``PtychoPINN-Serve`` reconstructor library (the name has no ``_``: Ptychodus splits
``library_reconstructor`` keys on the first underscore)."""

from __future__ import annotations

from collections.abc import Iterator

from ptychodus.api.reconstruct import Reconstructor, ReconstructorLibrary
from ptychodus.api.settings import SettingsRegistry

from serving.ptychodus.http_reconstructor import HttpReconstructor
from serving.ptychodus.onnx_reconstructor import OnnxReconstructor
from serving.ptychodus.settings import PtychoPINNServeSettings

__all__ = ["LIBRARY_NAME", "PtychoPINNServeLibrary"]

LIBRARY_NAME = "PtychoPINN-Serve"


class PtychoPINNServeLibrary(ReconstructorLibrary):
    """``ONNX`` (in-process bundle) and ``HTTP`` (a ``ptychopinn serve`` server); one settings group."""

    def __init__(self, settings_registry: SettingsRegistry) -> None:
        super().__init__("serving.ptychodus")
        self.settings = PtychoPINNServeSettings(settings_registry)
        self.onnx = OnnxReconstructor(self.settings)
        self.http = HttpReconstructor(self.settings)

    @property
    def name(self) -> str:
        return LIBRARY_NAME

    def __iter__(self) -> Iterator[Reconstructor]:
        return iter((self.onnx, self.http))
