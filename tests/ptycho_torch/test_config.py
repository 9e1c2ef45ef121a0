"""The config bridge: KEY_MAPPINGS renames, None never overwrites, validation names the field."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from ptycho_torch import params
from ptycho_torch.config import (
    KEY_MAPPINGS,
    NO_EFFECT,
    InferenceConfig,
    LegacyKnobWarning,
    ModelConfig,
    TrainingConfig,
    config_from_dict,
    dataclass_to_legacy_dict,
    update_legacy_dict,
)
from ptycho_torch.errors import ConfigError


def test_renames_flatten_model_and_stringify_paths():
    config = TrainingConfig(
        model=ModelConfig(N=128, gridsize=2, object_big=False, probe_big=False, probe_mask=True),
        train_data_file=Path("/data/train.npz"), test_data_file=Path("/data/test.npz"),
        output_dir=Path("runs/a"), probe_trainable=True, intensity_scale_trainable=False, positions_provided=False,
    )
    legacy = dataclass_to_legacy_dict(config)
    expected = {
        "object.big": False, "probe.big": False, "probe.mask": True, "probe.trainable": True,
        "intensity_scale.trainable": False, "positions.provided": False, "output_prefix": "runs/a",
        "train_data_file_path": "/data/train.npz", "test_data_file_path": "/data/test.npz",
        "N": 128, "gridsize": 2,
    }
    assert {key: legacy[key] for key in expected} == expected
    assert not set(KEY_MAPPINGS) & set(legacy), "old names must not survive the rename"
    assert "model" not in legacy


def test_update_writes_into_cfg_and_none_never_overwrites():
    params.cfg["test_data_file_path"] = "kept.npz"
    params.cfg["n_groups"] = 77
    update_legacy_dict(params.cfg, TrainingConfig(model=ModelConfig(gridsize=2), nphotons=1e6))
    assert params.cfg["gridsize"] == 2
    assert params.cfg["nphotons"] == 1e6
    assert params.cfg["test_data_file_path"] == "kept.npz"  # test_data_file is None
    assert params.cfg["n_groups"] == 77  # n_groups is None
    update_legacy_dict(params.cfg, InferenceConfig(model=ModelConfig(N=32), model_path=Path("m.zip")))
    assert params.cfg["N"] == 32 and params.cfg["model_path"] == "m.zip"


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: ModelConfig(N=48), "N"),
        (lambda: ModelConfig(N=16), "N"),
        (lambda: ModelConfig(gridsize=0), "gridsize"),
        (lambda: ModelConfig(amp_activation="tanh"), "amp_activation"),
        (lambda: TrainingConfig(nphotons=-1.0), "nphotons"),
        (lambda: TrainingConfig(mae_weight=-0.1), "mae_weight"),
        (lambda: TrainingConfig(nll_weight=2.0), "nll_weight"),
        (lambda: TrainingConfig(batch_size=12), "batch_size"),
        (lambda: TrainingConfig(model=ModelConfig(gridsize=2), neighbor_count=3), "neighbor_count"),
        (lambda: TrainingConfig(distill_weight=-0.5), "distill_weight"),
        (lambda: TrainingConfig(distill_weight=float("nan")), "distill_weight"),
        (lambda: TrainingConfig(distill_weight=float("inf")), "distill_weight"),
        (lambda: TrainingConfig(distill_weight=True), "distill_weight"),
        (lambda: TrainingConfig(distill_iterations=0), "distill_iterations"),
        (lambda: TrainingConfig(distill_iterations="many"), "distill_iterations"),
        (lambda: TrainingConfig(distill_iterations=2.5), "distill_iterations"),
        (lambda: TrainingConfig(probe_learning_rate=0.0), "probe_learning_rate"),
        (lambda: TrainingConfig(probe_learning_rate=float("nan")), "probe_learning_rate"),
    ],
)
def test_validation_names_the_field(build, field):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        build()


def test_distillation_and_trainable_probe_settings_that_are_accepted():
    assert TrainingConfig().distill_weight == 0.0 and TrainingConfig().distill_iterations == "auto"
    config = TrainingConfig(distill_weight=2, distill_iterations=40, probe_trainable=True, probe_learning_rate=1e-4)
    assert (config.distill_weight, config.distill_iterations, config.probe_learning_rate) == (2, 40, 1e-4)
    legacy = dataclass_to_legacy_dict(config)  # the legacy bridge key of the trainable probe is kept
    assert legacy["probe.trainable"] is True and legacy["distill_weight"] == 2


def test_config_from_dict_builds_nested_and_rejects_unknown_keys():
    config = config_from_dict(TrainingConfig, {"model": {"N": 32, "gridsize": 2}, "train_data_file": "a.npz"})
    assert config.model.channels == 4 and config.train_data_file == Path("a.npz")
    with pytest.raises(ConfigError, match="unknown TrainingConfig keys \\['nepoch'\\]"):
        config_from_dict(TrainingConfig, {"nepoch": 3})


@pytest.mark.parametrize(
    ("config", "knob"),
    [
        (TrainingConfig(realspace_weight=0.5), "realspace_weight"),
        (TrainingConfig(realspace_mae_weight=0.1), "realspace_mae_weight"),
        (TrainingConfig(intensity_scale_trainable=False), "intensity_scale_trainable"),
        (TrainingConfig(positions_provided=False), "positions_provided"),
        (TrainingConfig(sequential_sampling=True), "sequential_sampling"),
        (InferenceConfig(debug=True), "debug"),
    ],
)
def test_a_legacy_knob_without_effect_warns_once_naming_it_and_the_alternative(config, knob):
    cfg = dict(params.DEFAULT_CFG)
    with pytest.warns(LegacyKnobWarning) as caught:
        update_legacy_dict(cfg, config)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"`{knob}` = {getattr(config, knob)!r} has no effect") and "\n" not in message
    assert message.split("; ", 1)[1] == NO_EFFECT[knob]  # what to use instead
    assert caught[0].filename == __file__  # points at the caller of the bridge


def test_live_knobs_and_defaults_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", LegacyKnobWarning)
        update_legacy_dict({}, TrainingConfig(model=ModelConfig(gridsize=2, probe_mask=True), nphotons=1e6,
                                              nll_weight=0.5, mae_weight=0.5, n_subsample=10, subsample_seed=3,
                                              probe_trainable=True, distill_weight=1.0))
        update_legacy_dict({}, InferenceConfig(model=ModelConfig(N=32), model_path=Path("m.zip")))


def test_no_effect_knobs_are_fields_that_no_module_reads():
    """NO_EFFECT is true of the code: each name is a config field, and no module of the packages reads it
    (an attribute read that is not a method call). Implementing one fails here: take it off NO_EFFECT."""
    import ast
    import dataclasses

    root = Path(__file__).resolve().parents[2]
    fields = {f.name for cls in (ModelConfig, TrainingConfig, InferenceConfig) for f in dataclasses.fields(cls)}
    assert set(NO_EFFECT) <= fields
    readers = []
    for package in ("ptycho_torch", "training", "export", "serving", "ptychopinn"):
        for path in (root / package).rglob("*.py"):
            if path == root / "ptycho_torch" / "config.py":
                continue
            tree = ast.parse(path.read_text())
            called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
            readers += [f"{path.relative_to(root)}:{node.lineno} .{node.attr}" for node in ast.walk(tree)
                        if isinstance(node, ast.Attribute) and node.attr in NO_EFFECT and id(node) not in called]
    assert readers == []
