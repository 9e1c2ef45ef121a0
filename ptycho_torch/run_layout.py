"""Where a training run keeps its files: one layout, written by ``training`` and read by everyone else.

A run directory (``ptychopinn train --output-dir RUN``) holds::

    RUN/checkpoints/best.ckpt    lowest validation loss        RUN/summary.json     how the run ended
    RUN/checkpoints/last.ckpt    end of every epoch, on stop   RUN/config.json      the resolved settings
    RUN/wts.h5.zip               PtychoPINN's model archive    RUN/progress.jsonl   one line per epoch

:class:`RunLayout` names those paths (and finds the run a checkpoint belongs to), so no module builds
them by hand. Dependency-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["ARCHIVE_NAME", "RunLayout"]

ARCHIVE_NAME: Final = "wts.h5.zip"
"""PtychoPINN's model archive (:mod:`ptycho_torch.model_manager`), written into the run directory."""


@dataclass(frozen=True)
class RunLayout:
    """The files of the run directory ``root`` (see the module docstring); nothing is created or checked."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def progress(self) -> Path:
        return self.root / "progress.jsonl"

    @property
    def archive(self) -> Path:
        return self.root / ARCHIVE_NAME

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunLayout | None:
        """The run a checkpoint was written by (``RUN/checkpoints/x.ckpt`` -> ``RUN``), or None for a
        checkpoint that is not in a run's ``checkpoints/`` folder (copied elsewhere)."""
        folder = Path(checkpoint).parent
        return cls(folder.parent) if folder.name == "checkpoints" else None

    def model_file(self) -> Path | None:
        """The file a reconstruction loads from this run: ``wts.h5.zip``, else ``best.ckpt``, else
        ``last.ckpt``; None when the run has none of them yet."""
        return next((path for path in (self.archive, self.best_checkpoint, self.last_checkpoint) if path.is_file()),
                    None)
