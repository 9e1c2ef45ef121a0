"""Train from Ptychodus: ``ptychopinn train`` then ``ptychopinn export --zip``, as subprocesses.

Subprocesses keep torch out of the Ptychodus process (``serving`` never imports it) and let a
training crash surface as a message instead of taking the GUI down.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

from ptychodus.api.product import LossValue

from ptycho_torch.data import RawData
from ptycho_torch.errors import ConfigError, PtychoError
from serving.ptychodus.settings import PtychoPINNServeSettings

__all__ = ["TRAIN_FILE", "train_bundle"]

log = logging.getLogger(__name__)

TRAIN_FILE = "train_data.npz"
"""What ``train`` looks for in an input directory (Export Training Data writes this format)."""
TEST_FILE = "test_data.npz"


def _ptychopinn(*args: str) -> None:
    command = [sys.executable, "-m", "ptychopinn", *args]
    log.info("running %s", " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise PtychoError(f"`ptychopinn {args[0]}` failed (exit {done.returncode}): {' | '.join(tail)}")


def _training_files(input_path: Path) -> tuple[Path, Path | None]:
    if input_path.is_file():
        return input_path, None
    train = input_path / TRAIN_FILE
    if not train.is_file():
        raise ConfigError(f"training input must be a scan NPZ or a directory holding {TRAIN_FILE}, got "
                          f"{input_path}; use Export Training Data to write {TRAIN_FILE} there first")
    test = input_path / TEST_FILE
    return train, test if test.is_file() else None


def train_bundle(input_path: Path, output_path: Path, settings: PtychoPINNServeSettings
                 ) -> tuple[Path, list[LossValue]]:
    """Train on the exported scan(s) at ``input_path``; returns ``output_path/bundle.zip`` and the final
    training loss (Ptychodus plots ``TrainOutput.training_loss``)."""
    missing = [m for m in ("torch", "lightning") if find_spec(m) is None]
    if missing:
        raise ConfigError(f"training needs {missing} (the `train` extra), got an install without them; run "
                          "`pip install torch==2.13.0 'ptychopinn-serve[train]'`, or train on a GPU node with "
                          "`ptychopinn train` and load the exported bundle with Load Model")
    train, test = _training_files(input_path)
    n = RawData.from_file(train).N
    run = output_path / "run"
    args = ["train", "--train-data", str(train), "--output-dir", str(run), "--n", str(n), "--no-progress-bar",
            "--epochs", str(settings.train_epochs.get_value()),
            "--batch-size", str(settings.train_batch_size.get_value()),
            "--gridsize", str(settings.train_gridsize.get_value())]
    if test is not None:
        args += ["--test-data", str(test)]
    _ptychopinn(*args)
    summary = json.loads((run / "summary.json").read_text())
    checkpoint = summary.get("best_checkpoint") or summary["last_checkpoint"]
    bundle = output_path / "bundle"
    _ptychopinn("export", "--checkpoint", str(checkpoint), "--out", str(bundle), "--zip")
    epochs = int(summary["epochs"])
    metrics = summary.get("final_metrics", {})
    losses = [LossValue(epoch=epochs, value=float(metrics[key])) for key in ("train_loss", "loss") if key in metrics][:1]
    return bundle.with_suffix(".zip"), losses
