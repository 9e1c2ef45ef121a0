"""scripts/lint.py: findings may only shrink from the recorded baseline (without running the tools)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _load_lint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lint", PROJECT_ROOT / "scripts" / "lint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lint"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


lint = _load_lint()


def _finding(file: str, key: str, line: int = 1) -> object:
    tool, code = key.split(":")
    return lint.Finding(tool, code, file, line, f"message {line}")


def _baseline(tmp_path: Path, counts: dict[str, dict[str, int]]) -> Path:
    path = tmp_path / "baseline.json"
    lint.write_baseline(counts, path)
    return path


def test_a_count_above_the_baseline_fails_and_prints_each_finding(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = _baseline(tmp_path, {"a.py": {"ruff:F401": 1}})
    findings = [_finding("a.py", "ruff:F401", 3), _finding("a.py", "ruff:F401", 9), _finding("b.py", "mypy:arg-type")]
    assert lint.check(findings, path) == 1
    out = capsys.readouterr().out
    assert "NEW a.py ruff:F401: 2 findings, the baseline allows 1\n    a.py:3: ruff:F401 message 3\n" \
           "    a.py:9: ruff:F401 message 9\n" in out
    assert "NEW b.py mypy:arg-type: 1 findings, the baseline allows 0\n    b.py:1: mypy:arg-type message 1\n" in out
    assert "2 file/code counts above the baseline" in out


def test_fewer_findings_pass_and_say_the_baseline_can_shrink(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = _baseline(tmp_path, {"a.py": {"mypy:arg-type": 3, "ruff:I001": 1}})
    assert lint.check([_finding("a.py", "mypy:arg-type")] * 3, path) == 0
    out = capsys.readouterr().out
    assert "fixed a.py ruff:I001: 1 -> 0" in out and "the baseline can shrink (1 counts)" in out
    assert lint.read_baseline(path) == {"a.py": {"mypy:arg-type": 3, "ruff:I001": 1}}  # unchanged without --update


def test_update_lowers_counts_and_never_records_a_new_finding(tmp_path: Path) -> None:
    path = _baseline(tmp_path, {"a.py": {"mypy:arg-type": 3, "ruff:I001": 1}, "gone.py": {"ruff:B905": 2}})
    findings = [_finding("a.py", "mypy:arg-type"), _finding("a.py", "ruff:B008"), _finding("c.py", "ruff:F401")]
    assert lint.check(findings, path, update=True) == 1  # the new ones still fail
    assert lint.read_baseline(path) == {"a.py": {"mypy:arg-type": 1}}
    assert lint.check([_finding("a.py", "mypy:arg-type")], path, update=True) == 0


def test_the_baseline_file_is_sorted_and_stable(tmp_path: Path) -> None:
    counts = lint.count([_finding("b.py", "ruff:I001"), _finding("a.py", "mypy:misc"), _finding("a.py", "mypy:misc"),
                         _finding("a.py", "mypy:arg-type")])
    assert counts == {"a.py": {"mypy:arg-type": 1, "mypy:misc": 2}, "b.py": {"ruff:I001": 1}}
    path = _baseline(tmp_path, counts)
    assert path.read_text() == json.dumps(counts, indent=1, sort_keys=True) + "\n"
    assert lint.read_baseline(path) == counts


def test_the_tools_json_becomes_findings() -> None:
    ruff = json.dumps([{"code": "F401", "filename": str(PROJECT_ROOT / "serving" / "x.py"),
                        "location": {"row": 7, "column": 1}, "message": "`os` imported but unused"}])
    mypy = "\n".join(json.dumps(item) for item in [
        {"file": "ptycho_torch/y.py", "line": 4, "code": "arg-type", "severity": "error", "message": "bad"},
        {"file": "ptycho_torch/y.py", "line": 4, "code": None, "severity": "note", "message": "hint"}])
    assert [str(f) for f in lint.parse_ruff(ruff)] == ["serving/x.py:7: ruff:F401 `os` imported but unused"]
    assert [str(f) for f in lint.parse_mypy(mypy)] == ["ptycho_torch/y.py:4: mypy:arg-type bad"]
