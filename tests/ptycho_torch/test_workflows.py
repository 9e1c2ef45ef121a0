"""Workflow entry points end to end on a tiny simulated scan: train, stitch, archive, MLflow, reload, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ptycho_torch import params
from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.data import RawData
from ptycho_torch.errors import DataContractError, ModelArchiveError
from ptycho_torch.group_merge import merge_groups
from ptycho_torch.grouping import relative_offsets
from ptycho_torch.mlflow_store import tracking_uri
from ptycho_torch.model import build_generator
from ptycho_torch.simulation import simulate
from ptycho_torch.stitching import StitchResult
from ptycho_torch.workflows.components import (
    load_inference_bundle_torch,
    predict_patches,
    reassemble_torch,
    run_cdi_example_torch,
    save_outputs,
)
from ptychopinn.cli import main as cli_main

N = 32
M = 16
EXECUTION = PyTorchExecutionConfig(accelerator="cpu", enable_progress_bar=False, logger_backend="none")


@pytest.fixture(scope="module")
def scans() -> tuple[RawData, RawData]:
    scan = simulate(N=N, n_positions=64, nphotons=1e5, object_size=96, seed=1)
    return scan.subset(np.arange(40)), scan.subset(np.arange(40, 64))


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> TrainingConfig:
    return TrainingConfig(model=ModelConfig(N=N, n_filters_scale=1), batch_size=16, nepochs=2, nphotons=1e5,
                          output_dir=tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def example(scans, config):
    """One real (tiny) training run through the full workflow, MLflow tracking on."""
    train, test = scans
    return run_cdi_example_torch(train, test, config, M=M, do_stitching=True, execution_config=EXECUTION,
                                 enable_mlflow=True)


def test_run_cdi_example_returns_images_and_the_documented_results(example, scans, config):
    amplitude, phase, results = example
    for key in ("history", "history_epochs", "checkpoint", "backend", "intensity_scale", "input_scale",
                "models", "train_container", "test_container", "archive", "obj_tensor_full", "global_offsets",
                "recon_amp", "recon_phase", "stitched", "run_id", "model_uri"):
        assert key in results, key
    assert results["backend"] == "pytorch"
    assert results["intensity_scale"] == pytest.approx(np.sqrt(1e5) / (N / 2))
    assert Path(results["checkpoint"]).is_file() and results["archive"] == Path(config.output_dir) / "wts.h5.zip"
    assert len(results["history"]["train_loss"]) == len(results["history_epochs"]) == 2  # 2 epochs of 3 steps (40 groups, batch 16)
    assert results["history"]["loss"] == results["history"]["train_loss"]
    assert np.isfinite(results["history"]["val_loss"]).all()
    assert results["test_container"].diffraction.shape == (24, N, N, 1)

    stitched: StitchResult = results["stitched"]
    assert amplitude.dtype == phase.dtype == np.float32 and amplitude.shape == stitched.canvas.shape
    assert np.isfinite(amplitude).all() and np.all(np.abs(phase) <= np.pi)
    assert (amplitude[stitched.coverage > 0] > 0).all() and (amplitude[stitched.coverage == 0] == 0).all()
    # every test position is covered where the stitcher says it lands
    x0, y0 = stitched.origin
    test = scans[1]
    cols, rows = np.floor(test.xcoords + x0).astype(int), np.floor(test.ycoords + y0).astype(int)
    assert (stitched.coverage[rows, cols] > 0).all()
    np.testing.assert_array_equal(results["global_offsets"], np.stack([test.xcoords, test.ycoords], axis=1))


def test_archive_and_checkpoint_and_mlflow_reload_predict_identically(example):
    _, _, results = example
    original = results["models"]["diffraction_to_obj"]
    diffraction = np.moveaxis(results["test_container"].diffraction, -1, 1)
    scale = results["test_container"].input_scale
    expected = predict_patches(original, diffraction, scale)
    sources = [results["archive"], results["archive"].parent, results["checkpoint"]]
    for source in sources:
        generator, snapshot = load_inference_bundle_torch(source)
        np.testing.assert_array_equal(predict_patches(generator, diffraction, scale), expected)
        assert snapshot["N"] == N and snapshot["input_scale"] == pytest.approx(results["input_scale"])
    tracking = tracking_uri(results["archive"].parent)
    generator, snapshot = load_inference_bundle_torch(results["model_uri"], tracking_uri=tracking)
    np.testing.assert_array_equal(predict_patches(generator, diffraction, scale), expected)
    assert params.cfg["N"] == N  # the loader restores params.cfg from the snapshot


def test_mlflow_run_records_history_and_the_archive(example, monkeypatch):
    from mlflow.tracking import MlflowClient

    _, _, results = example
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=tracking_uri(results["archive"].parent))
    run = client.get_run(results["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["N"] == str(N)
    assert [m.value for m in client.get_metric_history(results["run_id"], "train_loss")] == pytest.approx(
        results["history"]["train_loss"])
    assert [a.path for a in client.list_artifacts(results["run_id"], "model")] == ["model/wts.h5.zip"]


def test_bad_mlflow_uri_says_what_to_check(tmp_path):
    with pytest.raises(ModelArchiveError, match="could not be resolved .* tracking_uri"):
        load_inference_bundle_torch("runs:/0123456789abcdef/model", tracking_uri=(tmp_path / "mlruns").as_uri())
    with pytest.raises(ModelArchiveError, match="holds neither wts.h5.zip nor checkpoints"):
        load_inference_bundle_torch(tmp_path)


def test_config_is_bridged_before_anything_reads_it(scans, config):
    with pytest.raises(DataContractError, match="`test_data` must be given when do_stitching=True"):
        run_cdi_example_torch(scans[0], None, config, do_stitching=True, execution_config=EXECUTION)
    assert params.cfg["N"] == N and params.cfg["n_filters_scale"] == 1


def test_save_outputs_writes_pngs_and_npz(example, tmp_path):
    amplitude, phase, results = example
    paths = save_outputs(amplitude, phase, results, tmp_path / "out")
    for key in ("amplitude_png", "phase_png"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(paths["npz"]) as npz:
        np.testing.assert_array_equal(npz["amplitude"], amplitude)
        np.testing.assert_array_equal(npz["phase"], phase)
        np.testing.assert_array_equal(npz["origin"], results["stitched"].origin)


def test_reconstruct_command_matches_the_workflow(example, scans, tmp_path):
    _, _, results = example
    data = scans[1].to_file(tmp_path / "scan.npz")
    code = cli_main(["reconstruct", "--model", str(results["archive"]), "--data", str(data),
                     "--out", str(tmp_path / "out"), "--stitch-m", str(M)])
    assert code == 0
    with np.load(tmp_path / "out" / "reconstruction.npz") as npz:
        np.testing.assert_allclose(npz["amplitude"], results["recon_amp"], atol=1e-6)
    assert (tmp_path / "out" / "reconstructed_phase.png").is_file()


def test_reconstruct_command_reports_a_corrupt_archive_in_one_line(tmp_path, capsys, example, scans):
    bad = tmp_path / "wts.h5.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    data = scans[1].to_file(tmp_path / "scan.npz")
    assert cli_main(["reconstruct", "--model", str(bad), "--data", str(data), "--out", str(tmp_path)]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_flip_and_transpose_options(example):
    _, _, results = example
    model = results["models"]["diffraction_to_obj"]
    container = results["test_container"]
    _, _, plain = reassemble_torch(model, container, M=M)
    _, _, flipped = reassemble_torch(model, container, M=M, flip_x=True, transpose=True)
    np.testing.assert_array_equal(flipped["global_offsets"][:, 0], -plain["global_offsets"][:, 0])
    np.testing.assert_array_equal(flipped["obj_tensor_full"], plain["obj_tensor_full"].transpose(0, 2, 1))


def test_a_grouped_models_patches_are_merged_per_group_before_stitching(scans):
    """At gridsize 2 ``reassemble_torch`` stitches each group's merge, as ``ptychopinn reconstruct`` does."""
    torch.manual_seed(0)
    model = build_generator(ModelConfig(N=scans[1].N, gridsize=2, n_filters_scale=1)).eval()
    container = scans[1].generate_grouped_data(scans[1].N, gridsize=2, seed=0)
    _, _, results = reassemble_torch(model, container, M=M)
    raw = predict_patches(model, container.channels_first, container.input_scale)
    offsets = relative_offsets(scans[1].xcoords, scans[1].ycoords, container.nn_indices)
    np.testing.assert_allclose(results["obj_tensor_full"], merge_groups(raw, offsets).reshape(-1, *raw.shape[-2:]),
                               atol=1e-6)
    assert np.abs(results["obj_tensor_full"] - raw.reshape(results["obj_tensor_full"].shape)).max() > 1e-3
