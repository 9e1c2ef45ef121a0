"""``ptychopinn train``: train on a scan file and write checkpoints to ``--output-dir``.

Settings come from (lowest to highest precedence) the dataclass defaults, the training file's
``_metadata`` (``nphotons`` only), ``--config`` (YAML or JSON with optional ``model``, ``training``
and ``execution`` sections), and the command-line flags. This module only parses: :func:`run` hands
the configurations to :func:`training.run.train_from_config`. Module level stays light: torch and
lightning are imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ptycho_torch.config import (
    NO_EFFECT,
    ModelConfig,
    PyTorchExecutionConfig,
    TrainingConfig,
    config_from_dict,
    no_effect_settings,
)
from ptycho_torch.config_flags import add_flags, flag_values
from ptycho_torch.errors import ConfigError

logger = logging.getLogger(__name__)

SECTIONS: dict[str, type] = {"model": ModelConfig, "training": TrainingConfig, "execution": PyTorchExecutionConfig}
"""The ``--config`` sections and the dataclass of each; every field gets a flag (:func:`configure`)."""

#: section -> {field: flag name}, for the flags whose names predate the generated ones
RENAMED: dict[str, dict[str, str]] = {
    "model": {"N": "n"},
    "training": {"train_data_file": "train-data", "test_data_file": "test-data", "nepochs": "epochs",
                 "torch_loss_mode": "loss"},
    "execution": {"learning_rate": "lr", "progress_every_s": "progress-every", "logger_backend": "logger",
                  "enable_progress_bar": "progress-bar"},
}


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` arguments: ``--config``, ``--resume``, ``--init-from``, and one flag per field of
    the configuration dataclasses (:func:`ptycho_torch.config_flags.add_flags`; help from the field's
    docstring). Every flag defaults to None: one not given does not override the config file."""
    run = parser.add_argument_group("run")
    run.add_argument("--config", type=Path, help="YAML/JSON file with model/training/execution sections (a run's "
                                                 "config.json repeats it)")
    run.add_argument("--resume", type=Path,
                     help="continue from this checkpoint (e.g. RUN/checkpoints/last.ckpt) at its exact step; "
                          "'auto': from --output-dir's last.ckpt when there is one (requeued batch jobs)")
    run.add_argument("--init-from", type=Path,
                     help="start from this checkpoint's weights (fine-tune a pretrained model, e.g. self-supervised "
                          "on the scan to reconstruct); optimiser and step count start afresh")
    for section, cls in SECTIONS.items():
        add_flags(parser.add_argument_group(section), cls, section=section, rename=RENAMED[section],
                  skip=NO_EFFECT, notes={"output_dir": "required, here or in --config"})


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
    for section in SECTIONS:
        sections[section].update(flag_values(args, section))
    if sections["training"].get("output_dir") is None:
        raise ConfigError("`output_dir` must be given, got nothing; pass --output-dir (or set it in --config)")
    model = config_from_dict(ModelConfig, sections["model"])
    training = config_from_dict(TrainingConfig, {**sections["training"], "model": model})
    execution = config_from_dict(PyTorchExecutionConfig, sections["execution"])
    for message in no_effect_settings(training):
        logger.warning(message)
    return training, execution, {"nphotons": "nphotons" in sections["training"]}


def run(args: argparse.Namespace) -> int:
    """Train (:func:`training.run.train_from_config`); print the run summary."""
    training, execution, explicit = build_configs(args)
    from training.run import train_from_config

    result = train_from_config(training, execution, nphotons_from_scan=not explicit["nphotons"], resume=args.resume,
                               init_from=args.init_from)
    if result.module.global_rank == 0:
        print(json.dumps(result.summary.to_json(), indent=2))
    return 0
