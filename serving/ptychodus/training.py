"""Train from Ptychodus: ``ptychopinn train`` then ``ptychopinn export --zip``, as subprocesses.

Subprocesses keep torch out of the Ptychodus process (``serving`` never imports it) and let a
training crash surface as a message instead of taking the GUI down. The run is followed while it
runs: the trainer appends a line per finished epoch to ``RUN/progress.jsonl``
(:class:`~ptycho_torch.run_layout.RunLayout`, torch-free), which :func:`train_bundle` polls and yields as Ptychodus
``TrainOutput`` (progress = finished epochs; losses for the plot). Ptychodus checks its Stop button
between yields and then closes the generator: the training process is sent SIGTERM (killed if it
has not exited after :data:`STOP_GRACE_S`), and its checkpoints stay in ``RUN/checkpoints``.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Generator
from importlib.util import find_spec
from pathlib import Path

from ptychodus.api.product import LossValue
from ptychodus.api.reconstruct import TrainOutput

from ptycho_torch.data import RawData
from ptycho_torch.errors import ConfigError, PtychoError
from ptycho_torch.run_layout import RunLayout
from serving.ptychodus.settings import PtychoPINNServeSettings

__all__ = ["TRAIN_FILE", "train_bundle"]

log = logging.getLogger(__name__)

TRAIN_FILE = "train_data.npz"
"""What ``train`` looks for in an input directory (Export Training Data writes this format)."""
TEST_FILE = "test_data.npz"
POLL_S = 0.5
"""How often the run is polled, and so how soon Stop takes effect."""
STOP_GRACE_S = 60.0
"""How long a stopped training may take to write its checkpoint and exit before it is killed."""


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ptychopinn", *args]


def _tail(log_path: Path, lines: int = 5) -> str:
    text = log_path.read_text(errors="replace").strip().splitlines() if log_path.is_file() else []
    return " | ".join(line.strip() for line in text[-lines:]) or "no output"


def _training_files(input_path: Path) -> tuple[Path, Path | None]:
    if input_path.is_file():
        return input_path, None
    train = input_path / TRAIN_FILE
    if not train.is_file():
        raise ConfigError(f"training input must be a scan NPZ or a directory holding {TRAIN_FILE}, got "
                          f"{input_path}; use Export Training Data to write {TRAIN_FILE} there first")
    test = input_path / TEST_FILE
    return train, test if test.is_file() else None


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _EpochReader:
    """The finished epochs in ``progress.jsonl``, as Ptychodus loss values (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.epochs = 0
        self.training_loss: list[LossValue] = []
        self.validation_loss: list[LossValue] = []

    def read(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as stream:
            stream.seek(self.offset)
            chunk = stream.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            epoch = json.loads(line)
            self.epochs = int(epoch["epoch"])
            if epoch["train_loss"] is not None:
                self.training_loss.append(LossValue(epoch=self.epochs, value=float(epoch["train_loss"])))
            if epoch["val_loss"] is not None:
                self.validation_loss.append(LossValue(epoch=self.epochs, value=float(epoch["val_loss"])))
            log.info("epoch %d/%d: training loss %s, validation loss %s (%.0f s)", self.epochs,
                     epoch["max_epochs"], epoch["train_loss"], epoch["val_loss"], epoch["wall_s"])

    def output(self) -> TrainOutput:
        return TrainOutput(training_loss=list(self.training_loss), validation_loss=list(self.validation_loss),
                           progress=self.epochs)


def train_bundle(input_path: Path, output_path: Path, settings: PtychoPINNServeSettings
                 ) -> Generator[TrainOutput, None, Path]:
    """Train on the exported scan(s) at ``input_path`` into ``output_path/run``, then export
    ``output_path/bundle.zip`` (returned). Yields progress every :data:`POLL_S` seconds: finished epochs
    out of ``TrainEpochs`` (``TrainEpochs + 1`` once exported). Raises :class:`PtychoError` with the
    end of ``output_path/train.log`` if training fails."""
    missing = [m for m in ("torch", "lightning") if find_spec(m) is None]
    if missing:
        raise ConfigError(f"training needs {missing} (the `train` extra), got an install without them; run "
                          "`pip install torch==2.13.0 'ptychopinn-serve[train]'`, or train on a GPU node with "
                          "`ptychopinn train` and load the exported bundle with Load Model")
    train, test = _training_files(input_path)
    n = RawData.from_file(train).N
    run = RunLayout(output_path / "run")
    epochs = settings.train_epochs.get_value()
    args = ["train", "--train-data", str(train), "--output-dir", str(run.root), "--n", str(n), "--no-progress-bar",
            "--epochs", str(epochs), "--batch-size", str(settings.train_batch_size.get_value()),
            "--gridsize", str(settings.train_gridsize.get_value())]
    if test is not None:
        args += ["--test-data", str(test)]
    run.root.mkdir(parents=True, exist_ok=True)
    run.progress.unlink(missing_ok=True)  # a previous run's epochs are not this run's
    log_path = output_path / "train.log"
    log.info("training %d epochs on %s; log: %s", epochs, train, log_path)
    with log_path.open("wb") as stream:
        process = subprocess.Popen(_command(*args), stdout=stream, stderr=subprocess.STDOUT)
    epochs_done = _EpochReader(run.progress)
    try:
        while process.poll() is None:
            epochs_done.read()
            yield epochs_done.output()
            time.sleep(POLL_S)
        epochs_done.read()
    finally:
        if process.poll() is None:  # Stop pressed (the generator was closed), or an error in this loop
            _stop(process)
            last = run.last_checkpoint
            kept = (f"checkpoint kept: {last} (continue with `ptychopinn train --resume {last}`)" if last.is_file()
                    else "no checkpoint yet (stopped before the first epoch finished)")
            log.warning("training stopped after %d of %d epochs; %s", epochs_done.epochs, epochs, kept)
    if process.returncode != 0:
        raise PtychoError(f"`ptychopinn train` failed (exit {process.returncode}): {_tail(log_path)}")
    yield epochs_done.output()
    summary = run.read_summary()
    checkpoint = None if summary is None else summary.best_checkpoint or summary.last_checkpoint
    if checkpoint is None:
        raise PtychoError(f"`ptychopinn train` exited without a checkpoint in {run.summary}: {_tail(log_path)}")
    bundle = output_path / "bundle"
    done = subprocess.run(_command("export", "--checkpoint", str(checkpoint), "--out", str(bundle), "--zip"),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise PtychoError(f"`ptychopinn export` failed (exit {done.returncode}): {tail}")
    yield TrainOutput(training_loss=epochs_done.training_loss, validation_loss=epochs_done.validation_loss,
                      progress=epochs + 1)
    return bundle.with_suffix(".zip")
