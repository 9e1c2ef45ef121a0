"""Generator -> ONNX: the dynamo exporter, one file, a dynamic batch axis, named tensors."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch

from export.options import DEFAULT_OPSET, MIN_OPSET
from ptycho_torch.bundle import INPUT_NAMES, OUTPUT_NAMES
from ptycho_torch.errors import ExportError
from ptycho_torch.model import ObjectGenerator

MAX_BATCH = 1 << 16
#: Loggers of the exporter's passes: about 45 INFO/WARNING lines per export (unused-node removal,
#: constant folding, "torchvision is not installed"), none of which needs the user's attention.
EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


def example_inputs(generator: ObjectGenerator, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic ``(diffraction (batch, C, N, N), scale (batch,))`` for tracing/exporting."""
    config = generator.config
    shape = (batch, config.channels, config.N, config.N)
    return torch.linspace(0.0, 2.0, steps=int(torch.Size(shape).numel())).reshape(shape), torch.ones(batch)


def export_onnx(generator: ObjectGenerator, path: Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``generator`` to ``path`` as a single-file ONNX graph with a dynamic batch axis ``B``.

    Uses ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript); the example batch is 2
    because torch.export specialises a size-1 dimension.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"`opset` must be >= {MIN_OPSET} (DFT-free graph, dynamo exporter), got {opset}; "
                          f"use the default {DEFAULT_OPSET}")
    batch = torch.export.Dim("B", min=1, max=MAX_BATCH)
    generator = generator.eval()
    quiet = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(quiet), _quiet_loggers(EXPORTER_LOGGERS), \
                warnings.catch_warnings():
            # known, harmless exporter chatter in torch 2.13 (one shared Dim named for two inputs)
            warnings.filterwarnings("ignore", message=".*The axis name: B will not be used")
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)", category=FutureWarning)
            torch.onnx.export(
                generator, example_inputs(generator), str(path), dynamo=True, opset_version=opset,
                input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                dynamic_shapes={name: {0: batch} for name in INPUT_NAMES}, external_data=False,
            )
    except Exception as error:  # the exporter raises many private error types
        raise ExportError(f"torch.onnx.export(dynamo=True, opset={opset}) failed: {error}\n{quiet.getvalue()}") from error
    onnx.checker.check_model(str(path))
    return path


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...], level: int = logging.ERROR) -> Iterator[None]:
    """Raise the threshold of the ``names`` loggers to ``level`` for the block, then restore it."""
    loggers = [logging.getLogger(name) for name in names]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, previous, strict=True):
            logger.setLevel(old)


def convert_fp16(source: Path, target: Path) -> Path:
    """Write a float16 copy of an ONNX graph that keeps float32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(target))
    return target
