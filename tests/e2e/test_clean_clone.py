"""A user's clone works by itself.

The committed HEAD is cloned into a temporary folder (nothing beside it: no ``shared/`` data or
docs folder), and from that clone:

* ``make demo`` runs (the Makefile target and ``scripts/demo.sh``: a real ``ptychopinn serve`` of
  the shipped default bundle, the real scan's held-out half reconstructed over HTTP) with torch,
  Lightning, Ptychodus and MLflow made unimportable: the demo needs only what ``make demo`` installs;
* a subset of the test suite that reads the shipped data and bundles passes;
* ``python -m bench stitch --smoke`` leaves every tracked file as it was;
* every relative link in the README and docs points to a file of the clone.

What it proves: the committed tree holds every file that the demo, those tests and the docs need,
and the code reads none from outside the repository. What it does not prove: that pip resolves the
extras on a fresh machine. To stay fast it reuses this test run's virtual environment (``make`` is
told the install stamp is up to date, and ``PYTHONPATH`` puts the clone first), so the clone's code
runs with this environment's packages; ``.ci/run`` covers the install from nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ptycho_torch.data import load_siemens_star, spatial_split

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
#: what `make demo` does not install; the demo must not import any of it
NOT_IN_DEMO = ("torch", "lightning", "pytorch_lightning", "ptychodus", "mlflow", "tensorboard")
#: reads the shipped scan, the failing cases and the default bundle (about 20 s on 2 cores)
TEST_SUBSET = ("tests/ptycho_torch/test_data.py", "tests/ptycho_torch/test_bundle.py",
               "tests/ptycho_torch/test_pipeline.py")
BLOCKER = textwrap.dedent(f"""\
    import importlib.abc, sys

    class _NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {NOT_IN_DEMO!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not installed by make demo)",
                                          name=name)
            return None

    sys.meta_path.insert(0, _NotInstalled())
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ``git clone`` of the committed HEAD, alone in its folder."""
    if shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists():
        pytest.fail(f"{PROJECT_ROOT} is not a git checkout with git on PATH; this test clones the repository")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    target = tmp_path_factory.mktemp("user") / "ptychopinn-serve"
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(PROJECT_ROOT), str(target)], check=True, timeout=120)
    subprocess.run(["git", "checkout", "--quiet", head], cwd=target, check=True, timeout=120)
    assert sorted(p.name for p in target.parent.iterdir()) == ["ptychopinn-serve"]
    return target


def _env(clone: Path, *front: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "MAKEFLAGS")}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, front), str(clone)])
    return env


def test_make_demo_runs_from_the_clone_without_torch_or_ptychodus(clone: Path, tmp_path: Path, data_dir: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {**_env(clone, blocker), "PORT": str(_free_port())}
    python = str(VENV / "bin" / "python")

    where = subprocess.run(
        [python, "-c", "import ptycho_torch, serving; print(ptycho_torch.__file__, serving.__file__)\nimport torch"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert all(Path(p).is_relative_to(clone) for p in where.stdout.split()), where.stdout  # the clone's code runs
    assert "ModuleNotFoundError: No module named 'torch' (blocked" in where.stderr  # and torch cannot be imported

    out = tmp_path / "demo"
    stamp = VENV / ".installed-demo"  # `-o`: take the reused environment's install as up to date
    done = _run(["make", "--no-print-directory", "-o", str(stamp), "demo", f"VENV={VENV}", f"DEMO_DIR={out}"],
                clone, env, 300)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]

    result = np.load(out / "reconstruction.npz")
    _, test = spatial_split(load_siemens_star(data_dir / "siemens-star-small.npz.bz2", 64))
    # the canvas spans the held-out positions plus the stitched M=20 crops
    assert result["amplitude"].shape[1] >= np.ptp(test.xcoords) + 20
    assert result["amplitude"].shape[0] >= np.ptp(test.ycoords) + 20
    covered = result["coverage"] > 0
    assert covered.mean() > 0.9
    assert np.isfinite(result["amplitude"]).all() and np.isfinite(result["phase"]).all()
    assert np.std(result["phase"][covered]) > 0.1  # the star's spokes, not a flat object
    for name in ("reconstructed_amplitude.png", "reconstructed_phase.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("reconstructed_amplitude.tif", "reconstructed_phase.tif", "reconstruction.cxi"):
        assert (out / name).stat().st_size > 0, name


def test_a_test_subset_passes_in_the_clone(clone: Path) -> None:
    done = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_SUBSET], clone, _env(clone), 600)
    assert re.search(r"\b\d+ passed\b", done.stdout) and "skipped" not in done.stdout, done.stdout[-2000:]


def test_bench_smoke_touches_no_tracked_file(clone: Path) -> None:
    _run([sys.executable, "-m", "bench", "stitch", "--smoke"], clone, _env(clone), 300)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout
    assert status == ""  # results went to the ignored out/bench-smoke/, docs/benchmarks.md untouched
    assert list((clone / "out" / "bench-smoke").glob("*-smoke.json"))


def test_docs_link_only_to_files_of_the_repository(clone: Path) -> None:
    docs = [clone / "README.md", *sorted((clone / "docs").glob("*.md")), *sorted(clone.glob("*/README.md"))]
    missing = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)#\s]+)", doc.read_text()):
            if not re.match(r"[a-z]+://", target) and not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(clone)} -> {target}")
    assert missing == []
    outside = subprocess.run(["git", "grep", "-n", "-e", "/".join(["..", "shared"])], cwd=clone,
                             capture_output=True, text=True).stdout
    assert outside == ""  # no file names the developers' shared folder
    unshipped = ("ptychopinn-method.md", "reference-points", "ptychodus-integration.md", "quality-findings")
    named = subprocess.run(["git", "grep", "-n", *(arg for doc in unshipped for arg in ("-e", doc)), "--",
                            ":!tests/e2e/test_clean_clone.py"], cwd=clone, capture_output=True, text=True).stdout
    assert named == ""  # nor a design document that is not in the repository


def test_readme_bench_commands_name_the_bench_runner() -> None:
    """Every ``python -m bench...`` command of the README parses (``-m bench.engines`` ran nothing)."""
    from bench.__main__ import build_parser

    commands = re.findall(r"python -m (bench\S*) ([^`#\n]*)", (PROJECT_ROOT / "README.md").read_text())
    assert len(commands) >= 4
    for module, arguments in commands:
        assert module == "bench", f"python -m {module} {arguments}"
        build_parser().parse_args(arguments.split())
