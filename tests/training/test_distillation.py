"""Distillation: the solver's object of the training scan as targets beside the physics loss."""

from __future__ import annotations

import dataclasses
import json
from typing import cast

import numpy as np
import pytest
import torch

from ptycho_torch import physics
from ptycho_torch.checkpoint import load_generator
from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.corpus import Corpus
from ptycho_torch.errors import ConfigError, DataContractError
from ptycho_torch.model import combine_complex
from ptycho_torch.probe_estimate import estimate_probe, with_probe
from tests.training.conftest import NPHOTONS, N, tiny_scan
from training.datamodule import GroupedDataModule, GroupedDataset, group_scan
from training.module import PtychoPINNModule
from training.trainer import distillation_scan, train


def _patches(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    predicted = torch.randn(4, 2, N, N, dtype=torch.complex64, generator=generator)
    target = predicted + 0.5 * torch.randn(4, 2, N, N, dtype=torch.complex64, generator=generator)
    return predicted, target


def test_the_loss_ignores_a_global_complex_gain_of_the_targets():
    predicted, target = _patches(0)
    loss = physics.distillation_loss(predicted, target)
    for gain in (2.0, -0.25, 1j, -8j, 1024.0):  # exact in float32: every product and sum scales exactly
        assert physics.distillation_loss(predicted, gain * target).item() == loss.item()
    for gain in (0.3 - 1.7j, 1e-4 + 2e-4j, -55.0 + 1j):  # any other gain: to float32 rounding
        torch.testing.assert_close(physics.distillation_loss(predicted, gain * target), loss, rtol=1e-5, atol=0)
    p, t = physics.central_window(predicted).flatten(), physics.central_window(target).flatten()
    correlation = (torch.vdot(t, p).abs() / (t.norm() * p.norm())).item()
    assert loss.item() == pytest.approx(1 - correlation**2, rel=1e-5)  # 1 - |corr|^2, in [0, 1]
    assert physics.distillation_loss(predicted, (0.5 - 2j) * predicted).item() < 1e-6


def test_only_the_central_window_counts_and_the_gradient_pulls_towards_the_gained_target():
    predicted, target = _patches(1)
    outside = target.clone()
    outside[..., : N // 4, :] = 100.0  # a border the probe does not light
    assert physics.distillation_loss(predicted, outside).item() == physics.distillation_loss(predicted, target).item()
    predicted.requires_grad_(True)
    physics.distillation_loss(predicted, (3 + 1j) * target).backward()
    p, t = physics.central_window(predicted.detach()), physics.central_window(target)
    gain = (t.conj() * p).sum() / (t.abs() ** 2).sum()
    # torch gives 2 dD/d(conj p) for a real D of a complex p: 2 (p - c t) / sum |p|^2 (c, sum |p|^2 held)
    expected = 2 * (p - gain * t) / (p.abs() ** 2).sum()
    torch.testing.assert_close(physics.central_window(predicted.grad), expected, rtol=1e-4, atol=1e-9)
    assert predicted.grad[..., : N // 4, :].abs().max().item() == 0.0


def test_the_training_loss_adds_the_scaled_distillation_and_validation_keeps_the_physics():
    training = TrainingConfig(model=ModelConfig(N=N, n_filters_scale=1), batch_size=8, nphotons=NPHOTONS,
                              distill_weight=0.5, distill_iterations=5)
    scan, record = distillation_scan(tiny_scan(24, seed=3), training)
    assert record["iterations"] == 5 and record["weight"] == 0.5
    data = GroupedDataModule(scan, None, training, seed=0)
    module = PtychoPINNModule.from_configs(training, PyTorchExecutionConfig(), probe=data.probe,
                                           training_scale=data.training_scale)
    batch = next(iter(data.train_dataloader()))
    torch.testing.assert_close(combine_complex(batch["amplitude"], batch["phase"]),
                               torch.from_numpy(scan.Y[batch["index"]])[:, None], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    train_losses = module._losses(batch)
    val_losses = module._losses(batch, stage="val")
    physics_loss = module._physics_losses(batch, *module(batch["diffraction"], batch["scale"]))["loss"]
    assert module.distill_scale == pytest.approx(0.5 * NPHOTONS / N**2)
    torch.testing.assert_close(val_losses["loss"], physics_loss)
    torch.testing.assert_close(train_losses["loss"], physics_loss + module.distill_scale * train_losses["distill"])
    assert 0 < train_losses["distill"].item() < 1


def _distance_to_targets(checkpoint, scan, training) -> float:
    """The distillation distance of a trained generator's patches to ``scan.Y`` over every group."""
    generator = load_generator(checkpoint)[0]
    data = GroupedDataset(group_scan(scan, training, seed=0), with_labels=True)
    with torch.no_grad():
        amplitude, phase = generator(data.diffraction.permute(0, 3, 1, 2), data.scale.expand(len(data)))
        assert data.labels is not None
        return physics.distillation_loss(combine_complex(amplitude, phase), data.labels.permute(0, 3, 1, 2)).item()


@pytest.mark.slow
def test_a_distilled_run_is_closer_to_the_solvers_object_and_records_the_solver_run(tmp_path):
    raw = tiny_scan(64, seed=0)
    execution = PyTorchExecutionConfig(accelerator="cpu", max_steps=30, logger_backend="none",
                                       enable_progress_bar=False, seed=0)

    def config(name: str, weight: float) -> TrainingConfig:
        return TrainingConfig(model=ModelConfig(N=N, n_filters_scale=1), batch_size=16, nphotons=NPHOTONS,
                              distill_weight=weight, output_dir=tmp_path / name)

    distilled = train(config("distilled", 1.0), execution, train_data=raw)
    targets, record = distillation_scan(raw, config("x", 1.0))  # the solver is deterministic: the same targets
    physics_only = train(config("physics", 0.0), execution, train_data=targets)  # same probe, no distillation
    summary = json.loads((tmp_path / "distilled" / "summary.json").read_text())
    assert summary["distillation"]["iterations"] == record["iterations"] > 0
    assert summary["distillation"]["weight"] == 1.0 and summary["distillation"]["seconds"] >= 0
    assert summary["distillation"]["amplitude_error"][1] < summary["distillation"]["amplitude_error"][0]
    assert dict(load_generator(distilled.last_checkpoint)[1].distillation) == summary["distillation"]
    assert "distillation" not in json.loads((tmp_path / "physics" / "summary.json").read_text())
    assert load_generator(physics_only.last_checkpoint)[1].distillation is None
    np.testing.assert_array_equal(load_generator(distilled.last_checkpoint)[2],
                                  load_generator(physics_only.last_checkpoint)[2])  # both trained with the solver's probe
    training = config("eval", 0.0)
    with_distillation = _distance_to_targets(distilled.last_checkpoint, targets, training)
    without = _distance_to_targets(physics_only.last_checkpoint, targets, training)
    assert with_distillation < 0.6 * without, (with_distillation, without)  # measured 0.02 vs 0.05


def test_distillation_needs_a_pinn_model_and_a_training_scan(tmp_path):
    execution = PyTorchExecutionConfig(accelerator="cpu")
    supervised = TrainingConfig(model=ModelConfig(N=N, model_type="supervised"), distill_weight=1.0,
                                output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"`distill_weight` needs model_type 'pinn'"):
        train(supervised, execution, train_data=tiny_scan(8, seed=0))
    with pytest.raises(ConfigError, match=r"`distill_weight` needs a training scan for the solver to refine"):
        train(TrainingConfig(model=ModelConfig(N=N), distill_weight=1.0, output_dir=tmp_path), execution,
              corpus=cast(Corpus, object()))  # refused before the corpus is opened


def test_refine_probe_trains_with_the_solvers_probe_of_the_training_scan(tmp_path):
    """``refine_probe`` alone: the checkpoint's probe is the solver's estimate on the training scan (a
    wrong file probe is replaced), the loss stays the physics, and a corpus is refused."""
    raw = tiny_scan(64, seed=0)
    r = np.hypot(*np.meshgrid(np.arange(N) - N / 2, np.arange(N) - N / 2, indexing="ij"))
    wrong = with_probe(raw, (np.abs(raw.probeGuess) * np.exp(1j * 0.01 * r**2)).astype(np.complex64))  # another defocus
    execution = PyTorchExecutionConfig(accelerator="cpu", max_steps=2, logger_backend="none",
                                       enable_progress_bar=False, seed=0)
    training = TrainingConfig(model=ModelConfig(N=N, n_filters_scale=1), batch_size=16, nphotons=NPHOTONS,
                              refine_probe=True, output_dir=tmp_path / "refined")
    result = train(training, execution, train_data=wrong)
    _, record, probe = load_generator(result.last_checkpoint)
    estimate = estimate_probe(wrong)  # deterministic: the probe training used
    expected, _ = physics.normalize_probe(torch.as_tensor(estimate.probe), training.model.probe_scale)
    np.testing.assert_allclose(probe, expected.numpy(), rtol=1e-5, atol=1e-6)

    def closeness(p: np.ndarray) -> float:
        a, b = p.ravel(), raw.probeGuess.ravel()
        return float(abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))

    assert closeness(probe) > 0.97 > closeness(wrong.probeGuess) + 0.1
    assert record.training.refine_probe and record.distillation is None
    with pytest.raises(ConfigError, match=r"`refine_probe` needs a training scan"):
        train(dataclasses.replace(training, output_dir=tmp_path / "corpus"), execution, corpus=cast(Corpus, object()))


def test_refine_probe_guards_resume_signal_free_data_and_a_probe_that_got_worse(tmp_path, caplog, monkeypatch):
    """Resuming with another --refine-probe is refused (the checkpoint's probe would win over the recorded
    recipe); patterns without signal get the one-line data error; a refined probe that fits no better is
    not used."""
    raw = tiny_scan(16, seed=0)
    execution = PyTorchExecutionConfig(accelerator="cpu", max_steps=1, logger_backend="none",
                                       enable_progress_bar=False, seed=0)
    plain = TrainingConfig(model=ModelConfig(N=N, n_filters_scale=1), batch_size=16, nphotons=NPHOTONS,
                           output_dir=tmp_path / "run")
    first = train(plain, execution, train_data=raw)
    with pytest.raises(ConfigError, match=r"trained with refine_probe=False, got True now; resume with the same "
                                          r"--refine-probe"):
        train(dataclasses.replace(plain, refine_probe=True), execution, train_data=raw, resume=first.last_checkpoint)
    dark = dataclasses.replace(raw, diff3d=np.zeros_like(raw.diff3d))
    with pytest.raises(DataContractError, match="mean energy"):
        estimate_probe(dark)
    import training.trainer as trainer_module

    worse = dataclasses.replace(estimate_probe(raw, iterations=2), amplitude_error=(0.1, 0.2))
    monkeypatch.setattr(trainer_module, "estimate_probe", lambda scan: worse)
    with caplog.at_level("WARNING", logger="training.trainer"):
        kept = trainer_module.refined_probe_scan(raw)
    assert kept is raw and "fits the training patterns no better" in caplog.text
