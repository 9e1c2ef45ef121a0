"""The package layering of design.md, checked on the source: contracts low, entry points high.

Every ``import`` statement is read with :mod:`ast` (module level, inside functions, under
``TYPE_CHECKING``: a lazy import is still a dependency), and each package may import only the
packages below it:

    ptychopinn    the command line: may import everything
    export        ptycho_torch, training            (never serving)
    serving       ptycho_torch                      (never training, export, torch or lightning)
    training      ptycho_torch
    ptycho_torch  nothing above it, except the declared facade of the TensorFlow mirror
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ptycho_torch", "training", "export", "serving", "ptychopinn")

FORBIDDEN: dict[str, frozenset[str]] = {
    "ptycho_torch": frozenset({"training", "export", "serving", "ptychopinn"}),
    "training": frozenset({"export", "serving", "ptychopinn"}),
    "export": frozenset({"serving", "ptychopinn"}),
    "serving": frozenset({"training", "export", "ptychopinn", "torch", "lightning", "pytorch_lightning"}),
    "ptychopinn": frozenset(),
}
"""Top-level names each package must never import."""

FACADES: dict[str, frozenset[str]] = {
    "ptycho_torch.workflows.components": frozenset({"training"}),
}
"""The only core modules allowed to reach up, and what each may reach: the TensorFlow mirror's
workflow trains with Lightning. (``model_manager`` needs no exception: checkpoints are read with
:func:`ptycho_torch.checkpoint.load_generator`.)"""


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in the file at ``path`` (module ``module``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
    return found


def layering_violations(root: Path) -> list[str]:
    """One line per import against the direction, for the packages under ``root``."""
    violations = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            forbidden = FORBIDDEN[package] - FACADES.get(module, frozenset())
            for line, name in imported_modules(path, module):
                if name.split(".")[0] in forbidden:
                    violations.append(f"{path.relative_to(root)}:{line}: {package} must not import {name}")
    return violations


def test_packages_import_only_downwards() -> None:
    assert layering_violations(PROJECT_ROOT) == []


@pytest.mark.parametrize(("package", "source", "line", "name"), [
    ("ptycho_torch", "from serving.engine import Engine\n", 1, "serving.engine"),
    ("ptycho_torch", "import numpy\nimport training.module\n", 2, "training.module"),
    ("export", "from serving.client import Client\n", 1, "serving.client"),
    ("serving", "def f():\n    import torch.nn\n", 2, "torch.nn"),
    ("serving", "from export.bundle_writer import export_bundle\n", 1, "export.bundle_writer"),
    ("training", "from ptychopinn.cli import main\n", 1, "ptychopinn.cli"),
])
def test_a_wrong_import_is_reported(tmp_path: Path, package: str, source: str, line: int, name: str) -> None:
    for top in PACKAGES:
        (tmp_path / top).mkdir()
    (tmp_path / package / "wrong.py").write_text(source)
    assert layering_violations(tmp_path) == [f"{package}/wrong.py:{line}: {package} must not import {name}"]


def test_the_facade_may_reach_training_but_nothing_else(tmp_path: Path) -> None:
    for name in PACKAGES:
        (tmp_path / name).mkdir()
    (tmp_path / "ptycho_torch" / "model_manager.py").write_text("from training.module import M\n")
    (tmp_path / "ptycho_torch" / "workflows").mkdir()
    (tmp_path / "ptycho_torch" / "workflows" / "components.py").write_text(
        "from training.trainer import train\nfrom serving.app import create_app\n")
    assert layering_violations(tmp_path) == [
        "ptycho_torch/model_manager.py:1: ptycho_torch must not import training.module",
        "ptycho_torch/workflows/components.py:2: ptycho_torch must not import serving.app"]


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    for name in PACKAGES:
        (tmp_path / name).mkdir()
    (tmp_path / "export" / "sub").mkdir()
    (tmp_path / "export" / "sub" / "x.py").write_text("from . import y\nfrom ..verify import check\n")
    (tmp_path / "export" / "sub" / "__init__.py").write_text("from .x import z\n")
    assert imported_modules(tmp_path / "export" / "sub" / "x.py", "export.sub.x") == [(1, "export.sub"),
                                                                                     (2, "export.verify")]
    assert imported_modules(tmp_path / "export" / "sub" / "__init__.py", "export.sub") == [(1, "export.sub.x")]
