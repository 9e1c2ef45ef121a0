"""Training speed and reconstruction quality on a simulated scan with a held-out region.

One object is simulated and scanned; the scan is split spatially (rows): the top part trains the
model (5% of its groups validate), the bottom part is never seen in training. The best checkpoint
reconstructs the held-out patterns, ``ptycho_torch.stitching`` stitches them, and
``ptycho_torch.metrics.evaluate_reconstruction`` scores amplitude and phase (SSIM, PSNR, FRC50)
against the ground-truth object over the covered region, next to a constant-object baseline
(amplitude 1, phase 0: what a model that learned nothing would give after normalisation).

    .venv/bin/python -m bench.train_quality --quick           # CPU smoke run (N=32, minutes)
    .venv/bin/python -m bench.train_quality --accelerator gpu  # N=64, 2000 positions, 30 epochs
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.data import RawData, spatial_split
from ptycho_torch.metrics import evaluate_reconstruction
from ptycho_torch.model import combine_complex
from ptycho_torch.normalization import input_scale
from ptycho_torch.simulation import simulate
from ptycho_torch.stitching import DEFAULT_M, stitch_patches
from training.module import PtychoPINNModule
from training.trainer import train

QUICK = {"n": 32, "positions": 256, "epochs": 8, "batch_size": 16, "n_filters_scale": 1}
FULL = {"n": 64, "positions": 2000, "epochs": 30, "batch_size": 16, "n_filters_scale": 2}


def reconstruct(ckpt: Path, scan: RawData, batch: int = 64) -> np.ndarray:
    """Complex patches ``(S, N, N)`` of ``scan`` from a checkpoint (the scan's own input scale)."""
    generator, _, _ = PtychoPINNModule.load_generator(ckpt)
    x = torch.from_numpy(scan.diff3d)[:, None]
    scale = torch.full((x.shape[0],), input_scale(scan.diff3d), dtype=torch.float32)
    with torch.no_grad():
        parts = [combine_complex(*generator(x[i:i + batch], scale[i:i + batch])) for i in range(0, len(x), batch)]
    return torch.cat(parts)[:, 0].numpy()


def score(patches: np.ndarray, scan: RawData, truth: np.ndarray, M: int) -> dict[str, dict[str, float]]:
    """Stitch ``patches`` and score model and constant baseline on the fully covered bounding box."""
    result = stitch_patches(patches, np.column_stack([scan.xcoords, scan.ycoords]), M=M)
    rows, cols = np.nonzero(result.coverage >= 1.0)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    x0, y0 = (int(round(v)) for v in result.origin)
    reference = truth[r0 - y0:r1 - y0, c0 - x0:c1 - x0]
    candidates = {"model": result.canvas[r0:r1, c0:c1], "constant": np.ones_like(reference)}
    scores = {}
    for name, image in candidates.items():
        metrics = evaluate_reconstruction(image, reference, register_first=False)
        scores[name] = {f"{key}_{part}": float(metrics[key][i]) for key in ("ssim", "psnr", "frc50")
                        for i, part in enumerate(("amplitude", "phase"))}
    scores["region_px"] = {"height": int(r1 - r0), "width": int(c1 - c0),
                           "uncovered_fraction": float(np.mean(result.coverage[r0:r1, c0:c1] < 1.0))}
    return scores


def run(args: argparse.Namespace) -> dict[str, Any]:
    scan = simulate(object_kind=args.object, N=args.n, n_positions=args.positions, nphotons=args.nphotons,
                    scan=args.scan, seed=args.seed)
    train_scan, held_out = spatial_split(scan, axis="y", fraction=0.75)
    training = TrainingConfig(
        model=ModelConfig(N=args.n, n_filters_scale=args.n_filters_scale), batch_size=args.batch_size,
        nepochs=args.epochs, nphotons=args.nphotons, output_dir=args.output_dir,
    )
    execution = PyTorchExecutionConfig(accelerator=args.accelerator, devices=args.devices,
                                       precision=args.precision, enable_progress_bar=False, seed=args.seed)
    start = time.perf_counter()
    result = train(training, execution, train_data=train_scan)
    wall = time.perf_counter() - start
    patches = reconstruct(result.best_checkpoint, held_out)
    return {
        "setup": {"object": args.object, "scan": args.scan, "N": args.n, "nphotons": args.nphotons, "positions": args.positions,
                  "train_positions": len(train_scan), "held_out_positions": len(held_out), "epochs": args.epochs,
                  "batch_size": args.batch_size, "n_filters_scale": args.n_filters_scale,
                  "accelerator": result.summary["accelerator"], "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()},
        "training": {"wall_s_total": round(wall, 1), "wall_s_fit": result.summary["wall_s"],
                     "samples_per_s": result.summary["samples_per_s"], "steps": result.summary["global_step"],
                     "best_val_loss": result.summary["best_val_loss"]},
        "quality": score(patches, held_out, scan.objectGuess, min(DEFAULT_M, args.n // 2)),
    }


def _table(report: dict[str, Any]) -> str:
    quality = report["quality"]
    lines = ["| reconstruction | SSIM amp | SSIM phase | PSNR amp (dB) | PSNR phase (dB) | FRC50 amp | FRC50 phase |",
             "|---|---|---|---|---|---|---|"]
    for name in ("model", "constant"):
        q = quality[name]
        lines.append(f"| {name} | {q['ssim_amplitude']:.3f} | {q['ssim_phase']:.3f} | {q['psnr_amplitude']:.2f} | "
                     f"{q['psnr_phase']:.2f} | {q['frc50_amplitude']:.1f} | {q['frc50_phase']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"small CPU run: {QUICK}")
    parser.add_argument("--object", choices=["lines", "grf"], default="lines")
    parser.add_argument("--n", type=int)
    parser.add_argument("--positions", type=int, help="scan positions (75%% train, 25%% held out)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--n-filters-scale", type=int)
    parser.add_argument("--nphotons", type=float, default=1e6)
    parser.add_argument("--scan", choices=["raster", "random"], default="raster",
                        help="raster (default) covers the held-out region without holes")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default=1, type=lambda v: int(v) if v.isdigit() else v)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, help="run directory (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        args.output_dir = args.output_dir or Path(tmp)
        report = run(args)
    print(json.dumps(report["setup"]))
    print(json.dumps(report["training"]))
    print(_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
