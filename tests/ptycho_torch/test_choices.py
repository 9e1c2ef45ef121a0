"""String choices: one StrEnum per choice, one implementation table per enum, the same accepted values
and messages as before; configurations annotate and hold the members and leave as plain strings."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from ptycho_torch.choices import (
    AmpActivation,
    Architecture,
    Backend,
    Generator,
    GradientClipAlgorithm,
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
from ptycho_torch.config import InferenceConfig, ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.errors import ConfigError, DataContractError, InvalidInput
from ptycho_torch.plan import ReconstructOptions
from ptycho_torch.refinement import ALGORITHMS, STARTS, RefineSettings


def test_every_table_implements_every_member_and_answers_plain_strings() -> None:
    from ptycho_torch.model import AMPLITUDE_ACTIVATIONS, GENERATORS, HEADS
    from training.module import LOSS_WEIGHTS, LOSSES, SCHEDULERS
    from training.trainer import LOGGERS

    tables = {Architecture: GENERATORS, Generator: HEADS, AmpActivation: AMPLITUDE_ACTIVATIONS, ModelType: LOSSES,
              Scheduler: SCHEDULERS, LossMode: LOSS_WEIGHTS, LoggerBackend: LOGGERS, RefineAlgorithm: ALGORITHMS,
              RefineStart: STARTS}
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
    with pytest.raises(DataContractError, match=r"^`algorithm` must be one of \['er', 'rpie', 'mpie'\], got 'ePIE'$"):
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
    with pytest.raises(InvalidInput, match=r"^`refine_algorithm` must be one of \['er', 'rpie', 'mpie'\], got 'dm'$"):
        ReconstructOptions(refine_algorithm="dm")
    with pytest.raises(InvalidInput, match=r"^`refine_start` must be one of \['network', 'flat'\], got 'zero'$"):
        ReconstructOptions(refine_start="zero")
    with pytest.raises(InvalidInput, match=r"^`scale_policy` must be one of \['scan', 'bundle', 'explicit'\], got 'x'$"):
        ReconstructOptions(scale_policy="x")
    assert ReconstructOptions(units="counts", refine_start="flat", refine_iterations=1).units is Units.COUNTS


CONFIG_CHOICES = {(ModelConfig, "generator"): Generator, (ModelConfig, "amp_activation"): AmpActivation,
                  (ModelConfig, "model_type"): ModelType, (TrainingConfig, "torch_loss_mode"): LossMode,
                  (PyTorchExecutionConfig, "scheduler"): Scheduler,
                  (PyTorchExecutionConfig, "logger_backend"): LoggerBackend,
                  (PyTorchExecutionConfig, "gradient_clip_algorithm"): GradientClipAlgorithm,
                  (ModelConfig, "architecture"): Architecture, (TrainingConfig, "backend"): Backend,
                  (InferenceConfig, "backend"): Backend}


def test_every_config_choice_is_annotated_with_its_enum_and_no_literal_spells_one() -> None:
    for (cls, name), choice in CONFIG_CHOICES.items():
        assert typing.get_type_hints(cls)[name] is choice, (cls, name)
    for cls in (ModelConfig, TrainingConfig, InferenceConfig, PyTorchExecutionConfig):
        for name, hint in typing.get_type_hints(cls).items():
            assert typing.Literal not in (typing.get_origin(hint), *map(typing.get_origin, typing.get_args(hint))), \
                (cls, name)
    assert PyTorchExecutionConfig(gradient_clip_algorithm="value").gradient_clip_algorithm is GradientClipAlgorithm.VALUE
    hints = typing.get_type_hints(ReconstructOptions)
    assert hints["refine_algorithm"] == RefineAlgorithm | None and hints["refine_start"] is RefineStart
    assert hints["scale_policy"] == ScalePolicy | None and hints["units"] == Units | None


def test_plain_strings_become_members_and_the_train_flags_list_the_enum_values() -> None:
    import argparse

    from training.cli import configure

    config = PyTorchExecutionConfig(scheduler="WarmupCosine", logger_backend="none")
    assert config.scheduler is Scheduler.WARMUP_COSINE and config.logger_backend is LoggerBackend.NONE
    assert ModelConfig(generator="taper", amp_activation="relu").generator is Generator.TAPER
    assert dataclasses.replace(ModelConfig(), generator=Generator.FULL) == ModelConfig(generator="full")
    parser = argparse.ArgumentParser()
    configure(parser)
    actions = {action.dest: action for action in parser._actions}
    sections = {ModelConfig: "model", TrainingConfig: "training", PyTorchExecutionConfig: "execution"}
    for (cls, name), choice in CONFIG_CHOICES.items():
        dest = f"{sections.get(cls)}.{name}"
        if len(choice) == 1:  # nothing to choose: no flag (the help stays as it was)
            assert dest not in actions, name
        else:
            assert list(actions[dest].choices) == list(values(choice)), name


def test_configs_leave_as_plain_strings_and_checkpoints_load_with_weights_only(tmp_path) -> None:
    """``to_primitives`` is the one boundary: hyper-parameters, config.json and params.cfg hold plain
    strings, which ``torch.load(weights_only=True)`` reads (it refuses enum members)."""
    import pickle

    import torch
    import yaml

    from ptycho_torch.checkpoint import load_generator
    from ptycho_torch.config import to_primitives
    from ptycho_torch.simulation import default_probe
    from training.module import PtychoPINNModule

    with pytest.raises(pickle.UnpicklingError):  # why the boundary exists
        torch.save({"generator": Generator.TAPER}, tmp_path / "member.pt")
        torch.load(tmp_path / "member.pt", weights_only=True)
    model = ModelConfig(N=32, n_filters_scale=1, generator="taper", amp_activation="relu")
    training = TrainingConfig(model=model, nll_weight=0.0, mae_weight=1.0, torch_loss_mode="mae")
    execution = PyTorchExecutionConfig(scheduler="Exponential", logger_backend="none")
    module = PtychoPINNModule.from_configs(training, execution, probe=default_probe(32), training_scale=0.5)
    hparams = dict(module.hparams)
    assert type(hparams["model_config"]["generator"]) is str and type(hparams["execution_config"]["scheduler"]) is str
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, tmp_path / "x.ckpt")
    _, record, _ = load_generator(tmp_path / "x.ckpt")
    assert record.model == model and record.model.generator is Generator.TAPER
    assert record.training.torch_loss_mode is LossMode.MAE and record.execution["scheduler"] == "Exponential"
    snapshot = record.params_snapshot()
    assert type(snapshot["amp_activation"]) is str and json.loads(json.dumps(snapshot))["amp_activation"] == "relu"
    assert yaml.safe_load(yaml.safe_dump(to_primitives(execution)))["logger_backend"] == "none"
