"""Packaging facts an operator relies on: one onnxruntime build per install, a licence, a version."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower() for requirement in requirements}


def test_cpu_and_gpu_extras_each_bring_one_onnxruntime_build_and_the_core_neither() -> None:
    extras = PYPROJECT["optional-dependencies"]
    builds = {"onnxruntime", "onnxruntime-gpu"}
    assert not _names(PYPROJECT["dependencies"]) & builds
    assert _names(extras["cpu"]) & builds == {"onnxruntime"}
    assert _names(extras["gpu"]) & builds == {"onnxruntime-gpu"}
    for name, requirements in extras.items():
        if name not in ("cpu", "gpu"):
            assert not _names(requirements) & builds, f"extra {name!r} pins an onnxruntime build"
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "RUNTIME ?= cpu" in makefile and "EXTRAS ?= $(RUNTIME)," in makefile and "DEMO_EXTRAS ?= $(RUNTIME)" in makefile


def test_licence_is_an_spdx_string_with_the_licence_file() -> None:
    assert PYPROJECT["license"] == "BSD-3-Clause"
    assert PYPROJECT["license-files"] == ["LICENSE"]
    assert (PROJECT_ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License")


def test_version_is_written_once() -> None:
    from ptycho_torch import __version__

    assert "version" in PYPROJECT["dynamic"] and "version" not in PYPROJECT
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
