"""Ptychodus' Train on our ONNX reconstructor: exported training data -> `ptychopinn train` +
`ptychopinn export --zip` (subprocesses) -> the new bundle is loaded and reconstructs; progress streams
through Ptychodus' own task monitor, Stop ends the training process and keeps its checkpoint, and a
failure reaches the log panel."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from ptychodus.api.io import save_diffraction_data, save_product
from ptychodus.api.reconstruct import prepare_reconstruct_input
from scans import N, OracleScan

from ptycho_torch.bundle import load_bundle
from ptycho_torch.checksums import sha256_file
from ptycho_torch.run_layout import RunLayout
from serving.ptychodus import install
from serving.ptychodus.onnx_reconstructor import OnnxReconstructor
from serving.ptychodus.registration import library_for
from serving.ptychodus.settings import PtychoPINNServeSettings
from serving.ptychodus.training import TEST_FILE, TRAIN_FILE

ALGORITHM = "ptychopinn-serve_onnx"


def test_train_runs_the_project_training_and_export_then_loads_the_new_bundle(
        oracle: OracleScan, tmp_path: Path, settings: PtychoPINNServeSettings) -> None:
    parameters = prepare_reconstruct_input(oracle.data, oracle.product)
    reconstructor = OnnxReconstructor(settings)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    reconstructor.export_training_data(inputs / TRAIN_FILE, parameters)
    settings.train_epochs.set_value(2)
    settings.train_batch_size.set_value(8)

    outputs = list(reconstructor.train(inputs, tmp_path / "outputs"))

    assert reconstructor.get_progress_goal() == 3  # 2 epochs, then the export
    progress = [output.progress for output in outputs]
    assert progress == sorted(progress) and progress[-1] == 3 and 2 in progress
    assert [loss.epoch for loss in outputs[-1].training_loss] == [1, 2]
    assert all(math.isfinite(loss.value) for loss in [*outputs[-1].training_loss, *outputs[-1].validation_loss])
    epochs = [json.loads(line) for line in RunLayout(tmp_path / "outputs" / "run").progress.read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[-1]["max_epochs"] == 2
    bundle_path = settings.bundle()
    assert bundle_path == tmp_path / "outputs" / "bundle.zip" and bundle_path.is_file()
    bundle = load_bundle(bundle_path)
    assert (bundle.N, bundle.gridsize) == (N, 1)
    assert bundle.manifest.provenance.train_data_sha256 == sha256_file(inputs / TRAIN_FILE)
    obj = next(reconstructor.reconstruct(parameters)).product.object_.get_layer(0)
    rows, cols = oracle.covered
    assert np.isfinite(obj).all() and np.count_nonzero(obj[rows, cols]) == obj[rows, cols].size


def _model_core_with_oracle(oracle: OracleScan, tmp_path: Path):
    from ptychodus.model import ModelCore

    install()
    save_diffraction_data(tmp_path / "diffraction.h5", oracle.data)
    save_product(tmp_path / "product.h5", oracle.product)
    core = ModelCore()
    diffraction = core.workflow_api.load_assembled_diffraction_data(tmp_path / "diffraction.h5")
    core.workflow_api.load_product(tmp_path / "product.h5", diffraction=diffraction)
    return core


def _training_processes(run: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(run) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def test_train_streams_progress_and_stop_ends_the_process_keeping_a_checkpoint(
        oracle: OracleScan, tmp_path: Path) -> None:
    core = _model_core_with_oracle(oracle, tmp_path)
    with core:
        api = core.processing_core.processing_api
        settings = library_for(api).settings
        settings.train_epochs.set_value(500)  # far more than the test waits for
        settings.train_batch_size.set_value(8)
        monitor = api.task_monitor
        inputs = tmp_path / "inputs"
        inputs.mkdir()
        api.export_training_data(inputs / TRAIN_FILE, product_index=0, algorithm=ALGORITHM)
        runs = monitor.get_completed_runs()

        api.train(inputs, inputs, product_index=0, algorithm=ALGORITHM)  # the GUI's Train: not blocking
        try:
            deadline = time.monotonic() + 300
            while (monitor.get_progress() < 1 and monitor.get_completed_runs() == runs
                   and time.monotonic() < deadline):
                time.sleep(0.2)
            assert monitor.is_processing, list(monitor.get_log_handler().messages())
            assert monitor.get_progress() >= 1 and monitor.get_progress_goal() == 501  # moving, not stuck at 0 %
            run = inputs / "run"
            assert _training_processes(run)
        finally:
            monitor.stop_processing()  # the Stop button
            assert monitor.wait_for_completion_after(runs, timeout=120)
        assert monitor.get_last_error() is None
        assert not _training_processes(run)
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert not (inputs / "bundle.zip").exists()
        log = "\n".join(monitor.get_log_handler().messages())
        assert "training stopped after" in log and "checkpoint kept" in log, log


@pytest.mark.parametrize(("broken", "message"), [
    ("missing", f"must be a scan NPZ or a directory holding {TRAIN_FILE}"),  # found before any process starts
    ("test-data", "`ptychopinn train` failed (exit"),  # found by the training process
])
def test_a_failed_training_reaches_the_log_panel(broken: str, message: str, oracle: OracleScan,
                                                  tmp_path: Path) -> None:
    core = _model_core_with_oracle(oracle, tmp_path)
    with core:
        api = core.processing_core.processing_api
        library_for(api).settings.train_epochs.set_value(1)
        inputs = tmp_path / "inputs"
        inputs.mkdir()
        if broken == "test-data":
            api.export_training_data(inputs / TRAIN_FILE, product_index=0, algorithm=ALGORITHM)
            (inputs / TEST_FILE).write_bytes(b"not an npz")
        with pytest.raises(Exception, match=message.replace("(", r"\(")):
            api.train(inputs, inputs, product_index=0, algorithm=ALGORITHM, block=True)
        errors = [m for m in api.task_monitor.get_log_handler().messages() if "[ERROR]" in m]
        assert errors and "Training failed:" in errors[0] and message in errors[0], errors
