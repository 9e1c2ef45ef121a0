"""Refinement speed against the FFT bound.

One refinement iteration over S patterns needs at least one forward and one inverse FFT of the exit-wave
stack ``(S, P, N, N)`` (complex64); everything else it does is overhead. This part times
``ptycho_torch.refinement`` iterations (median over iterations 3 .. k-1, the solver's default rule for
the update) and, in the same run on the same arrays' shape, that FFT pair (``scipy.fft`` with every
CPU, in place on one preallocated stack, so no allocation is counted; CuPy's cuFFT on a GPU), and reports pattern-iterations per second and the ratio FFT pair / iteration (1.0: the
iteration costs no more than its FFTs). Cases: one probe mode on integer positions, three modes on
sub-pixel positions; each with the object only, the probe refined too, and the positions refined too.

    python -m bench refine_speed [--quick]                    # numpy, into docs/benchmarks.md
    python -m bench.refine_speed --backend cupy [--json F]    # the GPU path, on a machine with CuPy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import cell
from ptycho_torch.errors import DataContractError
from ptycho_torch.refinement import RefineSettings, ScanModel, refine
from ptycho_torch.refinement.backend import array_backend

SIZES = {"smoke": {"S": 64, "N": 32, "iterations": 6, "repeats": 3},
         "quick": {"S": 400, "N": 64, "iterations": 10, "repeats": 7},
         "full": {"S": 400, "N": 64, "iterations": 16, "repeats": 11}}
GEOMETRIES = (("1 mode, integer positions", 1, False), ("3 modes, sub-pixel positions", 3, True))
UPDATES: tuple[tuple[str, dict[str, bool]], ...] = (
    ("object", {}), ("object + probe", {"refine_probe": True}), ("object + positions", {"refine_positions": True}))
STEP_PX = 6.0


def _scan(S: int, N: int, P: int, subpixel: bool, seed: int = 0) -> dict[str, Any]:
    """Random amplitudes, probe and a raster of ``S`` positions (timing needs shapes, not physics)."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(S)))
    grid = np.arange(side) * STEP_PX
    positions = np.stack([v.ravel()[:S] for v in np.meshgrid(grid, grid)], axis=1)
    if subpixel:
        positions = positions + rng.uniform(0.1, 0.9, positions.shape)
    extent = int(grid.max()) + N + 4
    return {"amplitudes": np.abs(rng.standard_normal((S, N, N))).astype(np.float32), "positions": positions,
            "probe": (rng.standard_normal((P, N, N)) + 1j * rng.standard_normal((P, N, N))).astype(np.complex64),
            "shape": (extent, extent), "origin": (N / 2 + 2, N / 2 + 2)}


def _median_seconds(run: Callable[[], Any], repeats: int, synchronise: Callable[[], None]) -> float:
    run()
    synchronise()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronise()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def fft_pair_seconds(backend: str, shape: tuple[int, ...], repeats: int) -> float:
    """Median seconds of one in-place forward + inverse 2-D FFT of a complex64 ``shape`` stack."""
    be = array_backend(backend)
    xp = be.xp
    stack = xp.asarray(np.random.default_rng(1).standard_normal(shape).astype(np.complex64))

    def pair() -> None:  # in place, no allocation: the tightest bound (fft then ifft leaves the values)
        be.ifft2(be.fft2(stack, overwrite_x=True, workers=-1), overwrite_x=True, workers=-1)

    return _median_seconds(pair, repeats, _synchroniser(xp))


def _synchroniser(xp: Any) -> Callable[[], None]:
    if xp is np:
        return lambda: None
    return lambda: xp.cuda.Device().synchronize()  # pragma: no cover - needs a GPU


def iteration_seconds(backend: str, scan: dict[str, Any], iterations: int, updates: dict[str, bool]
                      ) -> tuple[float, int, str]:
    """Median seconds per refinement iteration (iterations 3 .. k-1), the threads the solver used and its
    update rule (the default for these updates)."""
    model = ScanModel(scan["amplitudes"], scan["positions"], scan["probe"], shape=scan["shape"],
                      origin=scan["origin"], backend=backend, margin=8 if updates.get("refine_positions") else 0)
    start = model.grow(np.ones(scan["shape"], np.complex64), 1.0)
    settings = RefineSettings(iterations=iterations, backend=backend, **updates)
    states = list(refine(model, start, settings))
    seconds = np.diff([entry["seconds"] for entry in states[-1].history])
    return float(np.median(seconds[2:-1])), model.threads, str(settings.algorithm)


def run(mode: str, backend: str = "numpy") -> dict[str, Any]:
    """Every case's iteration time beside its FFT pair on ``backend``; from ``python -m bench`` (numpy) also
    the same on CuPy when this machine has it and a GPU (``gpu``: its result, or why it was not measured)."""
    part = _run(mode, backend)
    if backend == "numpy":
        try:
            part["gpu"] = _run(mode, "cupy")
        except DataContractError as error:  # no CuPy here
            part["gpu"] = f"not measured: {error}"
        except Exception as error:  # noqa: BLE001 - CuPy without a usable GPU raises its own CUDA errors
            part["gpu"] = f"not measured: {type(error).__name__}: {error}"
    return part


def _run(mode: str, backend: str) -> dict[str, Any]:
    size = SIZES[mode]
    rows = []
    for label, modes, subpixel in GEOMETRIES:
        scan = _scan(size["S"], size["N"], modes, subpixel)
        fft_s = fft_pair_seconds(backend, (size["S"], modes, size["N"], size["N"]), size["repeats"])
        for update, flags in UPDATES:
            iteration_s, threads, algorithm = iteration_seconds(backend, scan, size["iterations"], flags)
            rows.append({"case": label, "update": update, "algorithm": algorithm, "patterns": size["S"], "N": size["N"],
                         "modes": modes,
                         "threads": threads, "iteration_ms": 1e3 * iteration_s, "fft_pair_ms": 1e3 * fft_s,
                         "pattern_iterations_per_s": size["S"] / iteration_s, "fraction_of_fft_bound": fft_s / iteration_s})
    return {"backend": backend, "rows": rows,
            "notes": ["Fraction of FFT bound: one forward + one inverse FFT of the (S, P, N, N) stack over one iteration. "
                      "The rule is the solver's default for the update (rpie's mini-batches of S/8 update the probe "
                      "8 times an epoch). Refining the probe on sub-pixel positions needs two more FFT passes "
                      "(shifting the probe and un-shifting its update), and moving positions makes every position "
                      "sub-pixel and its illumination new each pass, so those rows' own bound is lower than the "
                      "ratio suggests. Positions move from iteration 10: the median covers both phases."]}


def table(part: dict[str, Any]) -> str:
    """The markdown table of :func:`run`'s result (and of its GPU run, when there was one)."""
    gpu = part.get("gpu")
    own = _table(part)
    return own if not isinstance(gpu, dict) else f"{own}\n\n{_table(gpu)}"


def _table(part: dict[str, Any]) -> str:
    lines = [f"Backend: {part['backend']}.", "",
             "| case | update | rule | threads | iteration (ms) | FFT pair (ms) | pattern-iterations/s | "
             "fraction of FFT bound |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in part["rows"]:
        lines.append(f"| {row['case']} ({row['patterns']} x {row['N']}x{row['N']}) | {row['update']} | {row['algorithm']} | "
                     f"{row['threads']} | "
                     f"{cell(row['iteration_ms'], '.1f')} | {cell(row['fft_pair_ms'], '.1f')} | "
                     f"{cell(row['pattern_iterations_per_s'], ',.0f')} | {cell(row['fraction_of_fft_bound'], '.2f')} |")
    return "\n".join([*lines, "", *part["notes"]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.refine_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    parser.add_argument("--mode", default="quick", choices=tuple(SIZES))
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    part = _run(args.mode, args.backend)
    print(table(part))
    if args.json is not None:
        args.json.write_text(json.dumps(part, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
