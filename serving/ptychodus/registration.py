"""Adding ``PtychoPINN-Serve`` to Ptychodus 1.7, which has no plugin hook for reconstructors.

``ModelCore.__init__`` hard-codes its reconstructor libraries and hands them to
``ptychodus.model.core.ProcessingCore``, a name it looks up when it runs. :func:`install` swaps that
name for a subclass that appends our library, so every ``ModelCore`` built afterwards offers it.
Three ways call :func:`install`: directly (scripts, tests), the ``ptychopinn-ptychodus`` launcher
(:func:`main`), and the plugin module ``ptychodus/plugins/ptychopinn_serve.py``, which Ptychodus'
``PluginRegistry.load_plugins`` imports at the start of every ``ModelCore.__init__``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["install", "main"]

_MARK = "_ptychopinn_serve_installed"


def install() -> bool:
    """Make every later ``ModelCore`` include ``PtychoPINN-Serve``; returns False if it already did."""
    import ptychodus.model.core as core

    base = core.ProcessingCore
    if getattr(base, _MARK, False):
        return False

    from serving.ptychodus.library import PtychoPINNServeLibrary

    class ProcessingCore(base):  # type: ignore[misc, valid-type]
        __doc__ = base.__doc__

        def __init__(self, task_manager, settings_registry, product_api, algorithm_libraries):  # type: ignore[no-untyped-def]
            libraries = [*algorithm_libraries, PtychoPINNServeLibrary(settings_registry)]
            super().__init__(task_manager, settings_registry, product_api, libraries)

    setattr(ProcessingCore, _MARK, True)
    core.ProcessingCore = ProcessingCore
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``ptychopinn-ptychodus``: Ptychodus (GUI, or ``-b`` batch mode) with ``PtychoPINN-Serve`` installed."""
    import ptychodus.__main__ as ptychodus_main

    install()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    return int(ptychodus_main.main())
