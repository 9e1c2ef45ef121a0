"""train_from_config: what `ptychopinn train` does after parsing, without the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

import training.run
from ptycho_torch.checksums import sha256_file
from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.data import RawData
from ptycho_torch.errors import ConfigError
from ptycho_torch.run_layout import RunLayout
from tests.training.conftest import NPHOTONS, N
from training.run import AUTO, train_from_config


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """The arguments each train() call would get (no training runs)."""
    seen: list[dict] = []
    monkeypatch.setattr(training.run, "train", lambda training, execution, **kwargs: seen.append(
        {"training": training, **kwargs}))
    return seen


def _config(tmp_path: Path, **changes) -> TrainingConfig:
    return TrainingConfig(model=ModelConfig(N=N, n_filters_scale=1), output_dir=tmp_path / "run", nphotons=5.0,
                          **changes)


def test_loads_the_scans_fills_nphotons_and_hashes_the_training_file(tmp_path, scan_files, calls) -> None:
    train, test = scan_files
    assert RawData.from_file(train).metadata["nphotons"] == NPHOTONS != 5.0
    train_from_config(_config(tmp_path, train_data_file=train, test_data_file=test), PyTorchExecutionConfig(),
                      nphotons_from_scan=True)
    train_from_config(_config(tmp_path, train_data_file=train), PyTorchExecutionConfig())
    filled, given = calls
    assert filled["training"].nphotons == NPHOTONS and given["training"].nphotons == 5.0
    assert filled["train_data_sha256"] == sha256_file(train) and filled["corpus"] is None
    assert len(filled["train_data"]) == 32 and len(filled["test_data"]) == 16 and given["test_data"] is None


def test_resume_auto_continues_the_run_only_when_it_has_a_last_checkpoint(tmp_path, scan_files, calls) -> None:
    config = _config(tmp_path, train_data_file=scan_files[0])
    train_from_config(config, PyTorchExecutionConfig(), resume=AUTO)
    last = RunLayout(config.output_dir).last_checkpoint
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    train_from_config(config, PyTorchExecutionConfig(), resume=Path(AUTO))  # as argparse gives it
    assert [call["resume"] for call in calls] == [None, last]


@pytest.mark.parametrize("sources", [{}, {"train_data_file": Path("a.npz"), "train_corpus": Path("corpus")}])
def test_exactly_one_training_source(tmp_path, sources, calls) -> None:
    with pytest.raises(ConfigError, match=r"^exactly one of `train_data_file` and `train_corpus` must be given"):
        train_from_config(_config(tmp_path, **sources), PyTorchExecutionConfig())
    assert calls == []
