"""Generator -> TorchScript (``model.ts``): traced and frozen.

TorchScript is deprecated upstream (PyTorch's documentation) but still what Triton's PyTorch
backend and older hosts load, so the bundle keeps it as a compatibility artefact.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from export.onnx import example_inputs
from ptycho_torch.model import ObjectGenerator


def export_torchscript(generator: ObjectGenerator, path: Path) -> Path:
    """Trace ``generator`` (a fixed, loop-free graph, so tracing is exact), freeze it, save to ``path``."""
    generator = generator.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit.*
        scripted = torch.jit.freeze(torch.jit.trace(generator, example_inputs(generator)))
        torch.jit.save(scripted, str(path))
    return path
