"""Ptychodus' Train on our ONNX reconstructor: exported training data -> `ptychopinn train` +
`ptychopinn export --zip` (subprocesses) -> the new bundle is loaded and reconstructs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from ptychodus.api.reconstruct import prepare_reconstruct_input
from scans import N, OracleScan

from ptycho_torch.bundle import load_bundle
from ptycho_torch.checksums import sha256_file
from serving.ptychodus.onnx_reconstructor import OnnxReconstructor
from serving.ptychodus.settings import PtychoPINNServeSettings
from serving.ptychodus.training import TRAIN_FILE


def test_train_runs_the_project_training_and_export_then_loads_the_new_bundle(
        oracle: OracleScan, tmp_path: Path, settings: PtychoPINNServeSettings) -> None:
    parameters = prepare_reconstruct_input(oracle.data, oracle.product)
    reconstructor = OnnxReconstructor(settings)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    reconstructor.export_training_data(inputs / TRAIN_FILE, parameters)
    settings.train_epochs.set_value(1)
    settings.train_batch_size.set_value(8)

    outputs = list(reconstructor.train(inputs, tmp_path / "outputs"))

    assert outputs[-1].progress == 1
    assert len(outputs[-1].training_loss) == 1 and math.isfinite(outputs[-1].training_loss[0].value)
    bundle_path = settings.bundle()
    assert bundle_path == tmp_path / "outputs" / "bundle.zip" and bundle_path.is_file()
    bundle = load_bundle(bundle_path)
    assert (bundle.N, bundle.gridsize) == (N, 1)
    assert bundle.manifest.provenance.train_data_sha256 == sha256_file(inputs / TRAIN_FILE)
    obj = next(reconstructor.reconstruct(parameters)).product.object_.get_layer(0)
    rows, cols = oracle.covered
    assert np.isfinite(obj).all() and np.count_nonzero(obj[rows, cols]) == obj[rows, cols].size
