"""Build a Lightning ``Trainer`` from :class:`PyTorchExecutionConfig` and run a training job.

A run directory (:class:`~ptycho_torch.run_layout.RunLayout`) holds ``checkpoints/best.ckpt`` (lowest
``val_loss``), ``checkpoints/last.ckpt`` (end of every epoch, every ``checkpoint_every_n_steps`` steps,
on a stop signal, at the end), ``config.json`` (the resolved settings), the logger's files (``logs/``
CSV by default, ``tensorboard/``, ``mlruns/``), ``summary.json`` and ``progress.jsonl`` (a line per
epoch, :mod:`training.progress`), both written by :class:`~training.report.RunReport`.
Every setting is checked when the trainer is built, before data are grouped or a step is taken.
SIGTERM, SIGUSR1 and Ctrl+C stop between two batches with a checkpoint and raise
:class:`~ptycho_torch.errors.TrainingInterrupted`; resuming continues at the exact batch.
Distillation (``distill_weight`` > 0) first refines the training scan with the iterative solver
(:func:`distillation_scan`; a resumed run refines it again, the solver is deterministic); ``refine_probe``
refines its probe only (:func:`refined_probe_scan`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import signal
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ptycho_torch.checkpoint import load_generator
from ptycho_torch.choices import LoggerBackend, check_table
from ptycho_torch.config import PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.corpus import Corpus
from ptycho_torch.data import RawData
from ptycho_torch.errors import ConfigError, DataContractError, TrainingInterrupted
from ptycho_torch.pixel_size import scan_pixel_size
from ptycho_torch.probe_estimate import ProbeEstimate, estimate_probe, with_probe, with_targets
from ptycho_torch.run_layout import RunLayout, RunStatus, RunSummary
from training.checkpointing import AtomicCheckpointIO, LastCheckpoint
from training.datamodule import GroupedDataModule, GroupedDataset, group_scan
from training.interruption import SignalStop
from training.module import PtychoPINNModule, check_loss_config
from training.report import RunReport
from training.streaming import CorpusDataModule

logger = logging.getLogger(__name__)

# GroupedDataModule keeps the position in the epoch in the checkpoint and its sampler resumes there;
# Lightning only looks for a resumable DataLoader and would warn of "unreliable results".
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")

MONITOR = "val_loss"


def _require_module(module: str, backend: str, extra: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(f"`logger` '{backend}' needs the {module} package, which is not installed; "
                          f"pip install 'ptychopinn-serve[{extra}]' or use --logger csv") from error


def _tensorboard_logger(output_dir: Path) -> Logger:
    _require_module("tensorboard", "tensorboard", "train")
    return TensorBoardLogger(save_dir=output_dir, name="tensorboard")


def _mlflow_logger(output_dir: Path) -> Logger:
    _require_module("mlflow", "mlflow", "mlflow")
    return MLFlowLogger(experiment_name="ptychopinn", tracking_uri=(output_dir / "mlruns").resolve().as_uri())


LOGGERS: Mapping[LoggerBackend, Callable[[Path], Logger | bool]] = check_table(LoggerBackend, {
    LoggerBackend.CSV: lambda output_dir: CSVLogger(save_dir=output_dir, name="logs"),
    LoggerBackend.TENSORBOARD: _tensorboard_logger,
    LoggerBackend.MLFLOW: _mlflow_logger,
    LoggerBackend.NONE: lambda output_dir: False,
})
"""``logger_backend`` -> ``(run directory) ->`` the Trainer's ``logger`` argument (False: none)."""


def show_progress_bar(execution: PyTorchExecutionConfig) -> bool:
    """The bar only on an interactive terminal; redirected output (SLURM, files) gets log lines."""
    return execution.enable_progress_bar and sys.stderr.isatty()


def build_trainer(
    execution: PyTorchExecutionConfig, *, output_dir: str | Path, max_epochs: int, callbacks: Sequence[L.Callback] = ()
) -> L.Trainer:
    """A Trainer with ``best.ckpt`` (lowest ``val_loss``) and ``last.ckpt`` in ``output_dir/checkpoints``
    written atomically, the chosen logger, optional early stopping, and every hardware/precision/
    strategy setting of ``execution``.

    Invalid combinations (unknown strategy or precision, a GPU that is not there, ...) raise
    :class:`ConfigError` here, before any training.
    """
    layout = RunLayout(Path(output_dir))
    best = ModelCheckpoint(
        dirpath=layout.best_checkpoint.parent, filename=layout.best_checkpoint.stem, monitor=MONITOR, mode="min",
        save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False,
    )
    last = LastCheckpoint(layout.last_checkpoint, every_n_steps=execution.checkpoint_every_n_steps)
    extra: list[L.Callback] = [best, last, *callbacks]
    if execution.early_stop_patience is not None:
        extra.append(EarlyStopping(monitor=MONITOR, mode="min", patience=execution.early_stop_patience))
    deterministic: bool | Literal["warn"] = execution.deterministic
    if deterministic and execution.accelerator not in ("cpu",) and torch.cuda.is_available():
        deterministic = "warn"  # max-pool/upsample backward have no deterministic CUDA kernels
    try:
        return L.Trainer(
            accelerator=execution.accelerator,
            devices=execution.devices,
            num_nodes=execution.num_nodes,
            strategy=execution.strategy,
            precision=execution.precision,  # type: ignore[arg-type]  # any string: Lightning checks it (ConfigError below)
            deterministic=deterministic,
            max_epochs=max_epochs,
            max_steps=execution.max_steps,
            gradient_clip_val=execution.gradient_clip_val,
            gradient_clip_algorithm=execution.gradient_clip_algorithm,
            accumulate_grad_batches=execution.accumulate_grad_batches,
            enable_progress_bar=show_progress_bar(execution),
            logger=LOGGERS[execution.logger_backend](layout.root),
            callbacks=extra,
            # AtomicCheckpointIO: no partial checkpoint wherever $TMPDIR is. SLURM: SIGUSR1 stops
            # with a checkpoint (training.interruption) instead of Lightning's in-job requeue.
            plugins=[AtomicCheckpointIO(), *([SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect()
                                             else [])],
            use_distributed_sampler=False,  # GroupedDataModule's samplers split the data between ranks
            default_root_dir=layout.root,
            log_every_n_steps=1,
            enable_model_summary=False,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as error:
        raise ConfigError(
            f"the execution settings are invalid (accelerator={execution.accelerator!r}, devices="
            f"{execution.devices!r}, num_nodes={execution.num_nodes}, strategy={execution.strategy!r}, "
            f"precision={execution.precision!r}): {error}"
        ) from error


def write_resolved_config(output_dir: Path, hparams: Any) -> Path:
    """Write ``output_dir/config.json``: the model, training and execution settings the run resolved
    (defaults, ``--config``, flags and data metadata merged; e.g. the neighbour count chosen for C),
    in the sections ``ptychopinn train --config`` reads, so the run can be repeated from it."""
    sections = {"model": dict(hparams["model_config"]), "training": dict(hparams["training_config"]),
                "execution": dict(hparams["execution_config"])}
    path = RunLayout(output_dir).config
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sections, indent=2, sort_keys=True) + "\n")
    return path


def _check_resume(resume: Path, training: TrainingConfig, name: str = "resume") -> None:
    """Refuse a checkpoint that is missing or was trained with a different model (or, to resume, with another
    ``probe_trainable`` or ``refine_probe``: the saved weights would not fit, or the saved probe would win
    over the recorded recipe)."""
    if not resume.is_file():
        raise ConfigError(f"`{name}` must be an existing checkpoint file, got {str(resume)!r}")
    record = load_generator(resume)[1]
    saved, model = record.model, training.model
    for field, flag in (("probe_trainable", "--probe-trainable"), ("refine_probe", "--refine-probe")):
        saved_value, now = getattr(record.training, field), getattr(training, field)
        if name == "resume" and saved_value != now:  # the checkpoint's probe would win, the record would lie
            raise ConfigError(f"`resume` checkpoint was trained with {field}={saved_value}, got {now} now; resume "
                              f"with the same {flag} setting or start a new run (--init-from keeps the generator's "
                              "weights)")
    if saved != model:
        changed = {f.name: (getattr(saved, f.name), getattr(model, f.name)) for f in dataclasses.fields(model)
                   if getattr(saved, f.name) != getattr(model, f.name)}
        raise ConfigError(
            f"`{name}` checkpoint was trained with a different model (checkpoint vs now: {changed}); "
            "use the same --n/--gridsize/--n-filters-scale or start a new run"
        )


def corpus_data(corpus: Corpus, test_data: RawData | None, training: TrainingConfig,
                execution: PyTorchExecutionConfig) -> tuple[CorpusDataModule, np.ndarray, float]:
    """The streaming data module of ``corpus``, its probe, and the median of its scans' input scales."""
    if corpus.N != training.model.N:
        raise DataContractError(f"`N` of the model must equal the corpus' pattern size {corpus.N}, got "
                                f"{training.model.N}; pass --n {corpus.N}")
    val = None
    if test_data is not None:
        val = GroupedDataset(group_scan(test_data, training, seed=execution.seed + 1), with_labels=False)
    assert training.neighbor_count is not None  # resolved by TrainingConfig.__post_init__
    data = CorpusDataModule(corpus, gridsize=training.model.gridsize, neighbor_count=training.neighbor_count,
                            batch_size=training.batch_size, seed=execution.seed, num_workers=execution.num_workers,
                            val=val)
    scale = float(np.median(np.concatenate([np.asarray(shard.open()["scale"]) for shard in corpus.shards])))
    return data, corpus.probe(), scale


@dataclass(frozen=True)
class TrainResult:
    """What a finished run left behind."""

    output_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path
    summary: RunSummary
    module: PtychoPINNModule


def _check_arguments(training: TrainingConfig, train_data: RawData | None, corpus: Corpus | None,
                   resume: str | Path | None, init_from: str | Path | None) -> None:
    """Refuse what cannot train before anything is built: the loss settings, not exactly one data
    source, both ``resume`` and ``init_from``, or a checkpoint of another model."""
    check_loss_config(training)
    if (train_data is None) == (corpus is None):
        raise ConfigError("exactly one of `train_data` and `corpus` must be given; pass --train-data or --train-corpus")
    model = training.model
    if training.probe_trainable and not (model.gridsize > 1 and model.object_big):
        logger.warning("probe_trainable with gridsize %d and object_big=%s: each pattern gets a patch of its own, "
                       "which can absorb any probe error, so the data barely pin the probe; train with "
                       "gridsize >= 2 and object_big (the group's patches share one canvas)", model.gridsize,
                       model.object_big)
    if training.refine_probe and corpus is not None:
        raise ConfigError("`refine_probe` needs a training scan for the solver to refine, got a corpus (simulated "
                          "with its own probe); train on --train-data or leave --refine-probe off")
    if training.distill_weight > 0 and corpus is not None:
        raise ConfigError(f"`distill_weight` needs a training scan for the solver to refine, got "
                          f"{training.distill_weight} with a corpus; train on --train-data or set --distill-weight 0")
    if resume is not None and init_from is not None:
        raise ConfigError("`resume` and `init_from` must not both be given; resume continues a run, "
                          "init_from starts a new one from its weights")
    for name, checkpoint in (("resume", resume), ("init_from", init_from)):
        if checkpoint is not None:
            _check_resume(Path(checkpoint), training, name)


def distillation_scan(scan: RawData, training: TrainingConfig) -> tuple[RawData, dict[str, Any]]:
    """``scan`` prepared for distillation, and the record of what that took.

    The solver refines ``scan`` from a flat object with its probe
    (:func:`~ptycho_torch.probe_estimate.estimate_probe`, ``distill_iterations``); the returned scan has
    the refined probe and, as ``Y``, the refined object cut at each position (the targets the data
    module hands out as ``amplitude``/``phase``). The record is
    :meth:`~ptycho_torch.probe_estimate.ProbeEstimate.summary` plus ``weight`` and the wall ``seconds``.
    """
    start = time.perf_counter()
    iterations = training.distill_iterations
    estimate = estimate_probe(scan, iterations="auto" if iterations == "auto" else int(iterations))
    record = {"weight": training.distill_weight, **estimate.summary(),
              "wall_s": round(time.perf_counter() - start, 2)}
    _log_estimate("distillation", estimate)
    return with_targets(scan, estimate), record


def _log_estimate(purpose: str, estimate: ProbeEstimate) -> None:
    logger.info("%s: the solver refined the training scan in %d iterations (%.1f s, %s); amplitude error %.4g -> "
                "%.4g", purpose, estimate.iterations, estimate.seconds, estimate.stopped, *estimate.amplitude_error)


def refined_probe_scan(scan: RawData) -> RawData:
    """``scan`` with its probe refined by the solver on ``scan`` itself (``refine_probe``; logged); the
    file's probe, with a warning, when the refined one fits the patterns no better."""
    estimate = estimate_probe(scan)
    before, after = estimate.amplitude_error
    if not after < before:
        logger.warning("refine_probe: the refined probe fits the training patterns no better (amplitude error %.4g "
                       "-> %.4g, %s); training with the file's probe", before, after, estimate.stopped)
        return scan
    _log_estimate("refine_probe", estimate)
    return with_probe(scan, estimate.probe)


def _data_and_module(training: TrainingConfig, execution: PyTorchExecutionConfig, *, train_data: RawData | None,
                     test_data: RawData | None, corpus: Corpus | None, train_data_sha256: str,
                     init_from: str | Path | None) -> tuple[L.LightningDataModule, PtychoPINNModule]:
    """The data module (grouped scan or streamed corpus) and a fresh module, with ``init_from``'s
    generator weights when given."""
    data: L.LightningDataModule
    distillation = None
    if corpus is None:
        assert train_data is not None  # exactly one of the two (_check_arguments)
        if training.distill_weight > 0:
            train_data, distillation = distillation_scan(train_data, training)
        elif training.refine_probe:
            train_data = refined_probe_scan(train_data)
        data = GroupedDataModule(train_data, test_data, training, seed=execution.seed,
                                 num_workers=execution.num_workers)
        probe, scale = data.probe, data.training_scale
    else:
        data, probe, scale = corpus_data(corpus, test_data, training, execution)
    pixel_size_m = None if train_data is None else scan_pixel_size(train_data.metadata)
    module = PtychoPINNModule.from_configs(training, execution, probe=probe, training_scale=scale,
                                           train_data_sha256=train_data_sha256, pixel_size_m=pixel_size_m,
                                           distillation=distillation)
    if init_from is not None:
        generator, _, _ = load_generator(init_from)
        module.generator.load_state_dict(generator.state_dict())
    return data, module


def _fit(trainer: L.Trainer, module: PtychoPINNModule, data: L.LightningDataModule, *, resume: str | Path | None,
         report: RunReport, stop: SignalStop) -> None:
    """``trainer.fit``; a run that stops on a signal or fails writes its summary first, then raises
    :class:`TrainingInterrupted` (signal) or the error."""
    last = report.layout.last_checkpoint
    try:
        with warnings.catch_warnings():
            if isinstance(data, GroupedDataModule):  # it resumes at the exact batch; Lightning cannot tell
                warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
            trainer.fit(module, datamodule=data, ckpt_path=None if resume is None else str(resume))
    except SIGTERMException:
        name = stop.stop_signal.name
        report.write(trainer, RunStatus.INTERRUPTED, signal=name)
        raise TrainingInterrupted(
            f"stopped by {name} at step {trainer.global_step} (epoch {trainer.current_epoch + 1}); "
            f"saved {last}; continue with --resume {last}", signum=stop.stop_signal,
        ) from None
    except SystemExit as error:  # Lightning's answer to KeyboardInterrupt (a second Ctrl+C): sys.exit(1)
        report.write(trainer, RunStatus.INTERRUPTED, signal="SIGINT")
        raise TrainingInterrupted(
            f"interrupted by a second Ctrl+C at step {trainer.global_step} without a new checkpoint; "
            f"continue from the previous one with --resume {last}", signum=signal.SIGINT,
        ) from error
    except Exception as error:
        report.write(trainer, RunStatus.FAILED, error=f"{type(error).__name__}: {error}")
        raise


def train(
    training: TrainingConfig,
    execution: PyTorchExecutionConfig,
    *,
    train_data: RawData | None = None,
    test_data: RawData | None = None,
    corpus: Corpus | None = None,
    train_data_sha256: str = "",
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> TrainResult:
    """Train on ``train_data`` or a simulated ``corpus`` (validating on ``test_data``; a corpus
    without it validates on its last shard) into ``training.output_dir``.

    ``resume`` continues a run from a checkpoint (same global step and batch within the epoch,
    optimizer and scheduler state, callbacks); ``training.nepochs`` is the total, not the number of
    further epochs. ``init_from`` starts a new run from a checkpoint's generator weights
    (fine-tuning: e.g. a model pretrained on a simulated corpus, adapted self-supervised to the scan
    it will reconstruct); the optimiser, step count and schedule start afresh. ``summary.json`` is
    written however the run ends. (:func:`training.run.train_from_config` loads the data named in
    ``training`` and calls this.)

    Raises :class:`TrainingInterrupted` (after writing ``last.ckpt``) when SIGTERM, SIGUSR1 or Ctrl+C
    stopped the run, and :class:`ConfigError` for settings that cannot train.
    """
    _check_arguments(training, train_data, corpus, resume, init_from)
    layout = RunLayout(training.output_dir)
    progress_every = None if show_progress_bar(execution) else execution.progress_every_s
    report = RunReport(layout, monitor=MONITOR, progress_every_s=progress_every)
    stop = SignalStop()
    trainer = build_trainer(execution, output_dir=layout.root, max_epochs=training.nepochs,
                            callbacks=[report, stop, *callbacks])
    L.seed_everything(execution.seed, workers=True, verbose=False)
    data, module = _data_and_module(training, execution, train_data=train_data, test_data=test_data, corpus=corpus,
                                    train_data_sha256=train_data_sha256, init_from=init_from)
    report.distillation = module.hparams.get("distillation")
    if trainer.is_global_zero:
        write_resolved_config(layout.root, module.hparams)
    _fit(trainer, module, data, resume=resume, report=report, stop=stop)
    summary = report.write(trainer, RunReport.finished_status(trainer), init_from=init_from)
    return TrainResult(output_dir=layout.root, best_checkpoint=summary.best_checkpoint,
                       last_checkpoint=layout.last_checkpoint, summary=summary, module=module)
