"""The Lightning module: the generator, the probe, and the physics (PINN) or supervised loss.

Checkpoint contract (read by ``export`` and ``workflows``): ``self.generator`` is the generator of
``model_config.architecture`` (:func:`~ptycho_torch.model.build_generator`); the (normalised) probe is
the complex64 buffer ``probe`` ``(P, N, N)`` (with ``probe_trainable``, the learned probe: the buffer is
refreshed from the float32 parameter ``probe_parameter`` ``(P, N, N, 2)`` after every optimiser step, see
:meth:`PtychoPINNModule.optimizer_step`); hyper-parameters are JSON-able primitives only
(:func:`~ptycho_torch.config.to_primitives`: choices as plain strings, paths as str), so
``torch.load(path, weights_only=True)`` reads a checkpoint:

==================  ========================================================================
``model_config``    dict of :class:`~ptycho_torch.config.ModelConfig` fields
``training_config`` dict of :class:`~ptycho_torch.config.TrainingConfig` fields (paths as str,
                    ``model`` omitted: it is ``model_config``)
``execution_config`` dict of :class:`~ptycho_torch.config.PyTorchExecutionConfig` fields
``input_scale``     float, the training scale: the training scan's input normalisation (design.md
                    section 2; ``CheckpointRecord.training_scale``, named as in ``params.cfg``)
``intensity_scale`` float, ``s = sqrt(nphotons) / (N/2)``
``probe_normaliser`` float, the probe was divided by it (as hoidn/PtychoPINN does)
``probe_modes``     int, ``P``
``train_data_sha256`` str, sha256 of the training data file ('' when built from arrays)
``pixel_size_m``    float or None, the training scan's object pixel size in metres (its ``_metadata``)
``distillation``    dict or None, what the distillation's solver run did (``distill_weight`` > 0):
                    ``weight``, ``iterations``, ``seconds``, ``stopped``, ``amplitude_error``, ...
==================  ========================================================================

:func:`ptycho_torch.checkpoint.load_generator` turns a checkpoint back into ``(generator, record, probe)``
(:class:`~ptycho_torch.checkpoint.CheckpointRecord` is these hyper-parameters, typed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from ptycho_torch import physics
from ptycho_torch.choices import LossMode, ModelType, Scheduler, check_table
from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig, config_from_dict, to_primitives
from ptycho_torch.errors import ConfigError
from ptycho_torch.model import build_generator, combine_complex

#: supervised loss weights on amplitude and phase (PtychoPINN's torch supervised mode)
SUPERVISED_WEIGHTS = (2.0, 4.0)
#: ReduceLROnPlateau settings of the TensorFlow reference (hoidn/PtychoPINN)
PLATEAU_FACTOR, PLATEAU_PATIENCE, PLATEAU_MIN_LR = 0.5, 2, 1e-4
"""ReduceLROnPlateau: halve the learning rate after 2 epochs without a better validation loss, down to 1e-4."""
EXPONENTIAL_GAMMA = 0.95
WARMUP_FRACTION = 0.05


class PtychoPINNModule(L.LightningModule):
    """Train the generator through the far-field physics or against ground truth.

    Batches are dicts from :mod:`training.datamodule`: ``diffraction (B, C, N, N)`` raw amplitudes,
    ``scale (B,)`` input normalisation, ``offsets (B, C, 2)`` relative offsets ``[x, y]``, and
    ``amplitude``/``phase (B, C, N, N)`` ground truth in supervised mode (or the solver's object when
    distilling), and optionally ``nphotons (B,)`` (a simulated corpus mixes doses; the Poisson intensity
    scale is then per item). Build one with :meth:`from_configs`; the constructor takes the saved
    hyper-parameters.

    With ``distill_weight`` > 0 the training loss adds ``distill_weight * (nphotons / N**2) * D``
    (:func:`~ptycho_torch.physics.distillation_loss` of the generator's patches against the batch's
    targets), logged as ``distill``; ``val_loss`` stays the physics loss alone, so the best checkpoint is
    the one that fits the held-out data best, with or without distillation.
    """

    probe: Tensor
    """The normalised training probe ``(P, N, N)`` complex64 (a buffer: saved in the checkpoint)."""
    probe_mask: Tensor
    """A disk of radius N/4 ``(N, N)`` (a buffer, not saved) for ``probe_mask``."""
    probe_parameter: torch.nn.Parameter | None
    """With ``probe_trainable``: the learned probe as float32 ``(P, N, N, 2)`` (real, imaginary), which
    Adam, gradient clipping, AMP and DDP all handle as any weight; else None."""

    def __init__(
        self,
        *,
        model_config: dict[str, Any],
        training_config: dict[str, Any],
        execution_config: dict[str, Any],
        input_scale: float,
        intensity_scale: float,
        probe_normaliser: float,
        probe_modes: int,
        train_data_sha256: str = "",
        pixel_size_m: float | None = None,
        distillation: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_config = config_from_dict(ModelConfig, model_config)
        self.training_config = config_from_dict(TrainingConfig, {**training_config, "model": model_config})
        self.execution_config = config_from_dict(PyTorchExecutionConfig, execution_config)
        N = self.model_config.N
        self.generator = build_generator(self.model_config)
        self.register_buffer("probe", torch.zeros(probe_modes, N, N, dtype=torch.complex64))
        self.register_buffer("probe_mask", physics.disk_mask(N), persistent=False)
        self.register_parameter("probe_parameter", torch.nn.Parameter(torch.zeros(probe_modes, N, N, 2))
                                if self.training_config.probe_trainable else None)
        self.intensity_scale = intensity_scale
        self.distill_scale = self.training_config.distill_weight * self.training_config.nphotons / N**2
        """``distill_weight * nphotons / N**2``: the distillation term's factor (0: no distillation)."""
        self.merge = self.model_config.object_big and self.model_config.channels > 1
        self.compute_losses = LOSSES[self.model_config.model_type]

    @classmethod
    def from_configs(
        cls,
        training: TrainingConfig,
        execution: PyTorchExecutionConfig,
        *,
        probe: np.ndarray,
        training_scale: float,
        train_data_sha256: str = "",
        pixel_size_m: float | None = None,
        distillation: dict[str, Any] | None = None,
    ) -> PtychoPINNModule:
        """Build a fresh module: normalise ``probe`` ((N, N) or (P, N, N)) and record the scales
        (``training_scale``, the training scan's input normalisation, under the checkpoint's legacy
        key ``input_scale``, the ``params.cfg`` name) and ``distillation`` (what its solver run did)."""
        check_loss_config(training)
        normalised, normaliser = physics.normalize_probe(torch.as_tensor(probe), training.model.probe_scale)
        module = cls(
            model_config=to_primitives(training.model),
            training_config={k: v for k, v in to_primitives(training).items() if k != "model"},
            execution_config=to_primitives(execution),
            input_scale=float(training_scale),
            intensity_scale=physics.intensity_scale(training.nphotons, training.model.N),
            probe_normaliser=normaliser,
            probe_modes=int(normalised.shape[0]),
            train_data_sha256=train_data_sha256,
            pixel_size_m=pixel_size_m,
            distillation=distillation,
        )
        module.probe.copy_(normalised)
        if module.probe_parameter is not None:
            module.probe_parameter.data.copy_(torch.view_as_real(module.probe))
        return module

    @property
    def training_probe(self) -> Tensor:
        """The probe of the forward model ``(P, N, N)`` complex64: the learned parameter (with
        ``probe_trainable``, differentiable) or the fixed buffer."""
        if self.probe_parameter is None:
            return self.probe
        return torch.view_as_complex(self.probe_parameter)

    def forward(self, diffraction: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """The generator: ``(amplitude, phase)`` patches ``(B, C, N, N)``."""
        return self.generator(diffraction, scale)

    def predicted_intensity(self, amplitude: Tensor, phase: Tensor, offsets: Tensor) -> Tensor:
        """Far-field intensity ``(B, C, N, N)`` of the predicted patches (after the group merge)."""
        obj = combine_complex(amplitude.float(), phase.float())
        if self.merge:
            obj = physics.merge_extract(obj, offsets.float())
        probe = self.training_probe
        probe = probe * self.probe_mask if self.model_config.probe_mask else probe
        return physics.far_field_intensity(physics.illuminate(obj, probe))

    def _losses(self, batch: dict[str, Tensor], *, stage: str = "train") -> dict[str, Tensor]:
        """The losses of one batch; ``stage`` 'train' adds the distillation term to ``loss``."""
        amplitude, phase = self.generator(batch["diffraction"], batch["scale"])
        losses = self.compute_losses(self, batch, amplitude, phase)
        if self.distill_scale > 0 and "amplitude" in batch:
            with torch.autocast(device_type=self.device.type, enabled=False):
                distill = physics.distillation_loss(combine_complex(amplitude.float(), phase.float()),
                                                    combine_complex(batch["amplitude"], batch["phase"]))
            losses["distill"] = distill
            if stage == "train":
                losses["loss"] = losses["loss"] + self.distill_scale * distill
        return losses

    def _supervised_losses(self, batch: dict[str, Tensor], amplitude: Tensor, phase: Tensor) -> dict[str, Tensor]:
        """Weighted MAE of the amplitude and phase patches against the ground truth."""
        w_amp, w_phase = SUPERVISED_WEIGHTS
        amp_err = (amplitude.float() - batch["amplitude"]).abs().mean()
        phase_err = (phase.float() - batch["phase"]).abs().mean()
        return {"loss": w_amp * amp_err + w_phase * phase_err, "amp_mae": amp_err, "phase_mae": phase_err}

    def _physics_losses(self, batch: dict[str, Tensor], amplitude: Tensor, phase: Tensor) -> dict[str, Tensor]:
        """Poisson NLL and amplitude MAE of the predicted far-field intensity against the measured patterns."""
        with torch.autocast(device_type=self.device.type, enabled=False):  # FFT physics in float32
            intensity = self.predicted_intensity(amplitude, phase, batch["offsets"])
            observed = batch["diffraction"].float() * batch["scale"].float().reshape(-1, 1, 1, 1)
            scale: float | Tensor = self.intensity_scale
            if "nphotons" in batch:  # a corpus mixes doses: the Poisson scale is per item
                scale = torch.sqrt(batch["nphotons"].float()).reshape(-1, 1, 1, 1) / (self.model_config.N / 2)
            return physics.diffraction_loss(
                intensity, observed, scale,
                nll_weight=self.training_config.nll_weight, mae_weight=self.training_config.mae_weight,
            )

    def _log_losses(self, stage: str, losses: dict[str, Tensor], batch_size: int) -> None:
        for name, value in losses.items():
            key = f"{stage}_{name}"
            self.log(key, value, prog_bar=name == "loss", batch_size=batch_size,
                     on_step=stage == "train" and name == "loss", on_epoch=True, sync_dist=stage == "val")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self._losses(batch)
        self._log_losses("train", losses, batch["diffraction"].shape[0])
        return losses["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._log_losses("val", self._losses(batch, stage="val"), batch["diffraction"].shape[0])

    def configure_optimizers(self) -> Any:
        """Adam over the generator (``learning_rate``) and, with ``probe_trainable``, the probe
        (``probe_learning_rate``, its own parameter group); the schedule scales both."""
        groups: list[dict[str, Any]] = [{"params": list(self.generator.parameters())}]
        if self.probe_parameter is not None:
            groups.append({"params": [self.probe_parameter], "lr": self.training_config.probe_learning_rate})
        optimizer = torch.optim.Adam(groups, lr=self.execution_config.learning_rate)
        return SCHEDULERS[self.execution_config.scheduler](optimizer, self)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Callable[[], Any] | None = None) -> None:
        """The step, then (``probe_trainable``) the probe rescaled to its starting norm and copied into
        the ``probe`` buffer, so a checkpoint's ``probe`` is always the probe the next step trains with."""
        optimizer.step(closure=optimizer_closure)
        self.project_probe()

    @torch.no_grad()
    def project_probe(self) -> None:
        """Rescale the learned probe to the norm of ``probe`` (the starting norm: every probe written
        there has it) and copy it into ``probe``; nothing without ``probe_trainable``."""
        if self.probe_parameter is None:
            return
        target = torch.linalg.vector_norm(torch.view_as_real(self.probe))
        current = torch.linalg.vector_norm(self.probe_parameter)
        self.probe_parameter.mul_(target / current.clamp_min(torch.finfo(torch.float32).tiny))
        self.probe.copy_(torch.view_as_complex(self.probe_parameter))


LossFunction = Callable[[PtychoPINNModule, dict[str, Tensor], Tensor, Tensor], dict[str, Tensor]]
LOSSES: Mapping[ModelType, LossFunction] = check_table(ModelType, {
    ModelType.PINN: PtychoPINNModule._physics_losses,
    ModelType.SUPERVISED: PtychoPINNModule._supervised_losses,
})
"""``model_type`` -> the loss ``(module, batch, amplitude, phase) -> {"loss": total, parts...}``."""


def _constant(optimizer: torch.optim.Optimizer, module: L.LightningModule) -> Any:
    return optimizer


def _exponential(optimizer: torch.optim.Optimizer, module: L.LightningModule) -> Any:
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=EXPONENTIAL_GAMMA)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def _plateau(optimizer: torch.optim.Optimizer, module: L.LightningModule) -> Any:
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=PLATEAU_FACTOR,
                                                           patience=PLATEAU_PATIENCE, min_lr=PLATEAU_MIN_LR)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}


def _warmup_cosine(optimizer: torch.optim.Optimizer, module: L.LightningModule) -> Any:
    total = max(int(module.trainer.estimated_stepping_batches), 1)
    warmup = max(int(WARMUP_FRACTION * total), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


SCHEDULERS: Mapping[Scheduler, Callable[[torch.optim.Optimizer, L.LightningModule], Any]] = check_table(Scheduler, {
    Scheduler.DEFAULT: _constant,
    Scheduler.EXPONENTIAL: _exponential,
    Scheduler.REDUCE_LR_ON_PLATEAU: _plateau,
    Scheduler.WARMUP_COSINE: _warmup_cosine,
})
"""``scheduler`` -> ``(optimizer, module) ->`` what ``configure_optimizers`` returns."""

LOSS_WEIGHTS: Mapping[LossMode, tuple[str, str]] = check_table(LossMode, {
    LossMode.POISSON: ("nll_weight", "set nll_weight or use torch_loss_mode 'mae'"),
    LossMode.MAE: ("mae_weight", "set mae_weight (e.g. 1) or use torch_loss_mode 'poisson'"),
})
"""``torch_loss_mode`` -> the weight that must be positive for it, and the fix when it is 0."""


def check_loss_config(training: TrainingConfig) -> None:
    """Reject loss settings that cannot train (before any work starts)."""
    if training.model.model_type == ModelType.SUPERVISED:
        for name, value, why in (("probe_trainable", training.probe_trainable, "never uses the probe"),
                                 ("distill_weight", training.distill_weight, "has its own targets")):
            if value:
                raise ConfigError(f"`{name}` needs model_type 'pinn' (the supervised loss {why}), got {value!r}; "
                                  f"use model_type 'pinn' or leave {name} off")
        return
    if training.nll_weight == 0 and training.mae_weight == 0:
        raise ConfigError("`nll_weight` and `mae_weight` must not both be 0, got 0 and 0; set --nll-weight 1")
    weight, fix = LOSS_WEIGHTS[training.torch_loss_mode]
    if getattr(training, weight) == 0:
        raise ConfigError(f"`{weight}` must be > 0 when torch_loss_mode is '{training.torch_loss_mode}', got 0; {fix}")
