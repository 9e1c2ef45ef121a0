"""The checkpoint record: one typed view of a checkpoint's hyper-parameters, one params.cfg snapshot."""

from __future__ import annotations

import pytest

from ptycho_torch import params
from ptycho_torch.checkpoint import CheckpointRecord
from ptycho_torch.config import ModelConfig, TrainingConfig
from ptycho_torch.errors import ModelArchiveError

HPARAMS = {
    "model_config": {"N": 32, "gridsize": 2, "n_filters_scale": 1},
    "training_config": {"nphotons": 1e6, "train_data_file": "/data/scan.npz", "neighbor_count": 6},
    "execution_config": {"learning_rate": 1e-3},
    "input_scale": 0.25, "intensity_scale": 31.25, "probe_normaliser": 2.0, "probe_modes": 1,
    "train_data_sha256": "ab" * 32,
}


def test_record_types_the_hyper_parameters() -> None:
    record = CheckpointRecord.from_hparams(HPARAMS)
    assert record.model == ModelConfig(N=32, gridsize=2, n_filters_scale=1)
    assert record.training.nphotons == 1e6 and str(record.training.train_data_file) == "/data/scan.npz"
    assert (record.training_scale, record.intensity_scale, record.probe_normaliser) == (0.25, 31.25, 2.0)
    assert record.execution == {"learning_rate": 1e-3} and record.train_data_sha256 == "ab" * 32


def test_params_snapshot_is_the_full_legacy_config_plus_the_scales() -> None:
    snapshot = CheckpointRecord.from_hparams(HPARAMS).params_snapshot()
    assert set(params.DEFAULT_CFG) <= set(snapshot)
    assert (snapshot["N"], snapshot["gridsize"], snapshot["n_filters_scale"], snapshot["nphotons"]) == (32, 2, 1, 1e6)
    assert (snapshot["input_scale"], snapshot["intensity_scale"]) == (0.25, 31.25)
    assert snapshot["train_data_file_path"] == "/data/scan.npz"  # the legacy key name, a plain string
    assert params.cfg == params.DEFAULT_CFG  # building a snapshot never touches the global params.cfg


def test_a_record_built_in_code_needs_only_the_configs_and_scales() -> None:
    record = CheckpointRecord(training=TrainingConfig(model=ModelConfig(N=64)), training_scale=1.0, intensity_scale=2.0)
    assert record.params_snapshot()["N"] == 64 and record.train_data_sha256 == "" and record.probe_modes == 1


def test_the_record_carries_what_distillation_did_and_older_checkpoints_say_none() -> None:
    assert CheckpointRecord.from_hparams(HPARAMS).distillation is None
    summary = {"weight": 1.0, "iterations": 74, "seconds": 0.57, "stopped": "converged", "amplitude_error": [0.006, 2e-4]}
    record = CheckpointRecord.from_hparams({**HPARAMS, "distillation": summary,
                                            "training_config": {**HPARAMS["training_config"], "distill_weight": 1.0}})
    assert record.distillation == summary and record.training.distill_weight == 1.0
    assert record.recipe()["training.distill_weight"] == 1.0 and record.recipe()["training.distill_iterations"] == "auto"


@pytest.mark.parametrize(("change", "message"), [
    ({"input_scale": None}, r"input_scale"),
    ({"model_config": {"N": 32, "gridsize": 2, "bogus": 1}}, r"unknown ModelConfig keys \['bogus'\]"),
    ({"distillation": "74 iterations"}, r"`distillation` must be a mapping or None, got str"),
])
def test_foreign_hyper_parameters_are_refused(change: dict, message: str) -> None:
    hparams = {k: v for k, v in {**HPARAMS, **change}.items() if v is not None}
    with pytest.raises(ModelArchiveError, match=message):
        CheckpointRecord.from_hparams(hparams)
