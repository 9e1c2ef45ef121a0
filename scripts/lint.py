"""The lint check: ruff and mypy findings may only shrink from the recorded baseline.

Runs ``ruff check`` (the rules of ``[tool.ruff]`` in pyproject.toml: the whole tree) and ``mypy``
(``[tool.mypy]``: the library packages), counts the findings per file and code, and compares the
counts with ``scripts/lint_baseline.json`` (``{file: {"ruff:CODE" | "mypy:code": count}}``):

- a count above its baseline is new: each finding of that file and code is printed as
  ``file:line: tool:code message`` and the check fails (exit 1);
- a count below its baseline is reported as a shrink, and ``--update`` rewrites the baseline to
  the lower counts. ``--update`` never raises a count: new findings are fixed, not recorded.

Usage (from the repository root, the project's venv)::

    .venv/bin/python scripts/lint.py            # check (make lint)
    .venv/bin/python scripts/lint.py --update   # after fixing findings: record the smaller baseline
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "scripts" / "lint_baseline.json"

Counts = dict[str, dict[str, int]]
"""``{file relative to the root: {"tool:code": number of findings}}``."""


@dataclass(frozen=True)
class Finding:
    """One finding of one tool: ``file`` is relative to the repository root, ``line`` 1-based."""

    tool: str
    code: str
    file: str
    line: int
    message: str

    @property
    def key(self) -> str:
        return f"{self.tool}:{self.code}"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key} {self.message}"


def _run(command: list[str], ok_codes: tuple[int, ...]) -> str:
    """stdout of ``command`` run in the root; a tool that failed to run (not: found something) raises."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode not in ok_codes:
        raise SystemExit(f"lint: {command[2]} failed (exit {done.returncode}):\n{done.stderr}{done.stdout}")
    return done.stdout


def parse_ruff(out: str) -> list[Finding]:
    """The findings of ``ruff check --output-format json`` (absolute file names)."""
    return [Finding("ruff", item["code"] or "syntax", Path(item["filename"]).resolve().relative_to(ROOT).as_posix(),
                    item["location"]["row"], item["message"]) for item in json.loads(out)]


def parse_mypy(out: str) -> list[Finding]:
    """The errors of ``mypy --output json`` (one object a line); notes explain an error, they are not one."""
    items = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [Finding("mypy", item["code"] or "error", Path(item["file"]).as_posix(), item["line"], item["message"])
            for item in items if item["severity"] == "error"]


def ruff_findings() -> list[Finding]:
    """``ruff check`` of the whole tree, with the configuration of pyproject.toml."""
    return parse_ruff(_run([sys.executable, "-m", "ruff", "check", "--output-format", "json", "--exit-zero", "."],
                           (0,)))


def mypy_findings() -> list[Finding]:
    """``mypy`` of the files of ``[tool.mypy]`` (exit 1: it found errors; 2: it could not run)."""
    return parse_mypy(_run([sys.executable, "-m", "mypy", "--output", "json"], (0, 1)))


def count(findings: Iterable[Finding]) -> Counts:
    """Findings per file and ``tool:code``, keys sorted (the baseline file's form)."""
    tally = Counter((finding.file, finding.key) for finding in findings)
    counts: Counts = {}
    for file, key in sorted(tally):
        counts.setdefault(file, {})[key] = tally[file, key]
    return counts


def changes(current: Counts, baseline: Counts) -> list[tuple[str, str, int, int]]:
    """``(file, key, baseline count, current count)`` of every count that differs, sorted."""
    keys = {(file, key) for counts in (current, baseline) for file in counts for key in counts[file]}
    found = [(file, key, baseline.get(file, {}).get(key, 0), current.get(file, {}).get(key, 0))
             for file, key in sorted(keys)]
    return [change for change in found if change[2] != change[3]]


def shrunk(current: Counts, baseline: Counts) -> Counts:
    """The baseline with each count lowered to the current one where that is lower (never raised)."""
    lowered = {file: {key: min(n, current.get(file, {}).get(key, 0)) for key, n in keys.items()}
               for file, keys in baseline.items()}
    return {file: {key: n for key, n in keys.items() if n} for file, keys in lowered.items()
            if any(keys.values())}


def read_baseline(path: Path = BASELINE) -> Counts:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def write_baseline(counts: Counts, path: Path = BASELINE) -> None:
    path.write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def check(findings: list[Finding], path: Path = BASELINE, *, update: bool = False) -> int:
    """Compare ``findings`` with the baseline at ``path``: print each new one and each count that shrank,
    with ``update`` write the shrunk baseline. Returns 1 when anything is new, else 0."""
    baseline = read_baseline(path)
    current = count(findings)
    diff = changes(current, baseline)
    new = [(file, key, had, now) for file, key, had, now in diff if now > had]
    for file, key, had, now in diff:
        if now > had:
            print(f"NEW {file} {key}: {now} findings, the baseline allows {had}")
            print("\n".join(f"    {finding}" for finding in findings if (finding.file, finding.key) == (file, key)))
        else:
            print(f"fixed {file} {key}: {had} -> {now}")
    fixed = len(diff) - len(new)
    if fixed and update:
        write_baseline(shrunk(current, baseline), path)
        print(f"lint: {path.name} shrunk ({fixed} counts lowered)")
    elif fixed:
        print(f"lint: the baseline can shrink ({fixed} counts): run `python scripts/lint.py --update`")
    print(f"lint: {_count(len(findings), 'finding')} (ruff and mypy), {_count(len(new), 'file/code count')} above "
          "the baseline")
    return 1 if new else 0



def _count(number: int, noun: str) -> str:
    """``1 finding``, ``2 findings``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite the baseline to the lower counts (never higher)")
    args = parser.parse_args(argv)
    return check(ruff_findings() + mypy_findings(), update=args.update)


if __name__ == "__main__":
    sys.exit(main())
