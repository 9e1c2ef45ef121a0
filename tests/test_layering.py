"""The package layering of design.md, checked on the source: contracts low, entry points high.

Every ``import`` statement is read with :mod:`ast` (module level, inside functions, under
``TYPE_CHECKING``: a lazy import is still a dependency), and each package may import only the
packages below it:

    ptychopinn    the command line: may import everything
    export        ptycho_torch, training            (never serving)
    serving       ptycho_torch                      (never training, export, torch or lightning)
    training      ptycho_torch
    ptycho_torch  nothing above it, except the declared facade of the TensorFlow mirror

and the core's third parties are the ones docs/architecture.md states: numpy, scipy, pydantic, onnx;
torch only in ``model``, ``fourier_layers``, ``physics``, ``torch_runner``, ``model_manager`` and inside
``checkpoint.load_generator``; Lightning only in ``workflows``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
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


CORE_THIRD_PARTY = frozenset({"numpy", "scipy", "pydantic", "pydantic_core", "onnx", "skimage"})
"""What any module of the core may import besides the standard library, typeshed's ``_typeshed`` (type
checking only) and the project's packages."""

CORE_ONLY_IN: dict[str, frozenset[str]] = {
    "torch": frozenset({"ptycho_torch.model", "ptycho_torch.fourier_layers", "ptycho_torch.physics",
                        "ptycho_torch.torch_runner", "ptycho_torch.model_manager",
                        "ptycho_torch.checkpoint.load_generator"}),
    "lightning": frozenset({"ptycho_torch.workflows"}),
    "pytorch_lightning": frozenset({"ptycho_torch.workflows"}),
    "onnxruntime": frozenset({"ptycho_torch.bundle.runtime"}),
    "cryptography": frozenset({"ptycho_torch.bundle.signing"}),
    "mlflow": frozenset({"ptycho_torch.mlflow_store"}),
    "h5py": frozenset({"ptycho_torch.outputs"}),
    "matplotlib": frozenset({"ptycho_torch.outputs"}),
    "mpl_toolkits": frozenset({"ptycho_torch.outputs"}),
    "tifffile": frozenset({"ptycho_torch.outputs"}),
    "cupy": frozenset({"ptycho_torch.refinement.backend._cupy"}),
    "cupyx": frozenset({"ptycho_torch.refinement.backend._cupy"}),
}
"""Third parties only some places of the core may import: a package, a module or a function (its lazy
imports), by dotted name (docs/architecture.md states the same)."""


def _imports(node: ast.AST, package: list[str], place: str) -> Iterator[tuple[int, str, str]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            yield from ((child.lineno, alias.name, place) for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = package[: len(package) - child.level + 1] if child.level else []
            yield child.lineno, ".".join([*base, *([child.module] if child.module else [])]), place
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield from _imports(child, package, f"{place}.{child.name}")
        else:
            yield from _imports(child, package, place)


def placed_imports(path: Path, module: str) -> list[tuple[int, str, str]]:
    """``(line, absolute module name, place)`` of every import in the file at ``path`` (module ``module``),
    by line; ``place`` is the module, or the dotted function (or class) the import is inside."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    return sorted(_imports(tree, package, module))


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in the file at ``path`` (module ``module``)."""
    return [(line, name) for line, name, _ in placed_imports(path, module)]


def _modules(root: Path, package: str) -> Iterator[tuple[Path, str]]:
    """``(path, dotted module name)`` of every module of ``package`` under ``root``, sorted."""
    for path in sorted((root / package).rglob("*.py")):
        yield path, ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def layering_violations(root: Path) -> list[str]:
    """One line per import against the direction, for the packages under ``root``."""
    violations = []
    for package in PACKAGES:
        for path, module in _modules(root, package):
            forbidden = FORBIDDEN[package] - FACADES.get(module, frozenset())
            for line, name in imported_modules(path, module):
                if name.split(".")[0] in forbidden:
                    violations.append(f"{path.relative_to(root)}:{line}: {package} must not import {name}")
    return violations


def _stated(name: str, place: str) -> bool:
    """Whether docs/architecture.md lets the core import the top-level ``name`` at ``place``."""
    if name in sys.stdlib_module_names or name == "_typeshed" or name in PACKAGES or name in CORE_THIRD_PARTY:
        return True
    return any(place == where or place.startswith(f"{where}.") for where in CORE_ONLY_IN.get(name, ()))


def core_third_party_imports(root: Path) -> list[str]:
    """One line for each import of the core against its stated third parties."""
    return [f"{path.relative_to(root)}:{line}: {place} must not import {name}"
            for path, module in _modules(root, "ptycho_torch")
            for line, name, place in placed_imports(path, module) if not _stated(name.split(".")[0], place)]


def test_packages_import_only_downwards() -> None:
    assert layering_violations(PROJECT_ROOT) == []


def test_the_core_imports_only_its_stated_third_parties() -> None:
    assert core_third_party_imports(PROJECT_ROOT) == []


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("model", "import torch\nimport scipy.fft\n", []),
    ("checkpoint", "def load_generator():\n    import torch\n", []),
    ("workflows/components", "import lightning as L\n", []),
    ("checkpoint", "import torch\n", ["ptycho_torch/checkpoint.py:1: ptycho_torch.checkpoint must not import torch"]),
    ("data", "class A:\n    def f(self):\n        from torch import nn\n",
     ["ptycho_torch/data.py:3: ptycho_torch.data.A.f must not import torch"]),
    ("model", "import lightning\n", ["ptycho_torch/model.py:1: ptycho_torch.model must not import lightning"]),
    ("model_manager", "from pytorch_lightning import Trainer\n",
     ["ptycho_torch/model_manager.py:1: ptycho_torch.model_manager must not import pytorch_lightning"]),
    ("outputs", "import numpy\nimport h5py.h5f\nimport skimage\n", []),
    ("metrics", "import numpy\nimport h5py.h5f\n",
     ["ptycho_torch/metrics.py:2: ptycho_torch.metrics must not import h5py.h5f"]),
    ("bundle/runtime", "from .. import model\nimport onnxruntime\n", []),
    ("bundle/reader", "from .. import model\nimport onnxruntime\n",
     ["ptycho_torch/bundle/reader.py:2: ptycho_torch.bundle.reader must not import onnxruntime"]),
    ("workflows/components", "def log():\n    import mlflow\n",
     ["ptycho_torch/workflows/components.py:2: ptycho_torch.workflows.components.log must not import mlflow"]),
    ("config", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from _typeshed import DataclassInstance\n", []),
])
def test_a_third_party_against_the_doc_is_reported(tmp_path: Path, module: str, source: str,
                                                    expected: list[str]) -> None:
    path = tmp_path / "ptycho_torch" / f"{module}.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    assert core_third_party_imports(tmp_path) == expected


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
