"""gridsize 3 end to end with default options: ``ptychopinn train --gridsize 3`` trains (the
neighbour count follows C = 9 unless ``--neighbor-count`` says otherwise), ``ptychopinn export``
writes the bundle, and the held-out scan reconstructs over ``/v1/reconstruct`` and in Ptychodus, with
the ONNX reconstructor and the HTTP one (gridsize > 1: chunks through the remote runner, not a session)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scans import real_scan

from ptycho_torch.bundle import load_bundle
from ptycho_torch.checkpoint import load_generator
from ptycho_torch.data import load_siemens_star, spatial_split
from ptycho_torch.grouping import default_neighbor_count
from ptychopinn.cli import main
from serving.client import Client
from serving.ptychodus.http_reconstructor import HttpReconstructor
from serving.ptychodus.onnx_reconstructor import OnnxReconstructor
from serving.ptychodus.settings import PtychoPINNServeSettings

N = 32
TRAIN = ["--n", str(N), "--gridsize", "3", "--n-filters-scale", "1", "--batch-size", "8", "--epochs", "1",
         "--max-steps", "2", "--accelerator", "cpu", "--logger", "none", "--no-progress-bar", "--seed", "0"]


@pytest.fixture(scope="module")
def bundle_zip(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gridsize-3 model trained (two steps) on the real scan's top half and exported."""
    tmp = tmp_path_factory.mktemp("gridsize3")
    train, _ = spatial_split(load_siemens_star(data_dir / "siemens-star-small.npz.bz2", N))
    scan = train.to_file(tmp / "train.npz")
    assert main(["train", "--train-data", str(scan), "--output-dir", str(tmp / "run"), *TRAIN]) == 0
    checkpoint = tmp / "run" / "checkpoints" / "last.ckpt"
    assert load_generator(checkpoint)[1].training.neighbor_count == default_neighbor_count(9) == 9
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp / "bundle"), "--zip"]) == 0
    return tmp / "bundle.zip"


def test_neighbor_count_flag_is_recorded(data_dir: Path, tmp_path: Path) -> None:
    train, _ = spatial_split(load_siemens_star(data_dir / "siemens-star-small.npz.bz2", N))
    scan = train.to_file(tmp_path / "train.npz")
    run = tmp_path / "run"
    assert main(["train", "--train-data", str(scan), "--output-dir", str(run), "--neighbor-count", "12",
                 *TRAIN]) == 0
    assert load_generator(run / "checkpoints" / "last.ckpt")[1].training.neighbor_count == 12
    resolved = json.loads((run / "config.json").read_text())  # next to summary.json, readable by --config
    assert resolved["model"]["gridsize"] == 3 and resolved["training"]["neighbor_count"] == 12
    assert resolved["training"]["train_data_file"] == str(scan) and (run / "summary.json").is_file()
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.json"), "--output-dir", str(again), "--max-steps", "1",
                 "--no-progress-bar", "--logger", "none"]) == 0
    assert json.loads((again / "config.json").read_text())["training"]["neighbor_count"] == 12
    assert main(["train", "--train-data", str(scan), "--output-dir", str(tmp_path / "bad"), "--neighbor-count", "5",
                 *TRAIN]) == 2  # K must be >= C = 9: a one-line error, not a traceback


def test_gridsize3_reconstructs_over_http_and_in_ptychodus_with_default_options(
        bundle_zip: Path, data_dir: Path, settings: PtychoPINNServeSettings, serve) -> None:
    bundle = load_bundle(bundle_zip)
    assert (bundle.gridsize, bundle.channels) == (3, 9)
    held_out = real_scan(data_dir, n=N)

    server = serve(bundle_zip)
    with Client(server.url) as client:
        remote = client.reconstruct(held_out.patterns, held_out.positions)  # default options
    assert remote.n_patterns == remote.n_groups == len(held_out.patterns)
    covered = remote.coverage > 0
    assert covered.sum() > 1000 and np.isfinite(remote.amplitude).all() and remote.amplitude[covered].min() > 0

    settings.bundle_path.set_value(bundle_zip)  # every other setting at its default
    outputs = list(OnnxReconstructor(settings).reconstruct(held_out.reconstruct_input))
    obj = outputs[-1].product.object_.get_layer(0)
    assert np.isfinite(obj).all() and np.count_nonzero(obj) > 1000

    settings.server_url.set_value(server.url)
    settings.server_model.set_value(bundle.name)
    settings.chunk_size.set_value(len(held_out.patterns))  # one chunk: the whole scan, as the ONNX path
    whole = list(HttpReconstructor(settings).reconstruct(held_out.reconstruct_input))
    assert [o.progress for o in whole] == [1]
    np.testing.assert_allclose(whole[-1].product.object_.get_layer(0), obj, rtol=1e-5, atol=1e-6)

    size = -(-len(held_out.patterns) // 3)
    settings.chunk_size.set_value(size)  # three chunks, each grouped on its own
    reconstructor = HttpReconstructor(settings)
    outputs = list(reconstructor.reconstruct(held_out.reconstruct_input))
    assert [o.progress for o in outputs] == [1, 2, 3] and reconstructor.get_progress_goal() == 3
    covered = [np.count_nonzero(o.product.object_.get_layer(0)) for o in outputs]
    assert covered == sorted(covered) and covered[0] < covered[-1] and covered[-1] > 1000
    assert np.isfinite(outputs[-1].product.object_.get_layer(0)).all()
