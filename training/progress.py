"""``RUN/progress.jsonl``: one JSON line per finished epoch, for programs that watch a run.

A front end that starts ``ptychopinn train`` as a subprocess (Ptychodus' Train button, a scheduler's
dashboard) reads it to show epochs, losses and an ETA without parsing logs or Lightning's CSV (which
is flushed only every 100 steps). Each line: ``epoch`` (1-based, finished), ``max_epochs``,
``global_step``, ``train_loss``, ``val_loss`` (null when not measured) and ``wall_s`` since the start.
:class:`training.report.RunReport` appends the lines (to :attr:`~ptycho_torch.run_layout.RunLayout.progress`),
on the same clock as ``summary.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L

__all__ = ["append_epoch", "scalar"]


def scalar(value: Any) -> float | None:
    """A logged metric (0-d or 1-element tensor, number) as a float; None when absent or not a scalar."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # absent, or a tensor of more than one element
        return None


def append_epoch(path: Path, trainer: L.Trainer, wall_s: float) -> None:
    """Append the line of the epoch ``trainer`` just finished to ``path`` (non-finite losses as null)."""
    metrics = trainer.callback_metrics

    def finite(*names: str) -> float | None:
        values = (scalar(metrics.get(name)) for name in names)
        return next((v for v in values if v is not None and math.isfinite(v)), None)

    line = {
        "epoch": trainer.current_epoch + 1,
        "max_epochs": trainer.max_epochs,
        "global_step": trainer.global_step,
        "train_loss": finite("train_loss_epoch", "train_loss"),
        "val_loss": finite("val_loss"),
        "wall_s": round(wall_s, 3),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(line) + "\n")
