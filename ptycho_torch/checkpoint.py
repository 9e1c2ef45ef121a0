"""The checkpoint record: what a PtychoPINN Lightning checkpoint says about its model, typed.

A checkpoint written by ``ptychopinn train`` holds the generator's weights, the normalised probe
and hyper-parameters that are JSON-able primitives only (``training.module`` writes them)::

    model_config        ModelConfig fields          training_config   TrainingConfig fields (no model)
    execution_config    PyTorchExecutionConfig      input_scale       the training scan's normalisation
    intensity_scale     sqrt(nphotons) / (N/2)      probe_normaliser  the probe was divided by it
    probe_modes         P                           train_data_sha256 sha256 of the training data file
    pixel_size_m        the training scan's object pixel size in metres (None: unknown, or older checkpoints)
    distillation        what the distillation's solver run did (None: no distillation, or older checkpoints)

:class:`CheckpointRecord` is that dictionary as one typed object, with the one
:meth:`~CheckpointRecord.params_snapshot` (the ``params.cfg`` a bundle or ``wts.h5.zip`` stores) and
the one :meth:`~CheckpointRecord.recipe` (the settings a bundle's training record lists);
:func:`load_generator` reads a checkpoint safely (``weights_only=True``, no Lightning needed).
The record is numpy-only; :func:`load_generator` imports torch when called.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptycho_torch import params
from ptycho_torch.config import (
    ModelConfig,
    PyTorchExecutionConfig,
    TrainingConfig,
    config_from_dict,
    recipe_fields,
    to_primitives,
    update_legacy_dict,
)
from ptycho_torch.errors import ConfigError, DataContractError, ModelArchiveError
from ptycho_torch.pixel_size import valid_pixel_size

if TYPE_CHECKING:
    import numpy as np

    from ptycho_torch.model import ObjectGenerator

__all__ = ["CheckpointRecord", "load_generator"]


@dataclass(frozen=True, kw_only=True)
class CheckpointRecord:
    """The facts a checkpoint records besides its weights (see the module docstring)."""

    training: TrainingConfig
    """The training configuration; ``training.model`` is the generator's :class:`ModelConfig`."""
    training_scale: float
    """The input normalisation measured on the training scan (``scale`` under the ``bundle`` policy)."""
    intensity_scale: float
    """``sqrt(nphotons) / (N/2)``: counts per unit of the model's intensity."""
    execution: Mapping[str, Any] = field(default_factory=dict)
    """The :class:`~ptycho_torch.config.PyTorchExecutionConfig` fields the run used."""
    probe_normaliser: float = 1.0
    probe_modes: int = 1
    train_data_sha256: str = ""
    """sha256 of the training data file ('' when the run was built from arrays)."""
    pixel_size_m: float | None = None
    """Object pixel size of the training scan in metres (its ``_metadata``); None when it did not say."""
    distillation: Mapping[str, Any] | None = None
    """``distill_weight`` > 0: ``weight`` and the solver run's ``iterations``, ``seconds``, ``stopped``,
    ``amplitude_error``...; None without distillation."""

    @property
    def model(self) -> ModelConfig:
        return self.training.model

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> CheckpointRecord:
        """The record of a checkpoint's ``hyper_parameters``; :class:`ModelArchiveError` when they are
        not PtychoPINN's (a missing key or an invalid configuration)."""
        try:
            training = config_from_dict(
                TrainingConfig, {**(hparams.get("training_config") or {}), "model": hparams["model_config"]})
            return cls(training=training, training_scale=float(hparams["input_scale"]),
                       intensity_scale=float(hparams["intensity_scale"]),
                       execution=dict(hparams.get("execution_config") or {}),
                       probe_normaliser=float(hparams.get("probe_normaliser", 1.0)),
                       probe_modes=int(hparams.get("probe_modes", 1)),
                       train_data_sha256=str(hparams.get("train_data_sha256") or ""),
                       pixel_size_m=valid_pixel_size(hparams.get("pixel_size_m"), what="`pixel_size_m`"),
                       distillation=_mapping_or_none(hparams.get("distillation"), "distillation"))
        except (KeyError, TypeError, ValueError, ConfigError, DataContractError) as error:
            raise ModelArchiveError(f"checkpoint hyper-parameters must be PtychoPINN's (model_config, "
                                    f"input_scale, intensity_scale...), got {sorted(hparams)} ({error})") from None

    def params_snapshot(self) -> dict[str, Any]:
        """The full ``params.cfg`` of this checkpoint: PtychoPINN's defaults, overwritten by the
        training configuration (legacy key names), plus ``input_scale`` and ``intensity_scale``."""
        cfg = dict(params.DEFAULT_CFG)
        update_legacy_dict(cfg, self.training)
        cfg.update(input_scale=self.training_scale, intensity_scale=self.intensity_scale)
        return cfg

    def recipe(self) -> dict[str, Any]:
        """The settings that made this model: every configuration field marked
        :data:`~ptycho_torch.config.RECIPE`, as ``section.field`` (``model.generator``,
        ``training.nepochs``, ``execution.learning_rate``, ...) -> its plain value; unset (None) ones left out."""
        sections = {"model": (ModelConfig, to_primitives(self.model)),
                    "training": (TrainingConfig, to_primitives(self.training)),
                    "execution": (PyTorchExecutionConfig, self.execution)}
        recipe = {f"{section}.{name}": values.get(name) for section, (cls, values) in sections.items()
                  for name in recipe_fields(cls)}
        return {key: value for key, value in recipe.items() if value is not None}


def _mapping_or_none(value: Any, name: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"`{name}` must be a mapping or None, got {type(value).__name__}")
    return None if value is None else dict(value)


def load_generator(path: str | Path) -> tuple[ObjectGenerator, CheckpointRecord, np.ndarray]:
    """Read a checkpoint safely (``torch.load(weights_only=True)``) into ``(generator, record, probe)``.

    ``generator`` is in eval mode on the CPU; ``probe`` is the normalised training probe, complex64
    ``(P, N, N)`` (the learned one when the run trained it, ``probe_trainable``). Raises
    :class:`ModelArchiveError` when ``path`` is missing or not a PtychoPINN Lightning checkpoint.
    """
    import torch

    from ptycho_torch.model import build_generator

    path = Path(path)
    if not path.is_file():
        raise ModelArchiveError(f"`ckpt_path` must be an existing checkpoint file, got {str(path)!r}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        hparams = dict(checkpoint["hyper_parameters"])
        state = checkpoint["state_dict"]
        record = CheckpointRecord.from_hparams(hparams)
    except Exception as error:  # unreadable file, not a Lightning checkpoint, or foreign hparams
        raise ModelArchiveError(
            f"`ckpt_path` must be a PtychoPINN Lightning checkpoint, got {str(path)!r} "
            f"({str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}); "
            "pass RUN/checkpoints/best.ckpt or last.ckpt written by `ptychopinn train`"
        ) from error
    generator = build_generator(record.model)
    prefix = "generator."
    generator.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return generator.eval(), record, state["probe"].numpy()
