"""Adding ``PtychoPINN-Serve`` to Ptychodus 1.7, which has no plugin hook for reconstructors.

``ModelCore.__init__`` hard-codes its reconstructor libraries and hands them to
``ptychodus.model.core.ProcessingCore``, a name it looks up when it runs. :func:`install` swaps that
name for a subclass that

- appends our library,
- drops Ptychodus' built-in ``PtychoPINN-Torch`` when the ``ptycho_torch`` it would run is this
  project's (same module name as upstream PtychoPINN's, different API: it could only fail), and
- selects ``PtychoPINN-Serve`` > ``ONNX`` when the configured default (``pty-chi_LSQML``) is not
  installed, so the GUI opens on a reconstructor that works and never on the built-in one.

For the GUI it also arranges (:mod:`serving.ptychodus.gui`, imported only once Ptychodus imports its
Qt controllers) that the library gets its own editable parameter panel.

Three ways call :func:`install`: directly (scripts, tests), the ``ptychopinn-ptychodus`` launcher
(:func:`main`), and the plugin module ``ptychodus/plugins/ptychopinn_serve.py`` (:mod:`.hook`), which
Ptychodus' ``PluginRegistry.load_plugins`` imports at the start of every ``ModelCore.__init__``.
"""

from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ptychodus.api.reconstruct import ReconstructorLibrary
    from ptychodus.api.settings import SettingsRegistry
    from ptychodus.model.product.api import ProductAPI
    from ptychodus.model.task_manager import TaskManager

    from serving.ptychodus.library import PtychoPINNServeLibrary

__all__ = ["install", "library_for", "main"]

log = logging.getLogger(__name__)

_MARK = "_ptychopinn_serve_installed"
BUILTIN_TORCH_LIBRARY = "PtychoPINN-Torch"
DEFAULT_ALGORITHM = "ptychopinn-serve_onnx"

_LIBRARIES: weakref.WeakKeyDictionary[object, PtychoPINNServeLibrary] = weakref.WeakKeyDictionary()
"""Our library per Ptychodus ``ProcessingAPI``, for the GUI panel (which only sees that API)."""


def library_for(processing_api: object) -> PtychoPINNServeLibrary | None:
    """The ``PtychoPINN-Serve`` library of the ``ModelCore`` that owns ``processing_api``, if installed."""
    return _LIBRARIES.get(processing_api)


def upstream_ptycho_torch() -> bool:
    """True if the importable ``ptycho_torch`` is upstream PtychoPINN's (it has ``api/base_api.py``),
    the one Ptychodus' built-in ``PtychoPINN-Torch`` library drives; found without importing it."""
    spec = find_spec("ptycho_torch")
    if spec is None or spec.origin is None:
        return False
    return (Path(spec.origin).parent / "api" / "base_api.py").is_file()


def install() -> bool:
    """Make every later ``ModelCore`` include ``PtychoPINN-Serve``; returns False if it already did."""
    import ptychodus.model.core as core

    base = core.ProcessingCore
    if getattr(base, _MARK, False):
        return False

    from serving.ptychodus.library import PtychoPINNServeLibrary

    class ProcessingCore(base):  # type: ignore[misc, valid-type]
        __doc__ = base.__doc__

        def __init__(self, task_manager: TaskManager, settings_registry: SettingsRegistry, product_api: ProductAPI,
                     algorithm_libraries: Sequence[ReconstructorLibrary]) -> None:
            ours = PtychoPINNServeLibrary(settings_registry)
            keep_builtin = upstream_ptycho_torch()
            libraries = [lib for lib in algorithm_libraries if keep_builtin or lib.name != BUILTIN_TORCH_LIBRARY]
            super().__init__(task_manager, settings_registry, product_api, [*libraries, ours])
            _LIBRARIES[self.processing_api] = ours
            if self.algorithm_parameter.get_value() == "none_none":  # the configured default is not installed
                self.algorithm_parameter.set_value(DEFAULT_ALGORITHM)

    setattr(ProcessingCore, _MARK, True)
    core.ProcessingCore = ProcessingCore  # type: ignore[misc]  # the monkeypatch: ModelCore builds ours
    from serving.ptychodus.gui import install_panel

    install_panel()
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``ptychopinn-ptychodus``: Ptychodus (GUI, or ``-b`` batch mode) with ``PtychoPINN-Serve`` installed."""
    import ptychodus.__main__ as ptychodus_main

    install()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    return int(ptychodus_main.main())
