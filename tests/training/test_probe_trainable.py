"""``probe_trainable``: the probe is learned with the generator, its norm held, and the checkpoint holds it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from ptycho_torch import physics
from ptycho_torch.checkpoint import load_generator
from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.data import RawData
from ptycho_torch.errors import ConfigError
from ptycho_torch.probe_estimate import with_probe
from ptycho_torch.simulation import default_probe, lines_object, scan_positions, simulate_scan
from tests.training.conftest import NPHOTONS, N
from training.datamodule import GroupedDataModule
from training.module import PtychoPINNModule
from training.trainer import train

pytestmark = pytest.mark.slow


def _train(scan_files, tmp_path, name: str, steps: int = 3, **training):
    training = {"model": ModelConfig(N=N, n_filters_scale=1), **training}
    config = TrainingConfig(train_data_file=scan_files[0], batch_size=8, nphotons=NPHOTONS,
                            output_dir=tmp_path / name, **training)
    execution = PyTorchExecutionConfig(accelerator="cpu", max_steps=steps, logger_backend="none",
                                       enable_progress_bar=False, seed=0)
    return train(config, execution, train_data=RawData.from_file(scan_files[0]))


@pytest.fixture(scope="module")
def runs(scan_files, tmp_path_factory):
    """(trained probe run, fixed probe run), three steps each on the same scan and seed."""
    root = tmp_path_factory.mktemp("probe_runs")
    return _train(scan_files, root, "trainable", probe_trainable=True, probe_learning_rate=1e-2), \
        _train(scan_files, root, "fixed")


def test_a_trained_probe_changes_keeps_its_norm_and_is_the_checkpoints_probe(runs, scan_files):
    trainable, fixed = runs
    start = physics.normalize_probe(torch.as_tensor(RawData.from_file(scan_files[0]).probeGuess))[0].numpy()
    learned = load_generator(trainable.last_checkpoint)[2]
    assert np.abs(learned - start).max() > 1e-3  # it moved (lr 1e-2, 3 steps)
    assert np.linalg.norm(learned) == pytest.approx(np.linalg.norm(start), rel=1e-5)  # its norm did not (float32)
    state = torch.load(trainable.last_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    np.testing.assert_array_equal(torch.view_as_complex(state["probe_parameter"]).numpy(), learned)
    np.testing.assert_array_equal(trainable.module.training_probe.detach().numpy(), learned)
    # without probe_trainable the probe is the scan's, normalised, bit for bit, and has no parameter
    np.testing.assert_array_equal(load_generator(fixed.last_checkpoint)[2], start)
    assert "probe_parameter" not in torch.load(fixed.last_checkpoint, map_location="cpu", weights_only=True)[
        "state_dict"]
    assert load_generator(trainable.last_checkpoint)[1].training.probe_trainable


def test_resuming_with_the_other_probe_setting_is_refused(runs, scan_files, tmp_path):
    trainable, _ = runs
    config = TrainingConfig(model=ModelConfig(N=N, n_filters_scale=1), batch_size=8, nphotons=NPHOTONS,
                            output_dir=tmp_path / "again")
    with pytest.raises(ConfigError, match=r"`resume` checkpoint was trained with probe_trainable=True, got False"):
        train(config, PyTorchExecutionConfig(accelerator="cpu"), train_data=RawData.from_file(scan_files[0]),
              resume=trainable.last_checkpoint)


def test_a_supervised_model_refuses_a_trainable_probe(scan_files, tmp_path):
    with pytest.raises(ConfigError, match=r"`probe_trainable` needs model_type 'pinn'"):
        _train(scan_files, tmp_path, "sup", model=ModelConfig(N=N, n_filters_scale=1, model_type="supervised"), probe_trainable=True)


def _weak_object_scan(seed: int = 0) -> RawData:
    """64 random positions over a weakly scattering object (amplitude 0.9-1, phase range 0.3 rad)."""
    rng = np.random.default_rng(seed)
    texture = np.abs(lines_object(3 * N, rng))
    t = (texture - texture.min()) / np.ptp(texture)
    obj = ((0.9 + 0.1 * t) * np.exp(0.3j * (t - 0.5))).astype(np.complex64)
    x, y = scan_positions(64, 3 * N, N, "random", rng)
    return simulate_scan(obj, default_probe(N), x, y, nphotons=NPHOTONS, seed=seed + 1)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """``|<a, b>| / (|a| |b|)``: 1 for the same probe up to a complex gain."""
    return float(abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_a_wrong_probe_moves_towards_the_true_one():
    """Trained with a blurred copy of the true probe, the probe's correlation with the true one rises.

    gridsize 2 (the group's patches share one canvas): at gridsize 1 each pattern has a patch of its
    own, which can absorb any probe error, so the data do not pin the probe."""
    raw = _weak_object_scan()
    true = raw.probeGuess
    wrong = (gaussian_filter(true.real, 2.0) + 1j * gaussian_filter(true.imag, 2.0)).astype(np.complex64)
    torch.manual_seed(0)
    training = TrainingConfig(model=ModelConfig(N=N, n_filters_scale=1, gridsize=2), batch_size=8, nphotons=NPHOTONS,
                              probe_trainable=True, probe_learning_rate=1e-2)
    data = GroupedDataModule(with_probe(raw, wrong[None]), None, training, seed=0)
    module = PtychoPINNModule.from_configs(training, PyTorchExecutionConfig(), probe=data.probe,
                                           training_scale=data.training_scale)
    optimizer = module.configure_optimizers()
    start_norm = torch.linalg.vector_norm(module.probe).item()
    before = _correlation(module.probe[0].numpy(), true)
    batches = (batch for _ in range(10) for batch in data.train_dataloader())  # 8 batches an epoch
    for step, batch in zip(range(50), batches, strict=False):
        optimizer.zero_grad()
        module._losses(batch)["loss"].backward()
        module.optimizer_step(0, step, optimizer)  # the step Lightning takes, then the projection
    after = _correlation(module.probe[0].numpy(), true)
    assert before == pytest.approx(0.909, abs=0.005)
    assert after > before + 0.02, (before, after)  # measured: 0.909 -> 0.950 after 50 steps
    assert torch.linalg.vector_norm(module.probe).item() == pytest.approx(start_norm, rel=1e-5)
