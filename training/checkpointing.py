"""Checkpoints that lose no work: ``last.ckpt`` at every epoch end (and every N steps), on a stop
signal and at the end of training, each written atomically.

Lightning's ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only when it also saved a
top-k checkpoint (when the monitored loss improved), and its writer (fsspec's transaction) stages the
file in ``$TMPDIR`` and *copies* it into place when that is another filesystem, so a kill during the
copy leaves a truncated checkpoint. :class:`LastCheckpoint` and :class:`AtomicCheckpointIO` replace
those two behaviours; ``best.ckpt`` stays with ``ModelCheckpoint`` (docs/decisions.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file *in its own directory*, fsync it, then ``os.replace``.

    A reader sees the old complete file or the new complete file, never a partial one, wherever
    ``$TMPDIR`` lives. Remote URLs (``s3://...``) keep Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)


def _max_steps_cut_epoch(trainer: L.Trainer) -> bool:
    """True after the batch at which ``max_steps`` ends training part-way through an epoch.

    Saved then, the checkpoint resumes at the next batch of that epoch; saved at the (cut) epoch's
    end, Lightning would resume at the start of the next epoch and skip the rest of this one.
    """
    return (trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps
            and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


class LastCheckpoint(Checkpoint):
    """Keep ``path`` (``last.ckpt``) no older than one epoch, or ``every_n_steps`` optimiser steps.

    Written at the end of every training epoch (after validation, so early-stopping and best-model
    state are included), every ``every_n_steps`` steps when asked, after the step at which
    ``max_steps`` ends training mid-epoch (so a resumed run continues inside that epoch), and when
    Lightning stops the loop on SIGTERM (:class:`~lightning.pytorch.utilities.exceptions.SIGTERMException`,
    raised between two batches, so the weights, optimiser and step counter agree). Other exceptions
    write nothing: their state may be half-way through a step.
    """

    def __init__(self, path: str | Path, *, every_n_steps: int | None = None) -> None:
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self._saved_step = -1

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._saved_step:
            return
        if self.every_n_steps and step % self.every_n_steps == 0 or _max_steps_cut_epoch(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # else --max-steps cut it: saved above
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self._save(trainer)
