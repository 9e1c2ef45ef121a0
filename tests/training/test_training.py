"""Real (tiny) training runs through `ptychopinn train`: the loss drops, checkpoints, resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ptycho_torch.checkpoint import CheckpointRecord, load_generator
from ptycho_torch.checksums import sha256_file
from ptycho_torch.data import RawData
from ptycho_torch.errors import ModelArchiveError
from ptycho_torch.model import FFNOGenerator, PtychoPINNGenerator
from ptycho_torch.run_layout import RunLayout, RunStatus
from ptychopinn.cli import main
from tests.training.conftest import N
from training.datamodule import GroupedDataset, group_scan

pytestmark = pytest.mark.slow
EPOCHS = 3
BATCH = 8
STEPS_PER_EPOCH = 4  # 32 training positions / batch 8


def _train_args(scan_files, run, *extra):
    train, test = scan_files
    return ["train", "--train-data", str(train), "--test-data", str(test), "--output-dir", str(run), "--n", str(N),
            "--n-filters-scale", "1", "--batch-size", str(BATCH), "--accelerator", "cpu", "--no-progress-bar",
            "--seed", "0", *extra]


@pytest.fixture(scope="module")
def trained_run(scan_files, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert main(_train_args(scan_files, run, "--epochs", str(EPOCHS))) == 0
    return run


def _val_loss(generator, record, probe, scan_file) -> float:
    """Validation Poisson NLL of a generator on the test scan, computed without Lightning."""
    from ptycho_torch import physics
    from ptycho_torch.config import TrainingConfig
    from ptycho_torch.model import combine_complex

    training = TrainingConfig(model=record.model)
    data = GroupedDataset(group_scan(RawData.from_file(scan_file), training, seed=1), with_labels=False)
    x = data.diffraction.permute(0, 3, 1, 2)
    scale = data.scale.expand(x.shape[0])
    with torch.no_grad():
        amplitude, phase = generator(x, scale)
        intensity = physics.far_field_intensity(physics.illuminate(combine_complex(amplitude, phase), torch.from_numpy(probe)))
        s = record.intensity_scale
        return physics.poisson_nll(s**2 * intensity, (s * x * scale[:, None, None, None]) ** 2).item()


def test_training_lowers_the_loss_and_writes_best_and_last(trained_run, scan_files):
    checkpoints = trained_run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    summary = json.loads((trained_run / "summary.json").read_text())
    assert list(summary) == ["status", "init_from", "epochs", "global_step", "steps_this_run", "train_samples",
                             "wall_s", "samples_per_s", "world_size", "accelerator", "best_val_loss",
                             "best_checkpoint", "last_checkpoint", "final_metrics"]  # what readers of the file get
    typed = RunLayout(trained_run).read_summary()
    assert typed.status is RunStatus.COMPLETED and typed.to_json() == summary
    assert typed.last_checkpoint == RunLayout(trained_run).last_checkpoint and typed.init_from is None
    assert summary["global_step"] == EPOCHS * STEPS_PER_EPOCH and summary["train_samples"] == EPOCHS * 32
    assert summary["samples_per_s"] > 0 and summary["best_checkpoint"].endswith("best.ckpt")
    metrics = (trained_run / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("epoch,step") and "val_loss" in metrics[0]

    generator, record, probe = load_generator(checkpoints / "best.ckpt")
    torch.manual_seed(0)  # an untrained generator, initialised as the run's was
    before = _val_loss(PtychoPINNGenerator(record.model).eval(), record, probe, scan_files[1])
    after = _val_loss(generator, record, probe, scan_files[1])
    assert after < before - 0.01 * abs(before), (before, after)
    assert summary["best_val_loss"] == pytest.approx(after, rel=1e-4)


def test_checkpoint_contract(trained_run, scan_files):
    path = trained_run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    json.dumps(hparams)
    assert set(hparams) >= {"model_config", "training_config", "input_scale", "intensity_scale", "train_data_sha256"}
    assert hparams["train_data_sha256"] == sha256_file(scan_files[0])
    assert hparams["input_scale"] == pytest.approx(RawData.from_file(scan_files[0]).diff3d.shape[-1] / 2 / np.sqrt(
        (RawData.from_file(scan_files[0]).diff3d.astype(np.float64) ** 2).sum(axis=(1, 2)).mean()), rel=1e-5)
    assert hparams["training_config"]["train_data_file"] == str(scan_files[0])
    assert checkpoint["state_dict"]["probe"].dtype == torch.complex64
    generator, record, probe = load_generator(path)
    assert record == CheckpointRecord.from_hparams(hparams) and probe.shape == (1, N, N) and probe.dtype == np.complex64
    assert not generator.training
    state = {k[len("generator."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("generator.")}
    for name, value in generator.state_dict().items():
        torch.testing.assert_close(value, state[name])


def test_the_resolved_config_is_written_next_to_summary_and_repeats_the_run(trained_run):
    """RUN/config.json is the checkpoint's resolved configuration (defaults, flags and the scan merged),
    in the sections `train --config` reads: read back, it gives the very configs the run trained with."""
    import argparse

    from ptycho_torch.config import PyTorchExecutionConfig, config_from_dict
    from training import cli as train_cli

    resolved = json.loads((trained_run / "config.json").read_text())
    hparams = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=True)["hyper_parameters"]
    assert resolved == {"model": hparams["model_config"], "training": hparams["training_config"],
                        "execution": hparams["execution_config"]}
    assert resolved["training"]["neighbor_count"] == 4 and resolved["execution"]["seed"] == 0
    parser = argparse.ArgumentParser()
    train_cli.configure(parser)
    training, execution, _ = train_cli.build_configs(parser.parse_args(["--config", str(trained_run / "config.json")]))
    record = CheckpointRecord.from_hparams(hparams)
    assert training == record.training
    assert execution == config_from_dict(PyTorchExecutionConfig, hparams["execution_config"])


def test_load_generator_rejects_a_non_checkpoint(tmp_path):
    bogus = tmp_path / "x.ckpt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelArchiveError, match="best.ckpt or last.ckpt"):
        load_generator(bogus)
    with pytest.raises(ModelArchiveError, match="existing checkpoint"):
        load_generator(tmp_path / "missing.ckpt")


def test_resume_continues_at_the_same_step_with_optimizer_state(trained_run, scan_files, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(trained_run, run)
    last = run / "checkpoints" / "last.ckpt"
    before = torch.load(last, map_location="cpu", weights_only=True)
    assert before["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert main(_train_args(scan_files, run, "--epochs", str(EPOCHS + 1), "--resume", str(last))) == 0
    after = torch.load(last, map_location="cpu", weights_only=True)
    summary = json.loads((run / "summary.json").read_text())
    assert after["global_step"] == (EPOCHS + 1) * STEPS_PER_EPOCH
    assert summary["steps_this_run"] == STEPS_PER_EPOCH  # only the missing epoch was trained
    adam_steps = {float(s["step"]) for s in after["optimizer_states"][0]["state"].values()}
    assert adam_steps == {float((EPOCHS + 1) * STEPS_PER_EPOCH)}  # Adam moments carried over, not restarted
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_resume_with_a_different_model_fails_before_training(trained_run, scan_files, tmp_path, capsys):
    last = trained_run / "checkpoints" / "last.ckpt"
    code = main(_train_args(scan_files, tmp_path / "other", "--epochs", "4", "--resume", str(last), "--gridsize", "2"))
    assert code == 2
    assert "different model" in capsys.readouterr().err
    assert not (tmp_path / "other" / "checkpoints").exists()


def test_an_ffno_run_reloads_exports_and_serves(scan_files, tmp_path):
    """A Fourier generator through the whole chain: ``ptychopinn train --architecture ffno`` (one epoch, 4
    steps), :func:`load_generator`, ``ptychopinn export`` (its parity checks) and the serving engine."""
    from export.verify import FP32_TOLERANCE, verification_inputs
    from ptycho_torch.bundle import load_bundle
    from serving.engine import Engine

    run = tmp_path / "run"
    assert main(_train_args(scan_files, run, "--architecture", "ffno", "--epochs", "1", "--logger", "none")) == 0
    checkpoint = run / "checkpoints" / "last.ckpt"
    generator, record, _ = load_generator(checkpoint)
    assert isinstance(generator, FFNOGenerator) and record.model.architecture == "ffno"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for name, value in generator.state_dict().items():  # the trained weights, not a fresh draw
        torch.testing.assert_close(value, saved[f"generator.{name}"])
    out = tmp_path / "bundle"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    bundle = load_bundle(out)
    assert bundle.manifest.training is not None and bundle.manifest.training.recipe["model.architecture"] == "ffno"
    assert bundle.params["architecture"] == "ffno"
    engine = Engine(bundle, max_batch_size=8, providers=["cpu"], intra_op_threads=1)
    diffraction = verification_inputs(scan_files[1], N, 1, n_groups=5)
    scale = np.full(5, record.training_scale, np.float32)
    served = engine.run(diffraction, scale)
    with torch.no_grad():
        eager = generator(torch.from_numpy(diffraction), torch.from_numpy(scale))
    for got, want in zip(served, eager, strict=True):
        assert np.abs(got - want.numpy()).max() <= FP32_TOLERANCE
