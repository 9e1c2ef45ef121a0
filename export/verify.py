"""Parity of the exported graphs with torch eager, on real inputs, measured at export time.

Every engine runs the same ``(diffraction, scale)`` samples; the max absolute difference from torch
eager on amplitude and on phase is recorded in the manifest, and export fails with the numbers if
any exceeds its tolerance. Also checked: a sample run alone (batch 1) gives the same result as
inside a large batch, in torch eager and in onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from export.options import FP16_TOLERANCE, FP32_TOLERANCE
from ptycho_torch.bundle import INPUT_NAMES, EngineDeviation, Verification
from ptycho_torch.data import load_scan
from ptycho_torch.errors import DataContractError, ExportError
from ptycho_torch.normalization import input_scale

if TYPE_CHECKING:
    import onnxruntime as ort

BATCH_1_SAMPLES = 4

Outputs = tuple[np.ndarray, np.ndarray]
Run = Callable[[np.ndarray, np.ndarray], Sequence[Any]]
"""One engine call: ``(diffraction, scale)`` -> ``(amplitude, phase)`` (tensors or arrays)."""


def verification_inputs(scan: Path, N: int, gridsize: int, n_groups: int = 64, seed: int = 0) -> np.ndarray:
    """Real verification inputs ``(B, C, N, N)`` float32: groups of a scan file's own patterns.

    A tike-layout scan with a larger detector is centrally cropped to ``N`` (see ``load_scan``).
    """
    try:
        raw = load_scan(scan, n=N)  # tike layout: crop the detector to the model's N
    except DataContractError as error:
        raise ExportError(f"verification scan {scan} must have N={N} like the model ({error}); "
                          "pass --data with a scan at the model's N") from error
    grouped = raw.generate_grouped_data(N, n_groups=min(n_groups, len(raw)),
                                        gridsize=gridsize, seed=seed)
    return np.ascontiguousarray(grouped.channels_first, dtype=np.float32)


def torch_runner(module: torch.nn.Module) -> Run:
    """A :data:`Run` calling a torch module (eager or TorchScript) without autograd."""
    def run(x: np.ndarray, s: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return module(torch.from_numpy(x), torch.from_numpy(s))
    return run


def ort_runner(session: ort.InferenceSession) -> Run:
    """A :data:`Run` calling an onnxruntime session."""
    return lambda x, s: session.run(None, dict(zip(INPUT_NAMES, (x, s), strict=True)))


def _run_batched(run: Run, diffraction: np.ndarray, scale: np.ndarray, batch: int) -> Outputs:
    parts = [run(diffraction[i:i + batch], scale[i:i + batch]) for i in range(0, len(diffraction), batch)]
    return (np.concatenate([np.asarray(p[0]) for p in parts]), np.concatenate([np.asarray(p[1]) for p in parts]))


def _deviation(got: Outputs, want: Outputs) -> EngineDeviation:
    return EngineDeviation(amplitude=float(np.abs(got[0] - want[0]).max()), phase=float(np.abs(got[1] - want[1]).max()))


def verify_exports(generator: torch.nn.Module, diffraction: np.ndarray, *, onnx_path: Path, torchscript_path: Path,
                   inputs_label: str, fp16_path: Path | None = None, tolerance: float = FP32_TOLERANCE,
                   fp16_tolerance: float = FP16_TOLERANCE, batch: int = 64) -> Verification:
    """Run eager, onnxruntime (CPU provider), TorchScript (and the fp16 graph) on ``diffraction``.

    ``diffraction`` is ``(B, C, N, N)`` raw amplitudes; ``scale`` is the scan policy's value.
    Raises :class:`ExportError` listing every measured error if one exceeds its tolerance.
    """
    import onnxruntime as ort

    diffraction = np.ascontiguousarray(diffraction, dtype=np.float32)
    scale = np.full(len(diffraction), input_scale(diffraction), dtype=np.float32)
    generator = generator.eval()

    def session(path: Path) -> ort.InferenceSession:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    eager_run, onnx_run = torch_runner(generator), ort_runner(session(onnx_path))
    eager = _run_batched(eager_run, diffraction, scale, batch)
    onnx_out = _run_batched(onnx_run, diffraction, scale, batch)
    one = slice(0, BATCH_1_SAMPLES)
    errors = {
        "onnxruntime_cpu": _deviation(onnx_out, eager),
        "torchscript": _deviation(_run_batched(torch_runner(torch.jit.load(str(torchscript_path))), diffraction, scale,
                                           batch), eager),
        "batch_1_vs_n_eager": _deviation(_run_batched(eager_run, diffraction[one], scale[one], 1),
                                     (eager[0][one], eager[1][one])),
        "batch_1_vs_n_onnxruntime": _deviation(_run_batched(onnx_run, diffraction[one], scale[one], 1),
                                           (onnx_out[0][one], onnx_out[1][one])),
    }
    limits = dict.fromkeys(errors, tolerance)
    if fp16_path is not None:
        fp16_out = _run_batched(ort_runner(session(fp16_path)), diffraction, scale, batch)
        errors["onnxruntime_cpu_fp16"] = _deviation(fp16_out, eager)
        limits["onnxruntime_cpu_fp16"] = fp16_tolerance
    failed = {k: e for k, e in errors.items() if max(e.amplitude, e.phase) > limits[k]}
    if failed:
        report = "; ".join(f"{k}: max|d amplitude| {e.amplitude:.3g}, max|d phase| {e.phase:.3g} "
                           f"(tolerance {limits[k]:g})" for k, e in failed.items())
        raise ExportError(f"exported graphs must match torch eager on {inputs_label}, got {report}; the graph "
                          "did not export faithfully, try another --opset or report the torch/onnx versions")
    return Verification(inputs=inputs_label, n_samples=len(diffraction), tolerance=tolerance, errors=errors,
                        fp16_tolerance=fp16_tolerance if fp16_path is not None else None)
