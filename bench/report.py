"""Results files (bench/results/<date>[-mode].json) and the generated tables of docs/benchmarks.md.

Generated blocks sit between ``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->``; text
outside them is hand-written and left alone. A block whose markers are missing is appended at the end.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.machine import NO_GPU

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"


def cell(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec`` for a table; "n/a" for a missing or non-finite number."""
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no inf/NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def results_path(results_dir: Path, date: str, mode: str) -> Path:
    """``<date>.json`` for full runs, ``<date>-<mode>.json`` otherwise."""
    return results_dir / (f"{date}.json" if mode == "full" else f"{date}-{mode}.json")


def save(path: Path, machine: dict[str, Any], mode: str, parts: dict[str, Any]) -> dict[str, Any]:
    """Merge ``parts`` into the results file at ``path`` (a part run again replaces its old entry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(path.read_text()) if path.is_file() else {"mode": mode, "parts": {}}
    for name, part in parts.items():
        results["parts"][name] = {**part, "machine": machine}
    results["machine"] = machine
    results = finite_or_none(results)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=_jsonable, allow_nan=False) + "\n")
    tmp.replace(path)
    return results


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def machine_line(machine: dict[str, Any], started: str, wall_s: float | None) -> str:
    """One line saying where and when a part ran."""
    versions = machine["versions"]
    libs = ", ".join(f"{k} {versions[k]}" for k in ("numpy", "torch", "onnxruntime") if k in versions)
    gpus = ", ".join(g["name"] for g in machine["gpus"]) or "no GPU"
    took = f", took {wall_s:.1f} s" if wall_s is not None else ""
    return (f"_Run {started}{took} on {machine['cpu_model']} ({machine['logical_cores']} logical cores, "
            f"{machine['memory_gib']} GiB, load {machine['load_average_1m']} at start), {gpus}; Python "
            f"{machine['python']}, {libs}._")


def gpu_table(results: dict[str, Any]) -> str:
    """The GPU rows (training samples/s, onnxruntime CUDA patterns/s, end-to-end reconstruct time)."""
    parts = results["parts"]
    machine = results["machine"]
    rows = ["| figure | value |", "|---|---|"]
    if not machine["gpus"]:
        for name in ("training samples/s (GPU)", "onnxruntime CUDA patterns/s", "end-to-end reconstruct time (GPU)",
                     "refinement iteration, CuPy (`python -m bench refine_speed`)"):
            rows.append(f"| {name} | {NO_GPU} |")
        return "\n".join(rows)
    train = parts.get("train", {})
    rows.append(f"| training samples/s ({train.get('setup', {}).get('accelerator', '?')}) | "
                f"{train.get('training', {}).get('samples_per_s', 'not run')} |")
    cuda = parts.get("engines", {}).get("patterns_per_s", {}).get("onnxruntime CUDA", "not run")
    rows.append(f"| onnxruntime CUDA patterns/s | {cuda} |")
    for name, case in parts.get("quality", {}).get("cases", {}).items():
        for point in case.get("curves", {}).get("network only", []):
            rows.append(f"| end-to-end reconstruct time, {name} (s) | {point['seconds']:.3f} |")
    rows.extend(_refinement_gpu_rows(parts.get("refine_speed", {}).get("gpu", "not run")))
    return "\n".join(rows)


def _refinement_gpu_rows(gpu: dict[str, Any] | str) -> list[str]:
    """One row per ``bench refine_speed`` case on CuPy: ms per iteration and the fraction of its FFT bound."""
    if not isinstance(gpu, dict):
        return [f"| refinement iteration, CuPy | {gpu} |"]
    return [f"| refinement iteration, CuPy, {row['case']}, {row['update']} (ms; fraction of FFT bound) | "
            f"{row['iteration_ms']:.2f}; {row['fraction_of_fft_bound']:.2f} |" for row in gpu["rows"]]


def render(results: dict[str, Any], tables: Mapping[str, Callable[[dict[str, Any]], str]]) -> dict[str, str]:
    """Markdown block per part present in ``results`` (table + where it ran), plus the GPU block."""
    blocks = {}
    for name, part in results["parts"].items():
        if name in tables:
            header = f"Mode `{results['mode']}`; results file `{part['results_file']}`."
            footer = machine_line(part["machine"], part["started"], part.get("wall_s"))
            blocks[name] = f"{header}\n\n{tables[name](part)}\n\n{footer}"
    blocks["gpu"] = gpu_table(results)
    return blocks


def update_docs(doc: Path, blocks: Mapping[str, str]) -> None:
    """Replace each generated block of ``doc`` (appending blocks whose markers are missing)."""
    text = doc.read_text() if doc.is_file() else "# Benchmarks\n"
    for name, body in blocks.items():
        begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
        block = f"{begin}\n{body}\n{end}"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
        if pattern.search(text):
            text = pattern.sub(lambda _, block=block: block, text)  # a function: the block is no template
        else:
            text = text.rstrip("\n") + f"\n\n{block}\n"
    doc.write_text(text)
