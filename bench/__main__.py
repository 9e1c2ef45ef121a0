"""``python -m bench all|stitch|engines|serve|train|quality|refine_speed|solver [--quick|--smoke]``.

Each run merges its parts into ``bench/results/<date>.json`` (``<date>-quick.json`` for
``--quick``), with the machine it ran on, and regenerates the tables of ``docs/benchmarks.md`` from
that file. Figures go to ``docs/figures/``. ``--smoke`` (the tests' size) touches no tracked file:
its results and figures go to ``out/bench-smoke/`` and it regenerates a markdown file only when
``--docs`` names one.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from datetime import datetime
from pathlib import Path

from bench import report
from bench.machine import machine_info

PARTS = ("stitch", "engines", "serve", "train", "quality", "refine_speed", "solver")
MODULES = {"stitch": "bench.stitch", "engines": "bench.engines", "serve": "bench.serve",
           "train": "bench.train_quality", "quality": "bench.quality", "refine_speed": "bench.refine_speed",
           "solver": "bench.solver"}


SMOKE_DIR = report.ROOT / "out" / "bench-smoke"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m bench`` arguments (output paths default by mode, see :func:`output_paths`)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=("all", *PARTS), help="what to run ('all': every part)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI-sized run (< 10 min on 2 cores)")
    size.add_argument("--smoke", action="store_true", help="the smallest case of each part (tests)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help=f"default {report.RESULTS_DIR.relative_to(report.ROOT)} "
                             f"({SMOKE_DIR.relative_to(report.ROOT)} with --smoke)")
    parser.add_argument("--docs", type=Path, default=None,
                        help=f"markdown file whose tables to regenerate (default {report.DOCS.relative_to(report.ROOT)}; "
                             "none with --smoke)")
    parser.add_argument("--figures-dir", type=Path, default=None,
                        help="default docs/figures (out/bench-smoke/figures with --smoke)")
    return parser


def output_paths(args: argparse.Namespace, mode: str) -> tuple[Path, Path | None, Path]:
    """``(results_dir, docs or None, figures_dir)``: the tracked files for quick/full runs, a folder
    under ``out/`` and no docs for smoke runs, unless given."""
    if mode == "smoke":
        defaults = (SMOKE_DIR, None, SMOKE_DIR / "figures")
    else:
        defaults = (report.RESULTS_DIR, report.DOCS, report.DOCS.parent / "figures")
    given = (args.results_dir, args.docs, args.figures_dir)
    return tuple(value if value is not None else default for value, default in zip(given, defaults, strict=True))  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    results_dir, docs, figures_dir = output_paths(args, mode)
    names = PARTS if "all" in args.parts else tuple(dict.fromkeys(args.parts))
    started = datetime.now().astimezone()
    path = report.results_path(results_dir, started.strftime("%Y-%m-%d"), mode)
    modules = {name: importlib.import_module(MODULES[name]) for name in names}
    results = {}
    for name, module in modules.items():
        machine = machine_info()
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        print(f"[bench] {name} ({mode}) ...", flush=True)
        start = time.perf_counter()
        part = (module.run(mode, figures_dir=figures_dir, stamp=stamp) if name in ("quality", "solver")
                else module.run(mode))
        part.update(started=stamp, wall_s=round(time.perf_counter() - start, 1),
                    results_file=path.relative_to(report.ROOT).as_posix() if path.is_relative_to(report.ROOT)
                    else str(path))
        results = report.save(path, machine, mode, {name: part})
        print(module.table(part), flush=True)
        print(f"[bench] {name} took {part['wall_s']:.0f} s", flush=True)
    if docs is None:
        print(f"[bench] wrote {path}", flush=True)
        return 0
    tables = {name: importlib.import_module(module).table for name, module in MODULES.items()}
    report.update_docs(docs, report.render(results, tables))
    print(f"[bench] wrote {path} and regenerated {docs}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
