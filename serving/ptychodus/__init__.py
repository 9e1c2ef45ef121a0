"""Ptychodus integration (the only package that imports ``ptychodus``; install the ``ptychodus`` extra).

``PtychoPINN-Serve`` library: ``ONNX`` (in-process bundle) and ``HTTP`` (remote ``ptychopinn serve``),
one adapter for both (:mod:`.adapter`), settings group ``[PtychoPINNServe]`` (:mod:`.settings`).
Registration: :func:`install`, the ``ptychopinn-ptychodus`` launcher (:func:`main`), and the
plugin module ``ptychodus/plugins/ptychopinn_serve.py``.
"""

from serving.ptychodus.registration import install, main

__all__ = ["install", "main"]
