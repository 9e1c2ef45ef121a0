"""Configuration dataclasses and the bridge to the legacy ``params.cfg`` dictionary.

numpy-free and torch-free: importing this module costs nothing. Every dataclass is frozen and
keyword-only, checks its own fields in ``__post_init__`` and raises :class:`ConfigError` naming the
field, the value and what is allowed. Build a changed copy with :func:`dataclasses.replace`.

A string choice is annotated with its :mod:`ptycho_torch.choices` enum (the one list of its values;
the ``train`` flags read their choices from it) and held as a member: a plain string given by YAML,
JSON, a flag or a Python caller is parsed in ``__post_init__``. Configurations leave as data through
:func:`to_primitives` only (checkpoint hyper-parameters, ``config.json``, ``params.cfg``), which
writes plain strings: ``torch.load(weights_only=True)`` refuses enum members. The fields marked
:data:`RECIPE` make a bundle's recipe (:meth:`ptycho_torch.checkpoint.CheckpointRecord.recipe`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ptycho_torch.choices import (
    AmpActivation,
    Architecture,
    Backend,
    Generator,
    GradientClipAlgorithm,
    LoggerBackend,
    LossMode,
    ModelType,
    Scheduler,
    choice_fields,
    values,
)
from ptycho_torch.errors import ConfigError
from ptycho_torch.grouping import default_neighbor_count

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

RECIPE: Final[Mapping[str, bool]] = {"recipe": True}
"""Field metadata of the settings that make a bundle's recipe: ``field(..., metadata=RECIPE)``."""

CNN_ONLY: Final = frozenset({"generator", "pad_object", "probe_big"})
"""The :class:`ModelConfig` fields that shape the CNN's decoder only: with another ``architecture`` they
must keep their defaults (a ConfigError otherwise, rather than a setting silently without effect)."""

#: dataclass field name -> legacy ``params.cfg`` key (PtychoPINN's KEY_MAPPINGS)
KEY_MAPPINGS: Final[dict[str, str]] = {
    "object_big": "object.big",
    "probe_big": "probe.big",
    "probe_mask": "probe.mask",
    "probe_trainable": "probe.trainable",
    "intensity_scale_trainable": "intensity_scale.trainable",
    "positions_provided": "positions.provided",
    "output_dir": "output_prefix",
    "train_data_file": "train_data_file_path",
    "test_data_file": "test_data_file_path",
}

MAX_DISTILL_ITERATIONS: Final = 1000
"""The most solver iterations distillation may ask for (the star converges in about 60)."""

_LOSS_TERMS = "the loss is the Poisson NLL and the amplitude MAE only: weigh them with nll_weight and mae_weight"

#: legacy PtychoPINN settings that this implementation accepts (and bridges into ``params.cfg``)
#: but never reads: field -> what to use instead. Setting one away from its default warns.
NO_EFFECT: Final[dict[str, str]] = {
    "realspace_weight": _LOSS_TERMS,
    "realspace_mae_weight": _LOSS_TERMS,
    "intensity_scale_trainable": "the Poisson intensity scale is fixed at sqrt(nphotons)/(N/2); set nphotons",
    "positions_provided": "scan positions are always read from the scan",
    "sequential_sampling": "groups are drawn at random with the execution seed; set n_groups or n_subsample",
    "debug": "run `ptychopinn -v` for DEBUG logging",
}


class LegacyKnobWarning(UserWarning):
    """A legacy PtychoPINN setting was given that this implementation accepts but does not use."""


def _require(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {expected}, got {value!r}")


def _parse_choices(config: object) -> None:
    """Check every string-choice field of ``config`` against its enum and store the member (a plain
    string becomes ``Generator.TF``)."""
    cls: type = type(config)
    for name, choice in choice_fields(cls).items():
        value = getattr(config, name)
        _require(value in values(choice), name, value, f"one of {list(values(choice))}")
        object.__setattr__(config, name, choice(value))


def _check_sampling(config: TrainingConfig | InferenceConfig) -> None:
    """Checks shared by training and inference: group sampling, neighbours, backend. An unset
    ``neighbor_count`` becomes :func:`~ptycho_torch.grouping.default_neighbor_count` of the model's C."""
    _require(isinstance(config.model, ModelConfig), "model", config.model, "a ModelConfig")
    if config.neighbor_count is None:
        object.__setattr__(config, "neighbor_count", default_neighbor_count(config.model.channels))
    for name in ("n_groups", "n_subsample"):
        value = getattr(config, name)
        _require(value is None or (isinstance(value, int) and value >= 1), name, value, "None or an integer >= 1")
    _require(
        isinstance(config.neighbor_count, int) and config.neighbor_count >= config.model.channels,
        "neighbor_count", config.neighbor_count, f">= gridsize**2 = {config.model.channels}",
    )


def _is_number(value: Any) -> bool:
    """An int or float that is not a bool (YAML's ``yes`` must not pass as 1)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_power_of_two(value: int) -> bool:
    return isinstance(value, int) and value > 0 and value & (value - 1) == 0


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Network architecture; fixed when a model is built and recorded in every bundle."""

    N: int = field(default=64, metadata=RECIPE)
    """Patch and detector size in pixels; a power of two >= 32."""
    gridsize: int = field(default=1, metadata=RECIPE)
    """Patterns per group along one side; the network sees ``C = gridsize**2`` channels."""
    n_filters_scale: int = field(default=2, metadata=RECIPE)
    """Width multiplier of every convolution."""
    model_type: ModelType = ModelType.PINN
    """``pinn`` (self-supervised through the physics) or ``supervised`` (needs ground truth)."""
    architecture: Architecture = field(default=Architecture.CNN, metadata=RECIPE)
    """Generator family: ``cnn`` (PtychoPINN's CNN), ``fno`` (Fourier neural operator) or ``ffno`` (factorised FNO).

    ``fno`` and ``ffno`` lift the patterns to an N/2 grid, run Fourier blocks (width
    ``32 * n_filters_scale``, N/8 modes per axis) and predict the whole N x N window from one head per
    output; their spectral transforms are fixed DFT matrices, so their ONNX graph has no DFT node and
    runs on every onnxruntime provider. ``generator``, ``pad_object`` and ``probe_big`` shape the CNN's
    decoder only and must keep their defaults with them (:data:`CNN_ONLY`)."""
    generator: Generator = field(default=Generator.TF, metadata=RECIPE)
    """Last decoder stage of the CNN: ``tf`` (TensorFlow parity), ``smooth``, ``full`` or ``taper``.

    ``tf``: TensorFlow parity (the central N/2 window from a sigmoid head,
    zero-padded, plus a separate border branch when ``probe_big``; nearest upsampling); its hard
    window edge prints a square frame into every patch. ``full``: one head for the whole N x N
    window with bilinear upsampling (no frame; ``pad_object``/``probe_big`` do not apply).
    ``taper``: ``full`` with the amplitude multiplied by a smooth window (1 over the central N/2,
    cos^2 roll-off to 0 over N/8): the soft support of ``tf`` without its hard edge.
    ``smooth``: ``tf`` with the centre head and the border branch blended by a cos^2 window over
    the outer N/16 pixels of the N/2 window instead of the hard mask (no seam; same resolution)."""
    amp_activation: AmpActivation = field(default=AmpActivation.SIGMOID, metadata=RECIPE)
    """Amplitude head activation: sigmoid, swish/silu, softplus or relu."""
    object_big: bool = True
    """Merge the C patches of a group on one canvas in training (overlap constraint)."""
    probe_big: bool = True
    """Let the decoder also predict the border outside the central N/2 window."""
    probe_mask: bool = False
    """Multiply the probe by a disk of radius N/4 in the forward model."""
    pad_object: bool = True
    """Predict the central N/2 window and zero-pad to N (2x oversampling)."""
    probe_scale: float = 4.0
    """Probe normalisation constant (as hoidn/PtychoPINN normalises it)."""

    def __post_init__(self) -> None:
        _require(_is_power_of_two(self.N) and self.N >= 32, "N", self.N, "a power of two >= 32")
        _require(isinstance(self.gridsize, int) and self.gridsize >= 1, "gridsize", self.gridsize, "an integer >= 1")
        _require(
            isinstance(self.n_filters_scale, int) and self.n_filters_scale >= 1,
            "n_filters_scale", self.n_filters_scale, "an integer >= 1",
        )
        _parse_choices(self)
        _require(self.probe_scale > 0, "probe_scale", self.probe_scale, "> 0")
        if self.architecture is not Architecture.CNN:
            for f in dataclasses.fields(self):
                if f.name in CNN_ONLY and getattr(self, f.name) != f.default:
                    raise ConfigError(
                        f"{f.name} applies to architecture 'cnn' only, got {f.name}={_primitive(getattr(self, f.name))!r} "
                        f"with architecture {self.architecture.value!r}, whose generator predicts the whole N x N window; "
                        f"leave {f.name} at its default {_primitive(f.default)!r}")

    @property
    def channels(self) -> int:
        """Patterns per group, ``C = gridsize**2``."""
        return self.gridsize * self.gridsize


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """What to train on and the loss; bridged into ``params.cfg``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train_data_file: Path | None = field(default=None, metadata=RECIPE)
    """Training scan: a contract NPZ or the tike Siemens-star file."""
    test_data_file: Path | None = field(default=None, metadata=RECIPE)
    """Validation scan, also reconstructed held out (None: hold out 5% of the training groups)."""
    train_corpus: Path | None = field(default=None, metadata=RECIPE)
    """Simulated corpus folder (``ptychopinn corpus``) streamed instead of a training scan (``--train-data``)."""
    batch_size: int = field(default=16, metadata=RECIPE)
    """Groups per optimisation step; a power of two."""
    nepochs: int = field(default=50, metadata=RECIPE)
    """Total epochs (a resumed run counts those already done)."""
    mae_weight: float = field(default=0.0, metadata=RECIPE)
    """Weight of the diffraction-amplitude MAE loss, in [0, 1]."""
    nll_weight: float = field(default=1.0, metadata=RECIPE)
    """Weight of the Poisson negative log-likelihood loss, in [0, 1]."""
    realspace_mae_weight: float = 0.0
    """PtychoPINN's real-space MAE weight; no effect here (:data:`NO_EFFECT`)."""
    realspace_weight: float = 0.0
    """PtychoPINN's real-space loss weight; no effect here (:data:`NO_EFFECT`)."""
    nphotons: float = field(default=1e9, metadata=RECIPE)
    """Expected photons per pattern; sets the intensity scale of the Poisson model (``ptychopinn train``
    reads it from the training file's ``_metadata`` when it is not given)."""
    n_groups: int | None = None
    """Groups sampled for training (None: one group per scan position, at every gridsize)."""
    n_subsample: int | None = None
    """Scan positions drawn before grouping (None: all)."""
    subsample_seed: int | None = None
    """Seed of the ``n_subsample`` draw (None: a fresh draw every run)."""
    neighbor_count: int | None = None
    """K: nearest neighbours a group's members are drawn from (gridsize > 1; >= C); None: max(4, C)."""
    positions_provided: bool = True
    """PtychoPINN's switch for scans without positions; no effect here (:data:`NO_EFFECT`)."""
    refine_probe: bool = field(default=False, metadata=RECIPE)
    """Refine the training scan's probe with the iterative solver before training, and train with it
    (:func:`~ptycho_torch.probe_estimate.estimate_probe`: flat start, 'auto' stop). The recipe for
    measured data, whose file probe is often not the measurement's (the shipped Siemens star);
    distillation always does it. A training scan only (a corpus is simulated with its probe)."""
    probe_trainable: bool = field(default=False, metadata=RECIPE)
    """Learn the training probe with the generator (``model_type`` 'pinn'); its norm stays the starting one.

    The probe's overall scale trades against the object amplitude the generator's bounded head can
    give, so only its shape is learned: after every optimiser step it is rescaled to the norm it
    started with. The checkpoint's ``probe`` (and so the bundle's ``probe.npy``) is the learned one."""
    probe_learning_rate: float = field(default=1e-3, metadata=RECIPE)
    """Adam learning rate of the probe when ``probe_trainable`` (the generator's is ``learning_rate``)."""
    distill_weight: float = field(default=0.0, metadata=RECIPE)
    """Weight of distillation: pull the patches towards the solver's object of the training scan (0: off).

    When > 0 the training scan is first refined by the iterative solver (flat start, probe refined,
    as :func:`~ptycho_torch.probe_estimate.estimate_probe`); training uses its probe, and the loss adds
    ``distill_weight * (nphotons / N**2) * D`` with ``D`` the gain-invariant distance of the generator's
    patches to patches of the solver's object (:func:`~ptycho_torch.physics.distillation_loss`): weight 1 is
    about as strong as the Poisson NLL of the same relative error. 'pinn' on a training scan only."""
    distill_iterations: int | str = field(default="auto", metadata=RECIPE)
    """Solver iterations of the distillation's refinement: an integer >= 1, or 'auto' (until the fit
    stops improving, at most 300)."""
    intensity_scale_trainable: bool = True
    """PtychoPINN's trainable intensity scale; no effect here (:data:`NO_EFFECT`)."""
    output_dir: Path = Path("training_outputs")
    """Run directory: checkpoints/, logs/, config.json and summary.json."""
    sequential_sampling: bool = False
    """PtychoPINN's sequential group sampling; no effect here (:data:`NO_EFFECT`)."""
    backend: Backend = Backend.PYTORCH
    """Training backend; only ``pytorch``."""
    torch_loss_mode: LossMode = LossMode.POISSON
    """Main loss, whose weight must be positive: ``poisson`` (``nll_weight``) or ``mae`` (``mae_weight``)."""

    def __post_init__(self) -> None:
        _check_sampling(self)
        _require(_is_power_of_two(self.batch_size), "batch_size", self.batch_size, "a power of two")
        _require(isinstance(self.nepochs, int) and self.nepochs >= 1, "nepochs", self.nepochs, "an integer >= 1")
        for name in ("mae_weight", "nll_weight"):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, name, value, "in [0, 1]")
        for name in ("realspace_mae_weight", "realspace_weight"):
            value = getattr(self, name)
            _require(value >= 0.0, name, value, ">= 0")
        _require(
            math.isfinite(self.nphotons) and self.nphotons > 0, "nphotons", self.nphotons, "a positive finite number"
        )
        _require(_is_number(self.probe_learning_rate) and math.isfinite(self.probe_learning_rate)
                 and self.probe_learning_rate > 0, "probe_learning_rate", self.probe_learning_rate,
                 "a positive finite number")
        _require(_is_number(self.distill_weight) and math.isfinite(self.distill_weight) and self.distill_weight >= 0,
                 "distill_weight", self.distill_weight, "a finite number >= 0 (0: no distillation)")
        _require(self.distill_iterations == "auto" or (isinstance(self.distill_iterations, int)
                                                     and not isinstance(self.distill_iterations, bool)
                                                     and 1 <= self.distill_iterations <= MAX_DISTILL_ITERATIONS),
                 "distill_iterations", self.distill_iterations, f"an integer in [1, {MAX_DISTILL_ITERATIONS}] or 'auto'")
        _parse_choices(self)


@dataclass(frozen=True, kw_only=True)
class InferenceConfig:
    """What to reconstruct and with which model; bridged into ``params.cfg``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    model_path: Path | None = None
    """Trained model (``wts.h5.zip`` or checkpoint), recorded in ``params.cfg``."""
    test_data_file: Path | None = None
    """Scan to reconstruct."""
    n_groups: int | None = None
    """Groups to reconstruct (None: one per scan position)."""
    n_subsample: int | None = None
    """Scan positions drawn before grouping (None: all)."""
    subsample_seed: int | None = None
    """Seed of the ``n_subsample`` draw."""
    neighbor_count: int | None = None
    """K: nearest neighbours a group's members are drawn from (gridsize > 1; >= C); None: max(4, C)."""
    debug: bool = False
    """PtychoPINN's debug switch; no effect here (:data:`NO_EFFECT`)."""
    output_dir: Path = Path("inference_outputs")
    """Folder for the reconstruction's files."""
    backend: Backend = Backend.PYTORCH
    """Inference backend; only ``pytorch``."""

    def __post_init__(self) -> None:
        _check_sampling(self)
        _parse_choices(self)


@dataclass(frozen=True, kw_only=True)
class PyTorchExecutionConfig:
    """How to run training (hardware, precision, optimiser, checkpoints); never bridged to params."""

    accelerator: str = "auto"
    """``auto``, ``cpu``, ``gpu``/``cuda`` or ``mps``."""
    devices: int | str = 1
    """Devices per node: a count, ``auto`` or -1 (all)."""
    num_nodes: int = 1
    """Nodes (SLURM: match ``--nodes``)."""
    strategy: str = "auto"
    """Lightning strategy: ``auto``, ``ddp``, ``ddp_spawn``, ``fsdp``..."""
    precision: str = "32-true"
    """Lightning precision: ``32-true``, ``bf16-mixed``, ``16-mixed``..."""
    deterministic: bool = True
    """Deterministic algorithms (on a GPU: a warning where a kernel has none)."""
    seed: int = field(default=42, metadata=RECIPE)
    """Global seed of the weights, the group draw and the shuffling."""
    learning_rate: float = field(default=1e-3, metadata=RECIPE)
    """Adam learning rate."""
    scheduler: Scheduler = field(default=Scheduler.DEFAULT, metadata=RECIPE)
    """Learning-rate schedule (PtychoPINN's names; ``Default``: constant)."""
    gradient_clip_val: float | None = None
    """Clip gradients at this value (None: no clipping)."""
    gradient_clip_algorithm: GradientClipAlgorithm = GradientClipAlgorithm.NORM
    """Clip the gradients' ``norm`` or each ``value``."""
    accumulate_grad_batches: int = 1
    """Accumulate gradients over this many steps."""
    num_workers: int = 0
    """DataLoader worker processes."""
    early_stop_patience: int | None = field(default=None, metadata=RECIPE)
    """Epochs without validation improvement before stopping (None: never stop early)."""
    logger_backend: LoggerBackend = LoggerBackend.CSV
    """Metrics logger: ``csv``, ``tensorboard``, ``mlflow`` or ``none``."""
    enable_progress_bar: bool = True
    """Show a progress bar (on a terminal only; otherwise a progress line every ``--progress-every`` seconds)."""
    max_steps: int = -1
    """Stop after this many optimiser steps (-1: run all epochs)."""
    checkpoint_every_n_steps: int | None = None
    """Also write ``last.ckpt`` every this many optimiser steps (None: at the end of every epoch only)."""
    progress_every_s: float = 30.0
    """Seconds between one-line progress log messages when no progress bar is shown (0: every step)."""

    def __post_init__(self) -> None:
        _require(self.num_nodes >= 1, "num_nodes", self.num_nodes, ">= 1")
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        _parse_choices(self)
        _require(self.gradient_clip_val is None or self.gradient_clip_val > 0, "gradient_clip_val",
                 self.gradient_clip_val, "None or > 0")
        _require(self.accumulate_grad_batches >= 1, "accumulate_grad_batches", self.accumulate_grad_batches, ">= 1")
        _require(self.num_workers >= 0, "num_workers", self.num_workers, ">= 0")
        _require(self.early_stop_patience is None or self.early_stop_patience >= 1, "early_stop_patience",
                 self.early_stop_patience, "None or >= 1")
        _require(self.max_steps == -1 or self.max_steps >= 1, "max_steps", self.max_steps, "-1 (no limit) or >= 1")
        _require(self.checkpoint_every_n_steps is None or self.checkpoint_every_n_steps >= 1,
                 "checkpoint_every_n_steps", self.checkpoint_every_n_steps, "None or >= 1")
        _require(self.progress_every_s >= 0, "progress_every_s", self.progress_every_s, ">= 0")


AnyConfig = TrainingConfig | InferenceConfig | ModelConfig

_C = TypeVar("_C", bound="DataclassInstance")


def config_from_dict(cls: type[_C], values: Mapping[str, Any]) -> _C:
    """Build ``cls`` from a plain mapping (YAML/JSON); unknown keys fail and list the known ones.

    A nested ``model`` mapping becomes a :class:`ModelConfig`; path fields become :class:`Path`.
    """
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known keys are {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name == "model" and isinstance(value, Mapping):
            value = config_from_dict(ModelConfig, value)
        elif name.endswith(("_file", "_dir", "_path", "_corpus")) and value is not None:
            value = Path(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as error:  # wrong type reaching a comparison in __post_init__
        raise ConfigError(f"{cls.__name__}: {error}") from error


def to_primitives(config: Any) -> dict[str, Any]:
    """``{field: value}`` of a configuration dataclass as plain data (JSON, YAML, checkpoint
    hyper-parameters that ``torch.load(weights_only=True)`` reads): a choice as its string, a path as
    str, a nested configuration (``model``) as its own dict. The one way a configuration leaves as data."""
    return {f.name: _primitive(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _primitive(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_primitives(value)
    if isinstance(value, enum.Enum):
        return value.value
    return str(value) if isinstance(value, Path) else value


def recipe_fields(cls: type) -> tuple[str, ...]:
    """The fields of configuration class ``cls`` marked :data:`RECIPE`, in definition order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("recipe"))


def no_effect_settings(config: AnyConfig) -> list[str]:
    """One line for each :data:`NO_EFFECT` field of ``config`` set away from its default: the field,
    its value, that it has no effect, and what to use instead."""
    return [f"`{f.name}` = {getattr(config, f.name)!r} has no effect in this implementation; {NO_EFFECT[f.name]}"
            for f in dataclasses.fields(config) if f.name in NO_EFFECT and getattr(config, f.name) != f.default]


def warn_no_effect(config: AnyConfig, *, stacklevel: int = 2) -> None:
    """:func:`warnings.warn` a :class:`LegacyKnobWarning` for each of :func:`no_effect_settings`;
    ``stacklevel`` as for :func:`warnings.warn`, counted from the caller of this function."""
    for message in no_effect_settings(config):
        warnings.warn(message, LegacyKnobWarning, stacklevel=stacklevel + 1)


def dataclass_to_legacy_dict(config: AnyConfig) -> dict[str, Any]:
    """:func:`to_primitives` of ``config``, flattened (its ``model`` into the top level) and renamed by
    KEY_MAPPINGS."""
    flat: dict[str, Any] = {}
    for name, value in to_primitives(config).items():
        if name == "model" and isinstance(value, dict):
            flat.update(value)
        else:
            flat[name] = value
    return {KEY_MAPPINGS.get(k, k): v for k, v in flat.items()}


def update_legacy_dict(cfg: dict[str, Any], config: AnyConfig) -> None:
    """Write every non-None value of ``config`` into the legacy dict ``cfg`` (None never overwrites);
    warns (:func:`warn_no_effect`) for the settings that are written but have no effect."""
    warn_no_effect(config, stacklevel=2)
    cfg.update({k: v for k, v in dataclass_to_legacy_dict(config).items() if v is not None})
