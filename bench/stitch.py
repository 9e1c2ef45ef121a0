"""Stitching throughput: ptycho_torch.stitching vs ptychodus' BarycentricArrayStitcher, same inputs.

Both stitchers get the same complex patches and positions and produce the same weighted average
(the script checks that they agree), so the ratio compares only the accumulation strategy:
one vectorised scatter-add per batch here, one Python call per patch in ptychodus.

    .venv/bin/python -m bench.stitch            # 1,000 and 10,000 patches, best of 3
    .venv/bin/python -m bench.stitch --quick    # 200 and 1,000 patches, one repeat
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
from ptychodus.api.interpolate import BarycentricArrayStitcher

from ptycho_torch.stitching import DEFAULT_M, Stitcher, stitch_patches


def make_scan(count: int, N: int, *, step_px: float = 6.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random complex64 ``N x N`` patches on a jittered raster with ``step_px`` spacing."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(count)))
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), axis=-1).reshape(-1, 2)[:count]
    positions = grid * step_px + rng.uniform(-1.0, 1.0, (count, 2))
    patches = (rng.standard_normal((count, N, N)) + 1j * rng.standard_normal((count, N, N))).astype(np.complex64)
    return patches, positions


def stitch_ptychodus(patches: np.ndarray, positions: np.ndarray, M: int) -> np.ndarray:
    """The same stitch through ``ptychodus.api.interpolate.BarycentricArrayStitcher`` (one call per patch)."""
    geometry = Stitcher.from_positions(positions, M=M)  # same canvas, so results compare pixel by pixel
    N = patches.shape[-1]
    start = N // 2 - M // 2
    crops = patches[:, start:start + M, start:start + M]
    # ptychodus centres a width-M window on array pixel (M-1)/2; ours puts the patch centre at M//2
    centres = positions + np.asarray(geometry.origin) - M // 2 + (M - 1) / 2
    upper = np.zeros(geometry.shape, dtype=np.complex128)
    lower = np.zeros(geometry.shape, dtype=np.float64)
    stitcher = BarycentricArrayStitcher(upper, lower)
    ones = np.ones((M, M))
    for crop, (cx, cy) in zip(crops, centres):
        stitcher.add_patch(float(cx), float(cy), crop.astype(np.complex128), ones)
    return stitcher.stitch()


def best_time(function: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Fastest wall time of ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (CI smoke run)")
    parser.add_argument("--N", type=int, default=64, help="patch size in pixels")
    parser.add_argument("--M", type=int, default=DEFAULT_M, help="central crop kept from each patch")
    args = parser.parse_args(argv)
    counts, repeat = ((200, 1000), 1) if args.quick else ((1000, 10000), 3)

    print(f"# stitch N={args.N} M={args.M}, python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print("| patches | canvas | ptycho_torch (patches/s) | ptychodus (patches/s) | ratio | max abs diff |")
    print("|---:|---|---:|---:|---:|---:|")
    for count in counts:
        patches, positions = make_scan(count, args.N)
        ours_s, ours = best_time(lambda: stitch_patches(patches, positions, M=args.M), repeat)
        theirs_s, theirs = best_time(lambda: stitch_ptychodus(patches, positions, args.M), repeat)
        difference = float(np.max(np.abs(ours.canvas - theirs)))
        print(f"| {count:,} | {ours.canvas.shape[0]}x{ours.canvas.shape[1]} | {count / ours_s:,.0f} | "
              f"{count / theirs_s:,.0f} | {theirs_s / ours_s:.1f}x | {difference:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
