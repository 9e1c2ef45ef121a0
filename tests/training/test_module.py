"""The Lightning module without a Trainer: losses, the checkpoint contract's fields, supervised mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptycho_torch import physics
from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.errors import ConfigError
from ptycho_torch.model import combine_complex
from tests.training.conftest import NPHOTONS, N, tiny_scan
from training.datamodule import GroupedDataModule
from training.module import PtychoPINNModule


def _module(training: TrainingConfig, raw) -> tuple[PtychoPINNModule, GroupedDataModule]:
    data = GroupedDataModule(raw, None, training, seed=0)
    module = PtychoPINNModule.from_configs(training, PyTorchExecutionConfig(), probe=data.probe,
                                           training_scale=data.training_scale)
    return module, data


def _config(**model) -> TrainingConfig:
    return TrainingConfig(model=ModelConfig(N=N, n_filters_scale=1, **model), batch_size=8, nphotons=NPHOTONS)


def test_hparams_are_json_primitives_and_probe_is_normalised():
    raw = tiny_scan(24, seed=3)
    module, data = _module(_config(), raw)
    hp = dict(module.hparams)
    import json

    json.dumps(hp)  # JSON-able primitives only
    assert hp["intensity_scale"] == pytest.approx(math.sqrt(NPHOTONS) / (N / 2))
    assert hp["input_scale"] == pytest.approx(data.training_scale)
    assert hp["model_config"]["N"] == N and hp["probe_modes"] == 1
    assert module.probe.dtype == torch.complex64 and module.probe.shape == (1, N, N)
    expected = torch.as_tensor(raw.probeGuess) / hp["probe_normaliser"]
    torch.testing.assert_close(module.probe[0], expected)
    assert (physics.disk_mask(N) * module.probe[0].abs()).mean().item() == pytest.approx(0.25, rel=1e-5)


def test_pinn_loss_is_the_physics_of_the_generator_output():
    module, data = _module(_config(), tiny_scan(24, seed=3))
    batch = next(iter(data.train_dataloader()))
    losses = module._losses(batch)
    amplitude, phase = module(batch["diffraction"], batch["scale"])
    intensity = physics.far_field_intensity(physics.illuminate(combine_complex(amplitude, phase), module.probe))
    observed = batch["diffraction"] * batch["scale"][:, None, None, None]
    s = module.intensity_scale
    torch.testing.assert_close(losses["loss"], physics.poisson_nll(s**2 * intensity, (s * observed) ** 2))
    losses["loss"].backward()
    grads = [p.grad for p in module.generator.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_gridsize2_batch_merges_per_group_and_trains():
    module, data = _module(_config(gridsize=2), tiny_scan(24, seed=4))
    batch = next(iter(data.train_dataloader()))
    assert batch["diffraction"].shape == (8, 4, N, N) and batch["offsets"].shape == (8, 4, 2)
    torch.testing.assert_close(batch["offsets"].sum(dim=1), torch.zeros(8, 2), atol=1e-4, rtol=0)
    optimizer = torch.optim.Adam(module.generator.parameters(), lr=1e-3)
    first = module._losses(batch)["loss"]
    first.backward()
    optimizer.step()
    assert torch.isfinite(first)
    assert module._losses(batch)["loss"].item() != first.item()


def test_supervised_mode_uses_ground_truth_patches():
    module, data = _module(_config(model_type="supervised"), tiny_scan(24, seed=5))
    batch = next(iter(data.train_dataloader()))
    raw_truth = data.train_set.dataset.labels[batch["index"]].permute(0, 3, 1, 2)
    torch.testing.assert_close(batch["amplitude"], raw_truth.abs())
    amplitude, phase = module(batch["diffraction"], batch["scale"])
    expected = 2 * (amplitude - batch["amplitude"]).abs().mean() + 4 * (phase - batch["phase"]).abs().mean()
    torch.testing.assert_close(module._losses(batch)["loss"], expected)


def test_supervised_mode_without_ground_truth_fails_before_training():
    raw = tiny_scan(24, seed=5)
    raw.objectGuess = None
    with pytest.raises(ConfigError, match="supervised"):
        GroupedDataModule(raw, None, _config(model_type="supervised"), seed=0)


@pytest.mark.parametrize(
    ("weights", "match"), [({"nll_weight": 0.0, "mae_weight": 0.0}, "both be 0"), ({"nll_weight": 0.0}, "nll_weight")]
)
def test_unusable_loss_weights_are_rejected(weights, match):
    training = TrainingConfig(model=ModelConfig(N=N, n_filters_scale=1), **weights)
    with pytest.raises(ConfigError, match=match):
        PtychoPINNModule.from_configs(training, PyTorchExecutionConfig(), probe=np.ones((N, N), np.complex64),
                                      training_scale=1.0)


def test_data_module_items_are_views_not_copies():
    module, data = _module(_config(), tiny_scan(24, seed=6))
    dataset = data.train_set.dataset
    item = dataset[3]
    assert item["diffraction"].untyped_storage().data_ptr() == dataset.diffraction.untyped_storage().data_ptr()
    assert item["diffraction"].shape == (1, N, N)
    assert len(data.val_set) == 1 and len(data.train_set) == 23
    assert not set(data.val_set.indices) & set(data.train_set.indices)


def test_per_item_nphotons_sets_each_items_poisson_scale():
    module, data = _module(_config(), tiny_scan(24, seed=3))
    batch = next(iter(data.train_dataloader()))
    B = batch["diffraction"].shape[0]
    torch.manual_seed(0)
    same = module._losses({**batch, "nphotons": torch.full((B,), NPHOTONS)})
    torch.manual_seed(0)
    plain = module._losses(batch)
    torch.testing.assert_close(same["nll"], plain["nll"])
    doses = torch.full((B,), NPHOTONS)
    doses[0] = 100 * NPHOTONS  # item 0 at 100x the dose: its terms scale by 100, the others stay
    with torch.no_grad():
        amplitude, phase = module.generator(batch["diffraction"], batch["scale"])
        intensity = module.predicted_intensity(amplitude, phase, batch["offsets"])
        observed = batch["diffraction"] * batch["scale"].reshape(-1, 1, 1, 1)
        s = torch.sqrt(doses).reshape(-1, 1, 1, 1) / (N / 2)
        rate, counts = s**2 * intensity, (s * observed) ** 2
        expected = (rate - counts * torch.log(rate.clamp_min(physics.RATE_FLOOR))).mean()
    torch.testing.assert_close(module._losses({**batch, "nphotons": doses})["nll"], expected)
