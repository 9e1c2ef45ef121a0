"""What a training run tells its user: periodic one-line progress in the log, ``progress.jsonl``
(:mod:`training.progress`) and ``summary.json``.

Progress lines are for batch jobs and redirected output, where no progress bar is shown::

    epoch 3/50 step 120/2000 (6%) loss 0.01234 312.4 samples/s ETA 0:04:12
    epoch 3/50 done: train_loss 0.01198 val_loss 0.01502 (best 0.01490) in 9.8 s

``summary.json`` (:class:`~ptycho_torch.run_layout.RunSummary`) is written however the run ends:
``status`` is ``completed``, ``max_steps``, ``early_stopped``, ``interrupted`` (a stop signal;
``signal`` names it) or ``failed`` (``error`` holds the one-line reason), beside the step counts,
throughput and checkpoint paths. The files' paths come from :class:`~ptycho_torch.run_layout.RunLayout`.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping

from ptycho_torch.run_layout import RunLayout, RunStatus, RunSummary
from training.progress import append_epoch, scalar

logger = logging.getLogger("training.progress")


def _eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds))) if math.isfinite(seconds) else "?"


class RunReport(L.Callback):
    """Log progress every ``progress_every_s`` seconds (None: never), append a line per epoch to
    ``layout.progress`` and write ``layout.summary``.

    ``monitor`` is the validation metric reported as ``best_val_loss``; ``layout.last_checkpoint`` is
    the path :class:`~training.checkpointing.LastCheckpoint` writes. The trainer calls :meth:`write`
    once the run has ended, however it ended, and sets :attr:`distillation` once the data are prepared.
    """

    distillation: dict[str, Any] | None = None
    """What the distillation's solver run did (``RunSummary.distillation``); None without distillation."""

    def __init__(self, layout: RunLayout, *, monitor: str, progress_every_s: float | None = None) -> None:
        self.layout = layout
        self.monitor = monitor
        self.progress_every_s = progress_every_s
        self._start = self._last_line = self._epoch_start = time.perf_counter()
        self._start_step = 0
        self._samples = self._last_samples = 0

    # progress ---------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last_line = time.perf_counter()
        self._start_step = trainer.global_step
        self._samples = self._last_samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._samples += int(batch["diffraction"].shape[0]) * trainer.world_size
        now = time.perf_counter()
        if self.progress_every_s is None or now - self._last_line < self.progress_every_s:
            return
        if trainer.is_global_zero:
            total = trainer.estimated_stepping_batches
            done = trainer.global_step - self._start_step
            rate = done / (now - self._start) if now > self._start else 0.0
            eta = (total - trainer.global_step) / rate if rate > 0 else math.inf
            window = now - self._last_line
            loss = scalar(outputs.get("loss")) if isinstance(outputs, dict) else scalar(outputs)
            logger.info(
                "epoch %d/%d step %d/%s (%s) loss %s %.1f samples/s ETA %s",
                trainer.current_epoch + 1, trainer.max_epochs, trainer.global_step,
                total if math.isfinite(total) else "?",
                f"{100 * trainer.global_step / total:.0f}%" if math.isfinite(total) and total else "?",
                "?" if loss is None else f"{loss:.5g}",
                (self._samples - self._last_samples) / window if window > 0 else 0.0, _eta(eta),
            )
        self._last_line, self._last_samples = now, self._samples

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not trainer.sanity_checking:
            append_epoch(self.layout.progress, trainer, time.perf_counter() - self._start)
        if self.progress_every_s is None:
            return
        metrics = trainer.callback_metrics
        best = scalar(getattr(trainer.checkpoint_callback, "best_model_score", None))
        val = scalar(metrics.get(self.monitor))
        logger.info(
            "epoch %d/%d done: train_loss %s %s %s (best %s) in %.1f s", trainer.current_epoch + 1,
            trainer.max_epochs, _format(scalar(metrics.get("train_loss_epoch"))), self.monitor, _format(val),
            _format(best), time.perf_counter() - self._epoch_start,
        )

    # summary ----------------------------------------------------------------------------------------
    @staticmethod
    def finished_status(trainer: L.Trainer) -> RunStatus:
        """``early_stopped``, ``max_steps`` or ``completed``: why a run that returned normally ended."""
        if any(isinstance(c, EarlyStopping) and c.stopped_epoch > 0 for c in trainer.early_stopping_callbacks):
            return RunStatus.EARLY_STOPPED
        if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
            return RunStatus.MAX_STEPS
        return RunStatus.COMPLETED

    def write(self, trainer: L.Trainer, status: RunStatus, *, signal: str | None = None, error: str | None = None,
              init_from: str | Path | None = None) -> RunSummary:
        """Write ``summary.json`` (rank 0) and log its one-line digest; returns the summary.

        Called once the run has ended and its last checkpoint is on disk; ``signal`` (interrupted),
        ``error`` (failed) and ``init_from`` (finished) as in :class:`RunSummary`.
        """
        wall = time.perf_counter() - self._start
        checkpoint = trainer.checkpoint_callback
        last = self.layout.last_checkpoint
        summary = RunSummary(
            status=status, signal=signal, error=error, init_from=None if init_from is None else Path(init_from),
            epochs=trainer.current_epoch,
            global_step=trainer.global_step, steps_this_run=trainer.global_step - self._start_step,
            train_samples=self._samples, wall_s=round(wall, 3),
            samples_per_s=round(self._samples / wall, 2) if wall > 0 else None, world_size=trainer.world_size,
            accelerator=type(trainer.accelerator).__name__,
            best_val_loss=scalar(getattr(checkpoint, "best_model_score", None)),
            best_checkpoint=Path(best) if (best := getattr(checkpoint, "best_model_path", "")) else None,
            last_checkpoint=last if last.is_file() else None,
            final_metrics={k: v for k, v in ((k, scalar(v)) for k, v in trainer.callback_metrics.items())
                           if v is not None},
            distillation=self.distillation,
        )
        if trainer.is_global_zero:
            summary.write(self.layout.summary)
            logger.info(
                "training %s: %d epochs, %d steps, %d samples in %.1f s (%.1f samples/s); best %s = %s; "
                "checkpoints in %s", status, summary.epochs, summary.global_step, summary.train_samples, wall,
                summary.samples_per_s or 0.0, self.monitor, _format(summary.best_val_loss), last.parent,
            )
        return summary


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.5g}"
