"""The training lifecycle loses no work: last.ckpt every epoch/N steps, stop signals write a
checkpoint and exit 128+signal, resuming (also mid-epoch) ends on the very weights of an
uninterrupted run, and every way a run ends leaves a checkpoint and summary.json."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

import training.run
import training.trainer
from ptychopinn.cli import main
from tests.training.conftest import N

pytestmark = pytest.mark.slow
PROJECT_ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 2
STEPS_PER_EPOCH = 4  # 32 training positions, batch 8
TOTAL = EPOCHS * STEPS_PER_EPOCH


def _argv(scan_files, run, *extra):
    train, test = scan_files
    return ["train", "--train-data", str(train), "--test-data", str(test), "--output-dir", str(run), "--n", str(N),
            "--n-filters-scale", "1", "--batch-size", "8", "--accelerator", "cpu", "--no-progress-bar", "--seed", "0",
            "--epochs", str(EPOCHS), *extra]


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _assert_same_training_state(a: Path, b: Path) -> None:
    """Same step, bit-identical weights and Adam moments: the same training, not merely as long."""
    ca, cb = _checkpoint(a), _checkpoint(b)
    assert ca["global_step"] == cb["global_step"]
    for name, value in ca["state_dict"].items():
        torch.testing.assert_close(cb["state_dict"][name], value, rtol=0, atol=0, msg=name)
    for key, state in ca["optimizer_states"][0]["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(cb["optimizer_states"][0]["state"][key][name], value, rtol=0, atol=0)


def _with_callbacks(monkeypatch, *callbacks: L.Callback) -> None:
    """Make `ptychopinn train` (in-process) add ``callbacks`` to its Trainer."""
    monkeypatch.setattr(training.run, "train", functools.partial(training.trainer.train, callbacks=list(callbacks)))


@pytest.fixture(scope="module")
def reference(scan_files, tmp_path_factory) -> Path:
    """An uninterrupted run: every interrupted-and-resumed run must end on its weights."""
    run = tmp_path_factory.mktemp("reference")
    assert main(_argv(scan_files, run)) == 0
    return run


class SendSignal(L.Callback):
    """Deliver ``signum`` to this process after optimiser step ``step``."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            signal.raise_signal(self.signum)


class StepOfLastAtEpochStart(L.Callback):
    """Record the step stored in last.ckpt when each epoch starts, and a val_loss that only gets worse."""

    def __init__(self, last: Path) -> None:
        self.last, self.seen = last, []

    def on_train_epoch_start(self, trainer, pl_module):
        self.seen.append(_checkpoint(self.last)["global_step"] if self.last.is_file() else None)

    def on_validation_end(self, trainer, pl_module):  # runs before the checkpoint callbacks
        if not trainer.sanity_checking:
            trainer.callback_metrics["val_loss"] = torch.tensor(float(trainer.current_epoch))


def test_last_checkpoint_every_epoch_although_the_validation_loss_never_improves_then_early_stop(
        scan_files, tmp_path, monkeypatch):
    run = tmp_path / "run"
    recorder = StepOfLastAtEpochStart(run / "checkpoints" / "last.ckpt")  # val_loss 0, 1, 2, ...
    _with_callbacks(monkeypatch, recorder)
    assert main(_argv(scan_files, run, "--epochs", "5", "--early-stop-patience", "1")) == 0
    assert recorder.seen == [None, STEPS_PER_EPOCH]
    assert _checkpoint(run / "checkpoints" / "best.ckpt")["global_step"] == STEPS_PER_EPOCH  # best: epoch 1 only
    assert _checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2 * STEPS_PER_EPOCH
    summary = _summary(run)
    assert summary["status"] == "early_stopped" and summary["global_step"] == 2 * STEPS_PER_EPOCH


class StepOfLastAtBatchStart(L.Callback):
    def __init__(self, last: Path) -> None:
        self.last, self.seen = last, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(_checkpoint(self.last)["global_step"] if self.last.is_file() else None)


def test_every_n_steps_and_max_steps_mid_epoch_with_no_logger_then_resume(scan_files, tmp_path, monkeypatch,
                                                                          reference):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    recorder = StepOfLastAtBatchStart(last)
    _with_callbacks(monkeypatch, recorder)
    extra = ("--checkpoint-every-n-steps", "3", "--logger", "none")
    assert main(_argv(scan_files, run, "--max-steps", "6", *extra)) == 0
    assert recorder.seen == [None, None, None, 3, 4, 4]  # before steps 1..6: saved after step 3, 4 (epoch end)
    summary = _summary(run)
    assert summary["status"] == "max_steps" and summary["global_step"] == 6
    assert _checkpoint(last)["global_step"] == 6 and _checkpoint(last)["GroupedDataModule"]["batches_done"] == 2
    assert not (run / "logs").exists()

    monkeypatch.undo()
    assert main(_argv(scan_files, run, "--resume", str(last), *extra)) == 0
    summary = _summary(run)
    assert summary["status"] == "completed" and summary["global_step"] == TOTAL and summary["steps_this_run"] == 2
    _assert_same_training_state(reference / "checkpoints" / "last.ckpt", last)


@pytest.mark.parametrize(("signum", "step"), [(signal.SIGUSR1, 4), (signal.SIGINT, 6)],
                         ids=["SIGUSR1-last-batch-of-epoch", "SIGINT-mid-epoch"])
def test_a_stop_signal_writes_a_checkpoint_and_resuming_ends_on_the_uninterrupted_weights(
        scan_files, tmp_path, monkeypatch, capsys, reference, signum, step):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    _with_callbacks(monkeypatch, SendSignal(signum, step))
    assert main(_argv(scan_files, run)) == 128 + signum
    err = capsys.readouterr().err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert err == f"ptychopinn train: error: stopped by {name} at step {step} (epoch {(step - 1) // 4 + 1}); " \
                  f"saved {last}; continue with --resume {last}"
    summary = _summary(run)
    assert summary["status"] == "interrupted" and summary["signal"] == name and summary["global_step"] == step
    assert summary["last_checkpoint"] == str(last)
    saved = _checkpoint(last)
    assert saved["global_step"] == step
    assert saved["GroupedDataModule"] == {"epoch": (step - 1) // 4, "batches_done": (step - 1) % 4 + 1}

    monkeypatch.undo()
    assert main(_argv(scan_files, run, "--resume", "auto")) == 0
    summary = _summary(run)
    assert summary["status"] == "completed" and summary["global_step"] == TOTAL
    assert summary["steps_this_run"] == TOTAL - step and summary["train_samples"] == (TOTAL - step) * 8
    _assert_same_training_state(reference / "checkpoints" / "last.ckpt", last)


def test_sigterm_to_a_real_training_process(scan_files, tmp_path, reference):
    """`ptychopinn train --resume auto` in a subprocess (no checkpoint yet: a new run), SIGTERM after
    its progress line for step 3: exit 143, one line, no traceback; the same command again (as a
    requeued job runs it) finishes the run on the uninterrupted run's weights."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "ptychopinn",
               *_argv(scan_files, run, "--progress-every", "0", "--resume", "auto")]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1"}  # threads as the reference run
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lines, deadline = [], time.monotonic() + 240
    try:
        for line in process.stderr:
            lines.append(line)
            if " step 3/8 " in line:
                process.send_signal(signal.SIGTERM)
                break
            assert time.monotonic() < deadline, "".join(lines)
        lines += process.stderr.readlines()
        assert process.wait(timeout=120) == 128 + signal.SIGTERM, "".join(lines)
    finally:
        process.kill()
    log = "".join(lines)
    assert "Traceback" not in log
    progress = [line for line in lines if " step " in line and "samples/s" in line]
    assert re.search(r"training\.progress: epoch 1/2 step 1/8 \(12%\) loss [0-9.e+-]+ [0-9.]+ samples/s "
                     r"ETA \d+:\d\d:\d\d$", progress[0].rstrip()), progress[0]
    stopped_at = _summary(run)["global_step"]
    assert stopped_at >= 3 and _checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == stopped_at
    assert lines[-1].startswith(f"ptychopinn train: error: stopped by SIGTERM at step {stopped_at} ")

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    # a stop on epoch 1's last step pre-empts that epoch's validation: the resumed run then has no best before epoch 2
    best = r"[0-9.e+-]+" if stopped_at % STEPS_PER_EPOCH else r"(?:[0-9.e+-]+|n/a)"
    assert re.search(rf"epoch 2/2 done: train_loss [0-9.e+-]+ val_loss [0-9.e+-]+ \(best {best}\) in [0-9.]+ s",
                     resumed.stderr), resumed.stderr
    assert _summary(run)["steps_this_run"] == TOTAL - stopped_at
    _assert_same_training_state(reference / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")


def test_train_on_a_serving_only_install_names_the_extra(tmp_path):
    code = ("import sys\nfor m in ('torch', 'lightning'): sys.modules[m] = None\n"
            "from ptychopinn.cli import main\n"
            f"sys.exit(main(['train', '--train-data', 'x.npz', '--output-dir', {str(tmp_path)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert result.returncode == 2
    assert result.stderr.strip() == ("ptychopinn train: error: this command needs the 'train' extra "
                                     "(lightning is not installed); pip install torch==2.13.0, then "
                                     "pip install 'ptychopinn-serve[train]'")
