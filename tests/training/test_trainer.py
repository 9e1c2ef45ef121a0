"""The Trainer factory and the `train` command reject bad settings before any training."""

from __future__ import annotations

import sys

import pytest
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.errors import ConfigError, DataContractError
from ptychopinn.cli import main
from training import cli as train_cli
from training.checkpointing import AtomicCheckpointIO, LastCheckpoint
from training.trainer import build_trainer, train


def _trainer(tmp_path, **execution):
    return build_trainer(PyTorchExecutionConfig(**execution), output_dir=tmp_path, max_epochs=2)


def test_defaults_give_best_and_last_checkpoints_csv_logs_and_settings(tmp_path):
    trainer = _trainer(tmp_path, accelerator="cpu", gradient_clip_val=0.5, accumulate_grad_batches=2,
                       early_stop_patience=3, max_steps=7)
    checkpoint = trainer.checkpoint_callback
    assert isinstance(checkpoint, ModelCheckpoint)
    assert checkpoint.dirpath == str(tmp_path / "checkpoints") and checkpoint.filename == "best"
    assert checkpoint.monitor == "val_loss" and not checkpoint.save_last  # last.ckpt: LastCheckpoint, every epoch
    last = [c for c in trainer.callbacks if isinstance(c, LastCheckpoint)]
    assert len(last) == 1 and last[0].path == tmp_path / "checkpoints" / "last.ckpt" and last[0].every_n_steps is None
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert isinstance(trainer.logger, CSVLogger)
    assert any(isinstance(c, EarlyStopping) and c.patience == 3 for c in trainer.callbacks)
    assert trainer.gradient_clip_val == 0.5 and trainer.accumulate_grad_batches == 2
    assert trainer.max_steps == 7 and trainer.max_epochs == 2


def test_tensorboard_and_no_logger(tmp_path):
    assert isinstance(_trainer(tmp_path, accelerator="cpu", logger_backend="tensorboard").logger, TensorBoardLogger)
    assert _trainer(tmp_path, accelerator="cpu", logger_backend="none").logger is None


def test_mlflow_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(ConfigError, match=r"ptychopinn-serve\[mlflow\]"):
        _trainer(tmp_path, accelerator="cpu", logger_backend="mlflow")


@pytest.mark.parametrize(
    ("execution", "match"),
    [
        ({"strategy": "warp-drive"}, "strategy='warp-drive'"),
        ({"precision": "17-mixed"}, "precision='17-mixed'"),
        ({"accelerator": "gpu"}, "accelerator='gpu'"),
        ({"accelerator": "cpu", "devices": 0}, "devices=0"),
    ],
)
def test_bad_execution_settings_fail_when_the_trainer_is_built(tmp_path, execution, match):
    with pytest.raises(ConfigError, match=match):
        _trainer(tmp_path, **execution)


def test_data_that_does_not_match_the_model_fails_before_training(tmp_path, scan_files):
    from ptycho_torch.data import RawData

    training = TrainingConfig(model=ModelConfig(N=64, n_filters_scale=1), output_dir=tmp_path)
    with pytest.raises(DataContractError, match="--n 32"):
        train(training, PyTorchExecutionConfig(accelerator="cpu"), train_data=RawData.from_file(scan_files[0]))
    assert not (tmp_path / "checkpoints").exists()


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    train_cli.configure(parser)
    return parser.parse_args(argv)


def test_config_file_is_merged_under_the_flags(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("model: {N: 32, gridsize: 2}\ntraining: {batch_size: 4, nepochs: 3}\nexecution: {learning_rate: 0.01}\n")
    args = _parse(["--train-data", "a.npz", "--output-dir", str(tmp_path), "--config", str(config),
                   "--epochs", "5", "--devices", "2", "--strategy", "ddp", "--no-progress-bar"])
    training, execution, explicit = train_cli.build_configs(args)
    assert training.model.N == 32 and training.model.gridsize == 2 and training.batch_size == 4
    assert training.nepochs == 5  # flag wins over the file
    assert execution.learning_rate == 0.01 and execution.devices == 2 and execution.strategy == "ddp"
    assert execution.enable_progress_bar is False and explicit == {"nphotons": False}


def test_json_config_with_an_unknown_key_lists_the_known_ones(tmp_path):
    config = tmp_path / "cfg.json"
    config.write_text('{"training": {"batch": 4}}')
    args = _parse(["--train-data", "a.npz", "--output-dir", str(tmp_path), "--config", str(config)])
    with pytest.raises(ConfigError, match=r"unknown TrainingConfig keys \['batch'\].*batch_size"):
        train_cli.build_configs(args)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--output-dir", "RUN"], "--train-data"),
        (["--train-data", "a.npz", "--output-dir", "RUN", "--batch-size", "12"], "batch_size must be a power of two"),
        (["--train-data", "a.npz", "--output-dir", "RUN", "--n", "48"], "N must be a power of two"),
        (["--train-data", "a.npz", "--output-dir", "RUN", "--gridsize", "2", "--n-groups", "0"], "n_groups"),
        (["--train-data", "a.npz", "--output-dir", "RUN", "--max-steps", "0"],
         "max_steps must be -1 (no limit) or >= 1"),
        (["--train-data", "a.npz", "--output-dir", "RUN", "--checkpoint-every-n-steps", "0"],
         "checkpoint_every_n_steps must be None or >= 1"),
        (["--train-data", "a.npz", "--output-dir", "RUN", "--distill-weight", "-1"],
         "distill_weight must be a finite number >= 0 (0: no distillation), got -1.0"),
        (["--train-data", "a.npz", "--output-dir", "RUN", "--distill-weight", "nan"],
         "distill_weight must be a finite number >= 0 (0: no distillation), got nan"),
        (["--train-data", "a.npz", "--output-dir", "RUN", "--distill-iterations", "0"],
         "distill_iterations must be an integer in [1, 1000] or 'auto', got 0"),
        (["--train-data", "a.npz", "--output-dir", "RUN", "--distill-iterations", "100000"],
         "distill_iterations must be an integer in [1, 1000] or 'auto', got 100000"),
        (["--train-data", "a.npz", "--output-dir", "RUN", "--probe-learning-rate", "0"],
         "probe_learning_rate must be a positive finite number"),
    ],
)
def test_train_command_reports_bad_flags_in_one_line(capsys, argv, message):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ptychopinn train: error:") and message in err


def test_train_logs_one_warning_line_per_legacy_knob_without_effect(tmp_path, caplog):
    config = tmp_path / "cfg.yaml"
    config.write_text("training: {realspace_weight: 0.5, nphotons: 1.0e+6}\n")
    args = _parse(["--train-data", "a.npz", "--output-dir", str(tmp_path), "--config", str(config), "--gridsize", "2"])
    with caplog.at_level("WARNING", logger="training.cli"):
        train_cli.build_configs(args)
    assert [(r.levelname, r.getMessage().split(";")[0]) for r in caplog.records] == [
        ("WARNING", "`realspace_weight` = 0.5 has no effect in this implementation")]
    caplog.clear()
    config.write_text("training: {nphotons: 1.0e+6, mae_weight: 0.5}\n")
    with caplog.at_level("WARNING", logger="training.cli"):
        train_cli.build_configs(args)
    assert caplog.records == []


OLD_TRAIN_FLAGS = {  # the flags of `ptychopinn train` before they were generated: users' scripts rely on them
    "--train-data", "--train-corpus", "--test-data", "--output-dir", "--config", "--n", "--gridsize", "--n-filters-scale",
    "--model-type", "--amp-activation", "--generator", "--epochs", "--batch-size", "--nphotons", "--n-groups",
    "--neighbor-count", "--nll-weight", "--mae-weight", "--loss", "--lr", "--scheduler", "--early-stop-patience",
    "--gradient-clip-val", "--accumulate-grad-batches", "--max-steps", "--seed", "--resume",
    "--checkpoint-every-n-steps", "--init-from", "--accelerator", "--devices", "--num-nodes", "--strategy",
    "--precision", "--num-workers", "--logger", "--no-progress-bar", "--progress-every",
}


def test_every_config_field_has_a_train_flag_with_its_docstring_help():
    import argparse
    import dataclasses
    import enum
    import typing

    from ptycho_torch.config import NO_EFFECT
    from ptycho_torch.config_flags import _plain, field_docs

    parser = argparse.ArgumentParser()
    train_cli.configure(parser)
    actions = {a.dest: a for a in parser._actions}
    assert OLD_TRAIN_FLAGS <= {option for a in parser._actions for option in a.option_strings}
    for section, cls in train_cli.SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            fixed = isinstance(hint, type) and issubclass(hint, enum.Enum) and len(hint) == 1  # e.g. Backend
            if f.name == "model" or f.name in NO_EFFECT or fixed:  # nested, legacy without effect, one value
                assert f"{section}.{f.name}" not in actions
                continue
            action = actions[f"{section}.{f.name}"]
            assert action.help.startswith(_plain(field_docs(cls)[f.name]).replace("%", "%%")), f.name
            assert action.default is None  # a flag not given overrides neither the file nor the default


def test_generated_flags_reach_the_configs(tmp_path):
    args = _parse(["--train-data", "a.npz", "--output-dir", str(tmp_path), "--no-object-big", "--probe-scale", "2",
                   "--n-subsample", "10", "--subsample-seed", "3", "--no-deterministic", "--gradient-clip-val", "1",
                   "--gradient-clip-algorithm", "value", "--devices", "auto", "--no-progress-bar", "--generator",
                   "smooth", "--amp-activation", "relu"])
    training, execution, _ = train_cli.build_configs(args)
    assert (training.model.object_big, training.model.probe_scale, training.model.generator,
            training.model.amp_activation) == (False, 2.0, "smooth", "relu")
    assert (training.n_subsample, training.subsample_seed) == (10, 3)
    assert (execution.deterministic, execution.gradient_clip_val, execution.gradient_clip_algorithm,
            execution.devices, execution.enable_progress_bar) == (False, 1.0, "value", "auto", False)
    with pytest.raises(SystemExit):  # a value outside the choices is refused by the parser
        _parse(["--amp-activation", "tanh"])


def test_the_architecture_flag_chooses_the_generator_and_names_the_choices(tmp_path, capsys):
    args = _parse(["--train-data", "a.npz", "--output-dir", str(tmp_path), "--architecture", "ffno"])
    assert train_cli.build_configs(args)[0].model.architecture == "ffno"
    with pytest.raises(SystemExit):
        _parse(["--architecture", "unet"])
    assert "--architecture: invalid choice: 'unet' (choose from 'cnn', 'fno', 'ffno')" in capsys.readouterr().err
    args = _parse(["--train-data", "a.npz", "--output-dir", str(tmp_path), "--architecture", "fno", "--generator",
                   "taper"])
    with pytest.raises(ConfigError, match=r"^generator applies to architecture 'cnn' only"):
        train_cli.build_configs(args)


def test_the_probe_and_distillation_flags_reach_the_training_config(tmp_path):
    args = _parse(["--train-data", "a.npz", "--output-dir", str(tmp_path), "--probe-trainable",
                   "--probe-learning-rate", "0.01", "--distill-weight", "2.5", "--distill-iterations", "40"])
    training, _, _ = train_cli.build_configs(args)
    assert (training.probe_trainable, training.probe_learning_rate) == (True, 0.01)
    assert (training.distill_weight, training.distill_iterations) == (2.5, 40)
    defaults, _, _ = train_cli.build_configs(_parse(["--train-data", "a.npz", "--output-dir", str(tmp_path)]))
    assert (defaults.probe_trainable, defaults.distill_weight, defaults.distill_iterations) == (False, 0.0, "auto")
    assert _parse(["--no-probe-trainable"]).__dict__["training.probe_trainable"] is False
