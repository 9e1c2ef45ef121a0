"""Ptychodus plugin hook of ptychopinn-serve: adds the ``PtychoPINN-Serve`` reconstructors.

A wheel install places this file next to Ptychodus' own plugins (``ptychodus.plugins`` is a namespace
package); for an editable install ``python -m serving.ptychodus.hook install`` copies it there (``make``
does). ``PluginRegistry.load_plugins`` imports it and calls :func:`register_plugins` at the start of
every ``ModelCore``, before the reconstructor libraries are built, so the stock ``ptychodus`` and
``ptychodus -b`` commands offer ``PtychoPINN-Serve``.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def register_plugins(registry: object) -> None:
    """Install ``PtychoPINN-Serve``; a failure is logged, never allowed to stop Ptychodus starting."""
    try:
        from serving.ptychodus import install

        install()
    except Exception:  # Ptychodus must start even if our package is broken
        logger.exception("ptychopinn-serve: could not add the PtychoPINN-Serve reconstructors to Ptychodus")
