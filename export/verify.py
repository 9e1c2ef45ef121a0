"""Parity of the exported graphs with torch eager, on real inputs, measured at export time.

Every engine runs the same ``(diffraction, scale)`` samples; the max absolute difference from torch
eager on amplitude and on phase is recorded in the manifest, and export fails with the numbers if
any exceeds its tolerance. Also checked: a sample run alone (batch 1) gives the same result as
inside a large batch, in torch eager and in onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ptycho_torch.data import load_scan
from ptycho_torch.errors import DataContractError, ExportError
from ptycho_torch.normalization import input_scale
from serving.bundle import EngineError, Verification

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
BATCH_1_SAMPLES = 4

Outputs = tuple[np.ndarray, np.ndarray]


def verification_inputs(scan: Path, N: int, gridsize: int, n_groups: int = 64, seed: int = 0) -> np.ndarray:  # noqa: N803
    """Real verification inputs ``(B, C, N, N)`` float32: groups of a scan file's own patterns.

    A tike-layout scan with a larger detector is centrally cropped to ``N`` (see ``load_scan``).
    """
    try:
        raw = load_scan(scan, n=N)  # tike layout: crop the detector to the model's N
    except DataContractError:
        raw = load_scan(scan)  # contract NPZ: stored at its own N
    if raw.N != N:
        raise ExportError(f"verification scan {scan} must have N={N} like the model, got N={raw.N}; "
                          "pass --data with a scan at the model's N")
    grouped = raw.generate_grouped_data(N, K=max(4, gridsize**2), n_groups=min(n_groups, len(raw)),
                                        gridsize=gridsize, seed=seed)
    return np.ascontiguousarray(np.moveaxis(grouped["diffraction"], -1, 1), dtype=np.float32)


def _run_torch(module: torch.nn.Module, diffraction: np.ndarray, scale: np.ndarray, batch: int) -> Outputs:
    with torch.no_grad():
        parts = [module(torch.from_numpy(diffraction[i:i + batch]), torch.from_numpy(scale[i:i + batch]))
                 for i in range(0, len(diffraction), batch)]
    return (torch.cat([p[0] for p in parts]).numpy(), torch.cat([p[1] for p in parts]).numpy())


def _run_onnx(session, diffraction: np.ndarray, scale: np.ndarray, batch: int) -> Outputs:  # noqa: ANN001
    parts = [session.run(None, {"diffraction": diffraction[i:i + batch], "scale": scale[i:i + batch]})
             for i in range(0, len(diffraction), batch)]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _error(got: Outputs, want: Outputs) -> EngineError:
    return EngineError(amplitude=float(np.abs(got[0] - want[0]).max()), phase=float(np.abs(got[1] - want[1]).max()))


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
    eager = _run_torch(generator, diffraction, scale, batch)

    def session(path: Path):  # noqa: ANN202
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    onnx_session = session(onnx_path)
    onnx_out = _run_onnx(onnx_session, diffraction, scale, batch)
    one = slice(0, BATCH_1_SAMPLES)
    errors = {
        "onnxruntime_cpu": _error(onnx_out, eager),
        "torchscript": _error(_run_torch(torch.jit.load(str(torchscript_path)), diffraction, scale, batch), eager),
        "batch_1_vs_n_eager": _error(_run_torch(generator, diffraction[one], scale[one], 1),
                                     (eager[0][one], eager[1][one])),
        "batch_1_vs_n_onnxruntime": _error(_run_onnx(onnx_session, diffraction[one], scale[one], 1),
                                           (onnx_out[0][one], onnx_out[1][one])),
    }
    limits = dict.fromkeys(errors, tolerance)
    if fp16_path is not None:
        errors["onnxruntime_cpu_fp16"] = _error(_run_onnx(session(fp16_path), diffraction, scale, batch), eager)
        limits["onnxruntime_cpu_fp16"] = fp16_tolerance
    failed = {k: e for k, e in errors.items() if max(e.amplitude, e.phase) > limits[k]}
    if failed:
        report = "; ".join(f"{k}: max|d amplitude| {e.amplitude:.3g}, max|d phase| {e.phase:.3g} "
                           f"(tolerance {limits[k]:g})" for k, e in failed.items())
        raise ExportError(f"exported graphs must match torch eager on {inputs_label}, got {report}; the graph "
                          "did not export faithfully, try another --opset or report the torch/onnx versions")
    return Verification(inputs=inputs_label, n_samples=len(diffraction), tolerance=tolerance, errors=errors,
                        fp16_tolerance=fp16_tolerance if fp16_path is not None else None)
