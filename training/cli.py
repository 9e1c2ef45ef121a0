"""``ptychopinn train``: train on a scan file and write checkpoints to ``--output-dir``.

Settings come from (lowest to highest precedence) the dataclass defaults, the training file's
``_metadata`` (``nphotons`` only), ``--config`` (YAML or JSON with optional ``model``, ``training``
and ``execution`` sections), and the command-line flags. Module level stays light: torch and
lightning are imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ptycho_torch.config import (GENERATORS, LOGGERS, SCHEDULERS, ModelConfig, PyTorchExecutionConfig, TrainingConfig,
                                 config_from_dict, no_effect_settings)
from ptycho_torch.errors import ConfigError

logger = logging.getLogger(__name__)

#: flag destination -> (section, dataclass field)
FLAG_FIELDS: dict[str, tuple[str, str]] = {
    "n": ("model", "N"),
    "gridsize": ("model", "gridsize"),
    "n_filters_scale": ("model", "n_filters_scale"),
    "model_type": ("model", "model_type"),
    "amp_activation": ("model", "amp_activation"),
    "generator": ("model", "generator"),
    "train_data": ("training", "train_data_file"),
    "train_corpus": ("training", "train_corpus"),
    "test_data": ("training", "test_data_file"),
    "output_dir": ("training", "output_dir"),
    "epochs": ("training", "nepochs"),
    "batch_size": ("training", "batch_size"),
    "nphotons": ("training", "nphotons"),
    "n_groups": ("training", "n_groups"),
    "neighbor_count": ("training", "neighbor_count"),
    "nll_weight": ("training", "nll_weight"),
    "mae_weight": ("training", "mae_weight"),
    "loss": ("training", "torch_loss_mode"),
    "lr": ("execution", "learning_rate"),
    "scheduler": ("execution", "scheduler"),
    "devices": ("execution", "devices"),
    "num_nodes": ("execution", "num_nodes"),
    "strategy": ("execution", "strategy"),
    "accelerator": ("execution", "accelerator"),
    "precision": ("execution", "precision"),
    "max_steps": ("execution", "max_steps"),
    "checkpoint_every_n_steps": ("execution", "checkpoint_every_n_steps"),
    "progress_every": ("execution", "progress_every_s"),
    "logger": ("execution", "logger_backend"),
    "seed": ("execution", "seed"),
    "early_stop_patience": ("execution", "early_stop_patience"),
    "gradient_clip_val": ("execution", "gradient_clip_val"),
    "accumulate_grad_batches": ("execution", "accumulate_grad_batches"),
    "num_workers": ("execution", "num_workers"),
}


def _devices(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` arguments (every default None: unset flags do not override the config file)."""
    data = parser.add_argument_group("data")
    data.add_argument("--train-data", type=Path, help="training scan: contract NPZ or the tike Siemens-star file")
    data.add_argument("--train-corpus", type=Path,
                      help="simulated corpus folder (`ptychopinn corpus`), streamed shard by shard, instead of "
                           "--train-data")
    data.add_argument("--test-data", type=Path, help="validation scan (default: hold out 5%% of the training groups)")
    data.add_argument("--output-dir", type=Path, help="run directory (checkpoints/, logs/, summary.json)")
    data.add_argument("--config", type=Path, help="YAML/JSON file with model/training/execution sections")
    model = parser.add_argument_group("model")
    model.add_argument("--n", type=int, help="patch size N (default 64; must match the data)")
    model.add_argument("--gridsize", type=int, help="patterns per group side, C = gridsize**2 (default 1)")
    model.add_argument("--n-filters-scale", type=int, help="width multiplier (default 2)")
    model.add_argument("--model-type", choices=["pinn", "supervised"], help="default pinn")
    model.add_argument("--amp-activation", help="sigmoid (default), swish, softplus or relu")
    model.add_argument("--generator", choices=list(GENERATORS),
                       help="last decoder stage: full (one head for the N x N window) or tf (TensorFlow parity)")
    loss = parser.add_argument_group("training")
    loss.add_argument("--epochs", type=int, help="total epochs (default 50)")
    loss.add_argument("--batch-size", type=int, help="groups per step, a power of two (default 16)")
    loss.add_argument("--nphotons", type=float, help="photons per pattern (default: the file's metadata, else 1e9)")
    loss.add_argument("--n-groups", type=int, help="groups to sample (default: one per scan position)")
    loss.add_argument("--neighbor-count", type=int,
                      help="K: nearest neighbours a group's C members are drawn from at gridsize > 1 "
                           "(default max(4, C); must be >= C = gridsize**2)")
    loss.add_argument("--nll-weight", type=float, help="Poisson NLL weight (default 1)")
    loss.add_argument("--mae-weight", type=float, help="amplitude MAE weight (default 0)")
    loss.add_argument("--loss", choices=["poisson", "mae"], help="main loss (default poisson)")
    loss.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    loss.add_argument("--scheduler", choices=list(SCHEDULERS), help="learning-rate schedule (default constant)")
    loss.add_argument("--early-stop-patience", type=int, help="epochs without val improvement before stopping")
    loss.add_argument("--gradient-clip-val", type=float, help="clip gradients to this norm")
    loss.add_argument("--accumulate-grad-batches", type=int, help="accumulate gradients over this many steps")
    loss.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    loss.add_argument("--seed", type=int, help="global seed (default 42)")
    loss.add_argument("--resume", type=Path,
                      help="continue from this checkpoint (e.g. RUN/checkpoints/last.ckpt) at its exact step; "
                           "'auto': from --output-dir's last.ckpt when there is one (requeued batch jobs)")
    loss.add_argument("--checkpoint-every-n-steps", type=int,
                      help="also write last.ckpt every N optimiser steps (default: end of every epoch only)")
    loss.add_argument("--init-from", type=Path,
                      help="start from this checkpoint's weights (fine-tune a pretrained model, e.g. self-supervised "
                           "on the scan to reconstruct); optimiser and step count start afresh")
    hw = parser.add_argument_group("hardware")
    hw.add_argument("--accelerator", help="auto (default), cpu, gpu, mps")
    hw.add_argument("--devices", type=_devices, help="devices per node: a count, 'auto' or -1 (all)")
    hw.add_argument("--num-nodes", type=int, help="nodes (SLURM: match --nodes)")
    hw.add_argument("--strategy", help="auto (default), ddp, ddp_spawn, fsdp, ...")
    hw.add_argument("--precision", help="32-true (default), bf16-mixed, 16-mixed, ...")
    hw.add_argument("--num-workers", type=int, help="DataLoader worker processes (default 0)")
    hw.add_argument("--logger", choices=list(LOGGERS), help="csv (default), tensorboard, mlflow or none")
    hw.add_argument("--no-progress-bar", action="store_true",
                    help="log one-line progress instead of a bar (automatic when stderr is not a terminal)")
    hw.add_argument("--progress-every", type=float, metavar="SECONDS",
                    help="seconds between progress log lines without a bar (default 30; 0: every step)")


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"`config` must be an existing YAML or JSON file, got {str(path)!r}")
    text = path.read_text()
    import yaml

    try:
        values = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text) or {}
    except (ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"`config` must be valid YAML/JSON, got {str(path)!r}: {error}") from error
    if not isinstance(values, dict) or set(values) - {"model", "training", "execution"}:
        found = sorted(values) if isinstance(values, dict) else type(values).__name__
        raise ConfigError(
            f"`config` must be a mapping with sections model, training and/or execution, got {found}"
        )
    return values


def build_configs(args: argparse.Namespace) -> tuple[TrainingConfig, PyTorchExecutionConfig, dict[str, bool]]:
    """Merge defaults, ``--config`` and flags into (training, execution) configs.

    The third value says which training fields were set explicitly (so file metadata may fill
    the rest, e.g. ``nphotons``).
    """
    sections: dict[str, dict[str, Any]] = {"model": {}, "training": {}, "execution": {}}
    if args.config is not None:
        for name, values in _read_config_file(args.config).items():
            if not isinstance(values, dict):
                raise ConfigError(f"`config` section {name!r} must be a mapping, got {type(values).__name__}")
            sections[name].update(values)
    for dest, (section, field) in FLAG_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            sections[section][field] = value
    if args.no_progress_bar:
        sections["execution"]["enable_progress_bar"] = False
    if (sections["training"].get("train_data_file") is None) == (sections["training"].get("train_corpus") is None):
        raise ConfigError("exactly one of `train_data_file` and `train_corpus` must be given; pass --train-data "
                          "or --train-corpus (or set one in --config)")
    if sections["training"].get("output_dir") is None:
        raise ConfigError("`output_dir` must be given, got nothing; pass --output-dir (or set it in --config)")
    model = config_from_dict(ModelConfig, sections["model"])
    training = config_from_dict(TrainingConfig, {**sections["training"], "model": model})
    execution = config_from_dict(PyTorchExecutionConfig, sections["execution"])
    for message in no_effect_settings(training):
        logger.warning(message)
    return training, execution, {"nphotons": "nphotons" in sections["training"]}


def _resume_path(resume: Path | None, output_dir: Path) -> Path | None:
    """``--resume``: a checkpoint path, or ``auto`` for ``output_dir``'s last.ckpt when it exists."""
    if resume is None or str(resume) != "auto":
        return resume
    from training.trainer import last_checkpoint_path

    last = last_checkpoint_path(output_dir)
    if last.is_file():
        logger.info("resuming from %s", last)
        return last
    logger.info("no %s yet: starting a new run", last)
    return None


def run(args: argparse.Namespace) -> int:
    """Train; print where the checkpoints are and the run summary."""
    training, execution, explicit = build_configs(args)
    from ptycho_torch.checksums import sha256_file
    from training.trainer import train

    from ptycho_torch.data import load_scan  # contract NPZ at N, or the tike Siemens-star file cropped to N

    N = training.model.N
    test_raw = None if training.test_data_file is None else load_scan(training.test_data_file, n=N)
    if training.train_corpus is not None:
        from ptycho_torch.corpus import MANIFEST, Corpus

        sources = {"corpus": Corpus.open(training.train_corpus)}
        sha256 = sha256_file(training.train_corpus / MANIFEST)
    else:
        train_raw = load_scan(training.train_data_file, n=N)
        if not explicit["nphotons"] and "nphotons" in train_raw.metadata:
            training = dataclasses.replace(training, nphotons=float(train_raw.metadata["nphotons"]))
            logger.info("nphotons = %g from %s metadata", training.nphotons, training.train_data_file)
        sources = {"train_data": train_raw}
        sha256 = sha256_file(training.train_data_file)
    result = train(training, execution, **sources, test_data=test_raw, train_data_sha256=sha256,
                   resume=_resume_path(args.resume, training.output_dir), init_from=args.init_from)
    if result.module.global_rank == 0:
        print(json.dumps(result.summary, indent=2))
    return 0
