"""Training speed and reconstruction quality on a simulated scan with a held-out region.

One object is simulated and scanned; the scan is split spatially (rows): the top part trains the
model (5% of its groups validate), the bottom part is never seen in training. The best checkpoint
reconstructs the held-out patterns, ``ptycho_torch.stitching`` stitches them, and
``ptycho_torch.metrics.evaluate_reconstruction`` scores amplitude and phase (SSIM, PSNR, FRC50)
against the ground-truth object over the covered region, next to a constant-object baseline
(amplitude 1, phase 0: what a model that learned nothing would give after normalisation).
Run with ``python -m bench train [--quick]`` (the accelerator is chosen automatically: a GPU when
there is one).
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.quality import covered_box
from bench.report import cell
from ptycho_torch.checkpoint import load_generator
from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.data import RawData, spatial_split
from ptycho_torch.metrics import evaluate_reconstruction
from ptycho_torch.normalization import input_scale
from ptycho_torch.simulation import simulate
from ptycho_torch.stitching import complex_patches, default_stitch_M, stitch_patches
from ptycho_torch.torch_runner import TorchRunner
from training.trainer import train

SIZES = {
    "smoke": {"n": 32, "positions": 64, "epochs": 1, "batch_size": 16, "n_filters_scale": 1},
    "quick": {"n": 32, "positions": 256, "epochs": 4, "batch_size": 16, "n_filters_scale": 1},
    "full": {"n": 32, "positions": 512, "epochs": 30, "batch_size": 16, "n_filters_scale": 1},
}
NPHOTONS = 1e6
SEED = 0


def predict_patches(generator: torch.nn.Module, scan: RawData, batch: int = 64) -> np.ndarray:
    """Complex patches ``(S, N, N)`` of ``scan`` from ``generator`` (the scan's own input scale)."""
    scale = input_scale(scan.diff3d)
    runner = TorchRunner(generator, training_scale=scale, batch_size=batch)
    return complex_patches(*runner.infer(scan.diff3d[:, None], np.full(len(scan), scale, np.float32)))[:, 0]


def reconstruct(ckpt: Path, scan: RawData, batch: int = 64) -> np.ndarray:
    """Complex patches ``(S, N, N)`` of ``scan`` from a checkpoint (the scan's own input scale)."""
    return predict_patches(load_generator(ckpt)[0], scan, batch)


def stitched_region(patches: np.ndarray, scan: RawData, truth: np.ndarray, M: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stitch ``patches``; return (image, reference, coverage) on the fully covered bounding box."""
    result = stitch_patches(patches, scan.positions, M=M)
    canvas_box, object_box = covered_box(result.coverage, result.origin, truth.shape)
    return result.canvas[canvas_box], truth[object_box], result.coverage[canvas_box]


def score(patches: np.ndarray, scan: RawData, truth: np.ndarray, M: int) -> dict[str, dict[str, float]]:
    """Stitch ``patches`` and score model and constant baseline on the fully covered bounding box."""
    image, reference, coverage = stitched_region(patches, scan, truth, M)
    candidates = {"model": image, "constant": np.ones_like(reference)}
    scores = {}
    for name, candidate in candidates.items():
        scores[name] = evaluate_reconstruction(candidate, reference, register_first=False).scores()
    height, width = reference.shape
    scores["region_px"] = {"height": height, "width": width, "uncovered_fraction": float(np.mean(coverage < 1.0))}
    return scores


def run(mode: str) -> dict[str, Any]:
    """Train on the top 75% of a simulated raster scan and score the held-out 25% (sizes of ``mode``)."""
    size = SIZES[mode]
    scan = simulate(object_kind="lines", N=size["n"], n_positions=size["positions"], nphotons=NPHOTONS,
                    scan="raster", seed=SEED)
    train_scan, held_out = spatial_split(scan, axis="y", fraction=0.75)
    with tempfile.TemporaryDirectory() as tmp:
        training = TrainingConfig(
            model=ModelConfig(N=size["n"], n_filters_scale=size["n_filters_scale"]), batch_size=size["batch_size"],
            nepochs=size["epochs"], nphotons=NPHOTONS, output_dir=tmp,
        )
        execution = PyTorchExecutionConfig(accelerator="auto", enable_progress_bar=False, seed=SEED)
        start = time.perf_counter()
        result = train(training, execution, train_data=train_scan)
        wall = time.perf_counter() - start
        patches = reconstruct(result.best_checkpoint or result.last_checkpoint, held_out)
    return {
        "setup": {"object": "lines", "scan": "raster", "N": size["n"], "nphotons": NPHOTONS,
                  "positions": size["positions"], "train_positions": len(train_scan),
                  "held_out_positions": len(held_out), "epochs": size["epochs"], "batch_size": size["batch_size"],
                  "n_filters_scale": size["n_filters_scale"], "accelerator": result.summary.accelerator,
                  "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()},
        "training": {"wall_s_total": round(wall, 1), "wall_s_fit": result.summary.wall_s,
                     "samples_per_s": result.summary.samples_per_s, "steps": result.summary.global_step,
                     "best_val_loss": result.summary.best_val_loss},
        "quality": score(patches, held_out, scan.objectGuess, default_stitch_M(size["n"])),
    }


def table(report: dict[str, Any]) -> str:
    """Markdown table of :func:`run`'s result: model vs constant object, and the training speed."""
    quality = report["quality"]
    lines = ["| reconstruction | SSIM amp | SSIM phase | PSNR amp (dB) | PSNR phase (dB) | FRC50 amp | FRC50 phase |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    steps = report["training"]["steps"]
    for name, label in (("model", f"model ({steps} steps)"), ("constant", "constant object")):
        q = quality[name]
        lines.append(f"| {label} | " + " | ".join(cell(q[f"{key}_{part}"], spec) for key, spec in
                                                  (("ssim", ".3f"), ("psnr", ".2f"), ("frc50", ".1f"))
                                                  for part in ("amplitude", "phase")) + " |")
    setup, training = report["setup"], report["training"]
    return "\n".join(lines) + (
        f"\n\nN={setup['N']}, n_filters_scale={setup['n_filters_scale']}, {setup['positions']} positions "
        f"({setup['train_positions']} train, {setup['held_out_positions']} held out), {setup['epochs']} epochs of "
        f"batch {setup['batch_size']} on {setup['accelerator']} ({setup['threads']} threads): fit "
        f"{training['wall_s_fit']:.0f} s, **{training['samples_per_s']:.1f} samples/s**."
    )
