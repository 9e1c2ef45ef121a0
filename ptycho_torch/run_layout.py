"""Where a training run keeps its files: one layout, written by ``training`` and read by everyone else.

A run directory (``ptychopinn train --output-dir RUN``) holds::

    RUN/checkpoints/best.ckpt    lowest validation loss        RUN/summary.json     how the run ended
    RUN/checkpoints/last.ckpt    end of every epoch, on stop   RUN/config.json      the resolved settings
    RUN/wts.h5.zip               PtychoPINN's model archive    RUN/progress.jsonl   one line per epoch

:class:`RunLayout` names those paths (and finds the run a checkpoint belongs to), so no module builds
them by hand; :class:`RunSummary` is ``summary.json``, typed (written by ``training.report``, read by
``export``, ``bench`` and users' scripts). Standard library and :mod:`ptycho_torch.errors` only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from ptycho_torch.errors import ModelArchiveError

__all__ = ["ARCHIVE_NAME", "RunLayout", "RunStatus", "RunSummary"]

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

    def read_summary(self) -> RunSummary | None:
        """The run's :class:`RunSummary`, or None while it has none (running, or killed before writing
        it); :class:`ModelArchiveError` when ``summary.json`` is not a run summary."""
        return RunSummary.read(self.summary) if self.summary.is_file() else None


class RunStatus(StrEnum):
    """How a training run ended (``summary.json`` ``status``)."""

    COMPLETED = "completed"
    MAX_STEPS = "max_steps"
    EARLY_STOPPED = "early_stopped"
    INTERRUPTED = "interrupted"
    """A stop signal (SIGTERM, SIGUSR1, Ctrl+C) ended it after writing ``last.ckpt``."""
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        """The run returned normally (completed, max_steps or early_stopped)."""
        return self not in (RunStatus.INTERRUPTED, RunStatus.FAILED)


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """``RUN/summary.json``: how a training run ended, written however it ended.

    ``signal`` names the stop signal of an ``interrupted`` run, ``error`` the one-line reason of a
    ``failed`` one; ``init_from`` is recorded for a finished run (the checkpoint it was fine-tuned from,
    None for a fresh start); ``distillation`` (only when the run distilled) what its solver run did. ``epochs``/``global_step`` count the whole run, resumed parts included;
    ``steps_this_run``, ``train_samples``, ``wall_s`` (seconds) and ``samples_per_s`` this process only.
    """

    status: RunStatus
    epochs: int
    global_step: int
    steps_this_run: int
    train_samples: int
    wall_s: float
    samples_per_s: float | None
    world_size: int
    accelerator: str
    """The Lightning accelerator's class name, e.g. ``CPUAccelerator``."""
    best_val_loss: float | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    final_metrics: Mapping[str, float] = field(default_factory=dict)
    """The last logged value of every scalar metric (``val_loss``, ``train_loss_epoch``, ...)."""
    signal: str | None = None
    error: str | None = None
    init_from: Path | None = None
    distillation: Mapping[str, Any] | None = None
    """``weight``, solver ``iterations``, ``seconds``, ``stopped``, ``amplitude_error``... (None: no distillation)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", RunStatus(self.status))
        for name in ("best_checkpoint", "last_checkpoint", "init_from"):
            object.__setattr__(self, name, _path(getattr(self, name)))

    def to_json(self) -> dict[str, Any]:
        """The ``summary.json`` object: ``status``, then ``signal``/``error`` when set and ``init_from``
        for a finished run, then the counts, paths (as str) and metrics, then ``distillation`` when set."""
        details = {"signal": self.signal, "error": self.error}
        head: dict[str, Any] = {"status": self.status.value, **{k: v for k, v in details.items() if v is not None}}
        if self.status.finished:
            head["init_from"] = _text(self.init_from)
        return {**head, "epochs": self.epochs, "global_step": self.global_step,
                "steps_this_run": self.steps_this_run, "train_samples": self.train_samples, "wall_s": self.wall_s,
                "samples_per_s": self.samples_per_s, "world_size": self.world_size, "accelerator": self.accelerator,
                "best_val_loss": self.best_val_loss, "best_checkpoint": _text(self.best_checkpoint),
                "last_checkpoint": _text(self.last_checkpoint), "final_metrics": dict(self.final_metrics),
                **({} if self.distillation is None else {"distillation": dict(self.distillation)})}

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> RunSummary:
        """The summary of a ``summary.json`` object; :class:`ModelArchiveError` when it is not one."""
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:  # a missing or unknown key, an unknown status
            raise ModelArchiveError(f"a run summary must hold the keys of summary.json, got {sorted(values)} "
                                    f"({error}); pass the summary.json that `ptychopinn train` wrote") from None

    @classmethod
    def read(cls, path: Path) -> RunSummary:
        """The summary in ``path``; :class:`ModelArchiveError` naming the file when it is not one."""
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ModelArchiveError(f"{path} must be a readable summary.json written by `ptychopinn train` "
                                    f"({error})") from None
        if not isinstance(values, dict):
            raise ModelArchiveError(f"{path} must hold a JSON object, got {type(values).__name__}; pass the "
                                    "summary.json that `ptychopinn train` wrote")
        return cls.from_json(values)

    def write(self, path: Path) -> None:
        """Write :meth:`to_json` to ``path`` (indented JSON), creating its folder."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2))


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)
