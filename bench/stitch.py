"""Stitching throughput: ptycho_torch.stitching vs ptychodus' BarycentricArrayStitcher, same inputs.

Both stitchers get the same complex patches and positions and produce the same weighted average
(the part checks that they agree), so the ratio compares only the accumulation strategy: one
vectorised scatter-add per batch here, one Python call per patch in ptychodus.
Run with ``python -m bench stitch [--quick]``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from ptychodus.api.interpolate import BarycentricArrayStitcher

from bench.timing import median_seconds
from ptycho_torch.stitching import DEFAULT_M, Stitcher, stitch_patches

SIZES = {"smoke": ((200,), 1), "quick": ((200, 1000), 3), "full": ((1000, 10000), 5)}
"""Per mode: patch counts, timed repeats (after one warm-up call)."""
N = 64


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
    for crop, (cx, cy) in zip(crops, centres, strict=True):
        stitcher.add_patch(float(cx), float(cy), crop.astype(np.complex128), ones)
    return stitcher.stitch()


def run(mode: str) -> dict[str, Any]:
    """Patches/s of both stitchers (median of repeats after a warm-up) at each size of ``mode``."""
    counts, repeat = SIZES[mode]
    rows = []
    for count in counts:
        patches, positions = make_scan(count, N)
        ours_s, ours = median_seconds(partial(stitch_patches, patches, positions, M=DEFAULT_M), repeat=repeat)
        theirs_s, theirs = median_seconds(partial(stitch_ptychodus, patches, positions, DEFAULT_M), repeat=repeat)
        rows.append({"patches": count, "canvas": list(ours.canvas.shape), "ours_patches_per_s": count / ours_s,
                     "ptychodus_patches_per_s": count / theirs_s, "ratio": theirs_s / ours_s,
                     "max_abs_diff": float(np.max(np.abs(ours.canvas - theirs)))})
    return {"setup": {"N": N, "M": DEFAULT_M, "repeats": repeat, "warmup": 1}, "rows": rows}


def table(result: dict[str, Any]) -> str:
    """Markdown table of :func:`run`'s result."""
    lines = ["| patches | canvas | ptycho_torch (patches/s) | ptychodus (patches/s) | ratio | max abs diff |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['patches']:,} | {r['canvas'][0]}x{r['canvas'][1]} | {r['ours_patches_per_s']:,.0f} | "
                     f"{r['ptychodus_patches_per_s']:,.0f} | {r['ratio']:.1f}x | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)
