"""The pty-chi baseline, run in its own virtual environment (bench/.ptychi-venv) through NPZ files.

pty-chi needs torchvision, which does not import beside the project's CPU torch, so it runs under
``bench/.ptychi-venv/bin/python bench/ptychi_runner.py`` (create the venv with
``bash bench/ptychi_env.sh``). This module only writes the inputs, runs the subprocess and reads
the result; it never imports pty-chi.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
VENV_PYTHON = HERE / ".ptychi-venv" / "bin" / "python"
RUNNER = HERE / "ptychi_runner.py"
NOT_INSTALLED = "not installed — run bench/ptychi_env.sh"


@dataclass(frozen=True)
class PtychiResult:
    """A pty-chi reconstruction on the project's object grid."""

    object: np.ndarray
    probe: np.ndarray
    loss: np.ndarray
    epochs: int
    converged: bool
    reconstruction_s: float
    """Task construction + epochs until the stated convergence (no interpreter or import time)."""
    process_s: float
    """The whole subprocess, interpreter start and imports included."""
    versions: dict[str, str]
    snapshots: np.ndarray
    """(K, H, W) the object after ``snapshot_epochs`` epochs, ``snapshot_s`` seconds into the reconstruction."""
    snapshot_epochs: np.ndarray
    snapshot_s: np.ndarray
    positions: np.ndarray
    """(S, 2) [x, y] the final positions (corrected when position correction ran)."""
    snapshot_positions: np.ndarray
    """(K, S, 2) the positions at each snapshot."""
    options: dict[str, Any]
    """pty-chi's own dump of every option the run used."""


def available() -> bool:
    """True when the pty-chi virtual environment exists."""
    return VENV_PYTHON.is_file()


def reconstruct(counts: np.ndarray, x: np.ndarray, y: np.ndarray, probe: np.ndarray, object_shape: tuple[int, int],
                settings: dict[str, Any], timeout_s: float = 1800.0) -> PtychiResult:
    """Reconstruct ``counts`` (S, N, N, DC at the centre) at patch centres ``x, y`` with ``probe``
    (P, N, N); see bench/ptychi_runner.py for the settings and conventions."""
    if not available():
        raise RuntimeError(f"pty-chi {NOT_INSTALLED}")
    probe = np.asarray(probe, np.complex64).reshape(-1, *probe.shape[-2:])
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inputs, counts=np.asarray(counts, np.float32), x=np.asarray(x, np.float64),
                 y=np.asarray(y, np.float64), probe=probe, object_shape=np.asarray(object_shape),
                 settings=json.dumps(settings))
        start = time.perf_counter()
        # -I: isolated, so bench/ (which holds this module, also named ptychi) is not on the runner's path
        done = subprocess.run([str(VENV_PYTHON), "-I", str(RUNNER), str(inputs), str(outputs)], capture_output=True,
                              text=True, timeout=timeout_s)
        process_s = time.perf_counter() - start
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"pty-chi runner failed (exit {done.returncode}): {last}")
        with np.load(outputs) as npz:
            out = {key: npz[key] for key in npz.files}
    epochs = int(out["epochs"])
    return PtychiResult(object=out["object"], probe=out["probe"], loss=out["loss"], epochs=epochs,
                        converged=bool(out["converged"]),
                        reconstruction_s=float(out["build_s"] + out["run_s"]), process_s=process_s,
                        versions=json.loads(str(out["versions"])), snapshots=out["snapshots"],
                        snapshot_epochs=out["snapshot_epochs"], snapshot_s=out["snapshot_s"],
                        positions=out["positions"], snapshot_positions=out["snapshot_positions"],
                        options=json.loads(str(out["options"])))
