"""Give ``PtychoPINN-Serve`` its own parameter panel in the Ptychodus GUI, without importing Qt early.

Ptychodus builds the Reconstructor tab's per-library panels from a list of view-controller factories
hard-coded in ``ptychodus.controller.core.ControllerCore``; a library without one gets the label
"<library> not found!", and the generic Settings table of Ptychodus 1.7 is read-only. The GUI imports
``ptychodus.controller.core`` only after the ``ModelCore`` (and so :func:`install`) exists, and batch
mode never imports it (about 10 s of Qt imports). :func:`install_panel` therefore waits for that
import (a meta-path finder that patches the module right after it has run) and then wraps its
``ProcessingController`` name so that our factory (:mod:`serving.ptychodus.panel`) joins the list.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = ["CONTROLLER_MODULE", "install_panel"]

CONTROLLER_MODULE = "ptychodus.controller.core"
_MARK = "_ptychopinn_serve_panel"


class _AfterImport(importlib.abc.MetaPathFinder):
    """Call ``patch(module)`` right after module ``name`` has been executed by its normal loader."""

    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.patch = patch

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            self.patch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  # this spec's own loader
        return spec


def _add_panel(controller_core: ModuleType) -> None:
    """Wrap ``controller_core.ProcessingController`` so it also builds the ``PtychoPINN-Serve`` panel."""
    base = controller_core.ProcessingController
    if getattr(base, _MARK, False):
        return
    from serving.ptychodus.panel import PtychoPINNServeViewControllerFactory
    from serving.ptychodus.registration import library_for

    class ProcessingController(base):  # type: ignore[misc, valid-type]
        __doc__ = base.__doc__

        def __init__(self, algorithm_parameter: Any, processing_api: Any, product_repository: Any,
                     product_table_model: Any, globus: Any, genesis: Any, view: Any, status_view: Any,
                     file_dialog_factory: Any, view_controller_factories: Any) -> None:
            factories = list(view_controller_factories)
            self._serve_library = library_for(processing_api)
            if self._serve_library is not None:
                factories.append(PtychoPINNServeViewControllerFactory(self._serve_library, file_dialog_factory))
            super().__init__(algorithm_parameter, processing_api, product_repository, product_table_model, globus,
                             genesis, view, status_view, file_dialog_factory, factories)
            if self._serve_library is not None:  # Infer is enabled once a bundle is set, by Load Model or the panel
                self._serve_library.settings.bundle_path.add_observer(self)

        def _update(self, observable: Any) -> None:
            if self._serve_library is not None and observable is self._serve_library.settings.bundle_path:
                self._sync_model_to_view()
            else:
                super()._update(observable)

    setattr(ProcessingController, _MARK, True)
    controller_core.ProcessingController = ProcessingController  # type: ignore[attr-defined]  # the monkeypatch


def install_panel() -> None:
    """Add the panel now if Ptychodus' controllers are imported, else right after they are (idempotent)."""
    module = sys.modules.get(CONTROLLER_MODULE)
    if module is not None:
        _add_panel(module)
    elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(CONTROLLER_MODULE, _add_panel))
