"""String choices: one StrEnum per choice, one implementation table per enum, the same accepted values
and messages as before, and configurations that still store (and serialise) plain strings."""

from __future__ import annotations

import dataclasses
import json
import typing
from enum import StrEnum

import pytest

from ptycho_torch.choices import (
    AmpActivation,
    Generator,
    LoggerBackend,
    LossMode,
    ModelType,
    RefineAlgorithm,
    RefineStart,
    ScalePolicy,
    Scheduler,
    Units,
    check_table,
    parse,
    values,
)
from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.errors import ConfigError, DataContractError, InvalidInput
from ptycho_torch.plan import ReconstructOptions
from ptycho_torch.refinement import ALGORITHMS, STARTS, RefineSettings


def test_every_table_implements_every_member_and_answers_plain_strings() -> None:
    from ptycho_torch.model import AMPLITUDE_ACTIVATIONS, HEADS
    from training.module import LOSS_WEIGHTS, LOSSES, SCHEDULERS
    from training.trainer import LOGGERS

    tables = {Generator: HEADS, AmpActivation: AMPLITUDE_ACTIVATIONS, ModelType: LOSSES, Scheduler: SCHEDULERS,
              LossMode: LOSS_WEIGHTS, LoggerBackend: LOGGERS, RefineAlgorithm: ALGORITHMS, RefineStart: STARTS}
    for choice, table in tables.items():
        assert set(table) == set(choice), choice
        for value in values(choice):  # what a config or a request holds
            assert table[value] is table[choice(value)]
    assert HEADS["taper"].taper and not HEADS["taper"].windowed and HEADS["smooth"].blend
    assert ALGORITHMS["er"].full_batch and ALGORITHMS["rpie"].alpha == 0.5


def test_a_table_missing_a_member_fails_at_import() -> None:
    with pytest.raises(TypeError, match=r"the RefineStart table must cover \['network', 'flat'\], got \['network'\]"):
        check_table(RefineStart, {RefineStart.NETWORK: None})


def test_parse_names_the_field_and_the_accepted_values() -> None:
    assert parse(RefineAlgorithm, "algorithm", "rpie", DataContractError) is RefineAlgorithm.RPIE
    with pytest.raises(DataContractError, match=r"^`algorithm` must be one of \['er', 'rpie'\], got 'ePIE'$"):
        parse(RefineAlgorithm, "algorithm", "ePIE", DataContractError)
    assert RefineSettings(algorithm="rpie").algorithm is RefineAlgorithm.RPIE


@pytest.mark.parametrize(("build", "message"), [
    (lambda: ModelConfig(generator="unet"), "generator must be one of ['tf', 'smooth', 'full', 'taper'], got 'unet'"),
    (lambda: ModelConfig(amp_activation="tanh"),
     "amp_activation must be one of ['sigmoid', 'swish', 'silu', 'softplus', 'relu'], got 'tanh'"),
    (lambda: ModelConfig(model_type="gan"), "model_type must be one of ['pinn', 'supervised'], got 'gan'"),
    (lambda: TrainingConfig(torch_loss_mode="l2"), "torch_loss_mode must be one of ['poisson', 'mae'], got 'l2'"),
    (lambda: PyTorchExecutionConfig(scheduler="Cosine"),
     "scheduler must be one of ['Default', 'Exponential', 'ReduceLROnPlateau', 'WarmupCosine'], got 'Cosine'"),
    (lambda: PyTorchExecutionConfig(logger_backend="wandb"),
     "logger_backend must be one of ['csv', 'tensorboard', 'mlflow', 'none'], got 'wandb'"),
])
def test_bad_config_choices_keep_their_messages(build, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        build()
    assert str(error.value) == message


def test_bad_reconstruct_choices_keep_their_messages() -> None:
    with pytest.raises(InvalidInput, match=r"^`refine_algorithm` must be one of \['er', 'rpie'\], got 'dm'$"):
        ReconstructOptions(refine_algorithm="dm")
    with pytest.raises(InvalidInput, match=r"^`refine_start` must be one of \['network', 'flat'\], got 'zero'$"):
        ReconstructOptions(refine_start="zero")
    with pytest.raises(InvalidInput, match=r"^`scale_policy` must be one of \['scan', 'bundle', 'explicit'\], got 'x'$"):
        ReconstructOptions(scale_policy="x")
    assert ReconstructOptions(units="counts", refine_start="flat", refine_iterations=1).units is Units.COUNTS


def test_typed_fields_accept_exactly_the_enum_values() -> None:
    """The Literal annotations (published in the OpenAPI schema and the config docs) list the enum's values."""
    fields = {(ModelConfig, "generator"): Generator, (ModelConfig, "model_type"): ModelType,
              (TrainingConfig, "torch_loss_mode"): LossMode}
    for (cls, name), choice in fields.items():
        assert typing.get_args(typing.get_type_hints(cls)[name]) == values(choice), (cls, name)
    hints = typing.get_type_hints(ReconstructOptions)
    assert hints["refine_algorithm"] is RefineAlgorithm and hints["refine_start"] is RefineStart
    assert hints["scale_policy"] == ScalePolicy | None and hints["units"] == Units | None


def test_configs_store_plain_strings() -> None:
    """Checkpoints keep JSON-able primitives (``torch.load(weights_only=True)`` refuses enum members)."""
    config = ModelConfig(generator="taper", amp_activation="relu")
    assert all(not isinstance(v, StrEnum) for v in dataclasses.asdict(config).values())
    assert json.loads(json.dumps(dataclasses.asdict(config)))["generator"] == "taper"
