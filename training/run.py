"""Train from the configuration alone: what ``ptychopinn train`` does once its flags are parsed.

:func:`train_from_config` loads the training scan (or opens the simulated corpus) and the test scan
that :class:`~ptycho_torch.config.TrainingConfig` names, fills ``nphotons`` from the training scan's
``_metadata`` when asked, hashes the training data for the checkpoint, resolves ``resume="auto"``
(:func:`auto_resume`) and calls :func:`training.trainer.train`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ptycho_torch.checksums import sha256_file
from ptycho_torch.config import PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.corpus import MANIFEST, Corpus
from ptycho_torch.data import RawData, load_scan
from ptycho_torch.errors import ConfigError
from ptycho_torch.run_layout import RunLayout
from training.trainer import TrainResult, train

__all__ = ["AUTO", "auto_resume", "train_from_config"]

logger = logging.getLogger(__name__)

AUTO = "auto"
"""``resume`` value: continue from the run's ``last.ckpt`` when it has one (requeued batch jobs)."""


def auto_resume(layout: RunLayout) -> Path | None:
    """``layout``'s ``last.ckpt`` when it exists (a run to continue), else None (a new run)."""
    last = layout.last_checkpoint
    if last.is_file():
        logger.info("resuming from %s", last)
        return last
    logger.info("no %s yet: starting a new run", last)
    return None


def _with_scan_nphotons(training: TrainingConfig, scan: RawData) -> TrainingConfig:
    """``training`` with ``nphotons`` from ``scan``'s ``_metadata`` (unchanged when it records none)."""
    if "nphotons" not in scan.metadata:
        return training
    training = dataclasses.replace(training, nphotons=float(scan.metadata["nphotons"]))
    logger.info("nphotons = %g from %s metadata", training.nphotons, training.train_data_file)
    return training


def train_from_config(
    training: TrainingConfig,
    execution: PyTorchExecutionConfig,
    *,
    nphotons_from_scan: bool = False,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train on ``training.train_data_file`` (a contract NPZ or the tike Siemens-star file, at the
    model's N) or ``training.train_corpus``, validating on ``training.test_data_file`` when given.

    ``nphotons_from_scan``: replace ``training.nphotons`` by the training scan's ``_metadata``
    value when it has one (``ptychopinn train`` without ``--nphotons``). ``resume``: a checkpoint, or
    :data:`AUTO`; ``init_from`` as in :func:`~training.trainer.train`. Raises :class:`ConfigError`
    unless exactly one of ``train_data_file`` and ``train_corpus`` is set.
    """
    data_file, corpus_dir, N = training.train_data_file, training.train_corpus, training.model.N
    scan: RawData | None = None
    corpus: Corpus | None = None
    if data_file is not None and corpus_dir is None:
        scan, hashed = load_scan(data_file, n=N), data_file
        training = _with_scan_nphotons(training, scan) if nphotons_from_scan else training
    elif corpus_dir is not None and data_file is None:
        corpus, hashed = Corpus.open(corpus_dir), corpus_dir / MANIFEST
    else:
        raise ConfigError("exactly one of `train_data_file` and `train_corpus` must be given; pass --train-data "
                          "or --train-corpus (or set one in --config)")
    test = None if training.test_data_file is None else load_scan(training.test_data_file, n=N)
    if resume is not None and str(resume) == AUTO:
        resume = auto_resume(RunLayout(training.output_dir))
    return train(training, execution, train_data=scan, corpus=corpus, test_data=test,
                 train_data_sha256=sha256_file(hashed), resume=resume, init_from=init_from)
