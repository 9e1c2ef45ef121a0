"""``progress.jsonl``: one JSON line per finished epoch in the run directory, for programs that watch a run.

A front end that starts ``ptychopinn train`` as a subprocess (Ptychodus' Train button, a scheduler's
dashboard) reads it to show epochs, losses and an ETA without parsing logs or Lightning's CSV (which
is flushed only every 100 steps). Each line: ``epoch`` (1-based, finished), ``max_epochs``,
``global_step``, ``train_loss``, ``val_loss`` (null when not measured) and ``wall_s`` since the start.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import lightning as L

__all__ = ["PROGRESS_FILE", "EpochProgressFile"]

PROGRESS_FILE = "progress.jsonl"


def _scalar(metrics: dict[str, Any], *names: str) -> float | None:
    for name in names:
        value = metrics.get(name)
        if value is not None and value.numel() == 1 and math.isfinite(float(value)):
            return float(value)
    return None


class EpochProgressFile(L.Callback):
    """Appends a line to ``output_dir/progress.jsonl`` at the end of every training epoch (rank 0 only)."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / PROGRESS_FILE

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        line = {
            "epoch": trainer.current_epoch + 1,
            "max_epochs": trainer.max_epochs,
            "global_step": trainer.global_step,
            "train_loss": _scalar(metrics, "train_loss_epoch", "train_loss"),
            "val_loss": _scalar(metrics, "val_loss"),
            "wall_s": round(time.perf_counter() - self._start, 3),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(line) + "\n")
