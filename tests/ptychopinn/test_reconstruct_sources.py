"""``ptychopinn reconstruct --model`` from every torch source (a run folder, its ``.ckpt``, a
``wts.h5.zip``, an MLflow ``runs:/`` URI) gets what ``--model BUNDLE`` gets: the same options,
refinement and data fit (:func:`ptychopinn.runners.runner_for`). One tiny model is trained here for
real (two optimiser steps) and exported, so the checkpoint and its bundle can be compared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from export.verify import FP32_TOLERANCE
from ptycho_torch import params
from ptycho_torch.simulation import simulate
from ptychopinn.cli import main as cli_main

N = 32
PIXEL_SIZE_M = 1e-8
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Trained:
    run: Path
    """The ``ptychopinn train`` run folder (``checkpoints/best.ckpt``, no ``wts.h5.zip``)."""
    bundle: Path
    """``ptychopinn export`` of ``run/checkpoints/best.ckpt``."""
    scan: Path
    """A held-out scan at N (contract NPZ)."""

    @property
    def checkpoint(self) -> Path:
        return self.run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("sources")
    scan = simulate(object_kind="lines", N=N, n_positions=56, nphotons=1e6, object_size=3 * N, seed=0)
    scan.metadata["pixel_size_m"] = PIXEL_SIZE_M  # recorded by the training run, and by the export
    train = scan.subset(np.arange(32)).to_file(root / "train.npz")
    test = scan.subset(np.arange(32, 56)).to_file(root / "test.npz")
    run = root / "run"
    assert cli_main(["train", "--train-data", str(train), "--test-data", str(test), "--output-dir", str(run),
                     "--n", str(N), "--n-filters-scale", "1", "--batch-size", "16", "--epochs", "1", "--seed", "0",
                     "--accelerator", "cpu", "--logger", "none", "--no-progress-bar"]) == 0
    trained = Trained(run=run, bundle=root / "bundle", scan=test)
    assert cli_main(["export", "--checkpoint", str(trained.checkpoint), "--out", str(trained.bundle)]) == 0
    return trained


def _reconstruct(model: str | Path, scan: Path, out: Path, *extra: str) -> Path:
    assert cli_main(["reconstruct", "--model", str(model), "--data", str(scan), "--out", str(out), *extra]) == 0
    return out / "reconstruction.cxi"


def _object(cxi_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The complex object and its coverage of a product."""
    with h5py.File(cxi_path) as cxi:
        return cxi["entry_1/image_1/data"][()], cxi["entry_1/image_1/coverage"][()]


@pytest.mark.parametrize("source", ["run", "checkpoint"])
def test_a_run_folder_and_its_checkpoint_refine_and_keep_the_data_fit(trained: Trained, tmp_path: Path, source: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    model = trained.run if source == "run" else trained.checkpoint
    caplog.set_level("INFO", logger="ptychopinn")
    cxi_path = _reconstruct(model, trained.scan, tmp_path / "out", "--refine", "5")

    with h5py.File(cxi_path) as cxi:
        process = cxi["entry_1/process_1"]
        assert process["model"][()].decode() == str(model)
        assert int(process["refine_iterations"][()]) == 5
        fit = process["data_fit"]
        assert fit["nll"].shape == fit["r_factor"].shape == (24,)
        assert np.isfinite(fit["nll"][()]).all() and (fit["r_factor"][()] > 0).all()
        iterations = json.loads(fit["iterations"][()])
        assert len(iterations) == 6  # the network's object, then 5 refinement iterations
        assert iterations[-1]["nll_median"] == pytest.approx(float(fit["nll_median"][()]))
        assert iterations[-1]["r_factor_median"] < iterations[0]["r_factor_median"]  # refining fits the data better
        assert json.loads(fit["probe"][()]) == "request"  # the scan's probe, as with a bundle
    log = caplog.text
    assert f"running {model}" in log and "with torch on cpu" in log
    assert "data fit: Poisson NLL per pixel median" in log and "refine" in log


def test_the_checkpoint_gives_its_bundles_object(trained: Trained, tmp_path: Path) -> None:
    torch_object, torch_coverage = _object(_reconstruct(trained.run, trained.scan, tmp_path / "torch"))
    onnx_object, onnx_coverage = _object(_reconstruct(trained.bundle, trained.scan, tmp_path / "onnx"))

    np.testing.assert_array_equal(torch_coverage, onnx_coverage)
    covered = onnx_coverage > 0
    assert covered.sum() > 1000
    difference = np.abs(torch_object - onnx_object)[covered]
    assert difference.max() <= 2 * FP32_TOLERANCE * max(1.0, np.abs(onnx_object).max())
    with h5py.File(tmp_path / "torch" / "reconstruction.cxi") as torch_cxi, \
            h5py.File(tmp_path / "onnx" / "reconstruction.cxi") as onnx_cxi:
        assert torch_cxi["entry_1/process_1/scale"][()] == onnx_cxi["entry_1/process_1/scale"][()]
        assert float(torch_cxi["entry_1/process_1/data_fit/nll_median"][()]) == pytest.approx(
            float(onnx_cxi["entry_1/process_1/data_fit/nll_median"][()]), rel=1e-4)


def test_an_archive_and_an_mlflow_uri_give_the_checkpoints_object_and_leave_params_cfg(
        trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from ptycho_torch.mlflow_store import file_store_allowed
    from ptycho_torch.model_manager import TorchModelManager

    archive = TorchModelManager.save(trained.checkpoint, tmp_path / "archived")
    store = (tmp_path / "mlruns").as_uri()
    with file_store_allowed():
        client = MlflowClient(tracking_uri=store)
        run_id = client.create_run(client.create_experiment("sources")).info.run_id
        client.log_artifact(run_id, str(archive), artifact_path="model")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    params.cfg["N"] = 7  # a caller's setting: loading a model must not overwrite it
    before = dict(params.cfg)

    expected, _ = _object(_reconstruct(trained.checkpoint, trained.scan, tmp_path / "ckpt", "--refine", "2"))
    for name, model in (("archive", archive), ("folder", archive.parent), ("mlflow", f"runs:/{run_id}/model")):
        cxi_path = _reconstruct(model, trained.scan, tmp_path / name, "--refine", "2")
        np.testing.assert_array_equal(_object(cxi_path)[0], expected)
        with h5py.File(cxi_path) as cxi:
            assert cxi["entry_1/process_1/model"][()].decode() == str(model)
    assert params.cfg == before


BLOCKED_RUN = textwrap.dedent("""
    import importlib.abc, sys

    class _Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in sys.argv[1].split(","):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

    sys.meta_path.insert(0, _Blocked())
    from ptycho_torch import params
    from ptychopinn.cli import main

    before = dict(params.cfg)
    code = main(["reconstruct", "--model", *sys.argv[2:]])
    assert params.cfg == before, "params.cfg was written"
    print(sorted({m.split(".")[0] for m in sys.modules} & {"torch", "lightning", "pytorch_lightning"}))
    sys.exit(code)
""")


@pytest.mark.parametrize(("source", "blocked", "imported"), [
    ("checkpoint", "lightning,pytorch_lightning", "['torch']"),
    ("bundle", "torch,lightning,pytorch_lightning", "[]"),
], ids=["checkpoint-without-lightning", "bundle-without-torch"])
def test_a_source_needs_only_what_it_runs_with(trained: Trained, tmp_path: Path, source: str, blocked: str,
                                              imported: str) -> None:
    model = trained.checkpoint if source == "checkpoint" else trained.bundle
    done = subprocess.run([sys.executable, "-c", BLOCKED_RUN, blocked, str(model), "--data", str(trained.scan),
                           "--refine", "2", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == imported
    assert (tmp_path / "out" / "reconstruction.cxi").stat().st_size > 0


def test_every_source_refuses_a_scan_at_another_pixel_size_alike(trained: Trained, tmp_path: Path, capsys) -> None:
    """The checkpoint records the training scan's pixel size, so a torch source checks it as a bundle does
    (it used to know none and reconstructed at the wrong scale without a word)."""
    from ptycho_torch.data import RawData

    scan = RawData.from_file(trained.scan)
    scan.metadata["pixel_size_m"] = 2 * PIXEL_SIZE_M
    other = scan.to_file(tmp_path / "other.npz")
    messages = set()
    for model in (trained.run, trained.checkpoint, trained.bundle):
        code = cli_main(["reconstruct", "--model", str(model), "--data", str(other), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and "the scan's object pixel size 2e-08 m differs from model" in err, err
        messages.add(err.split("training pixel size", 1)[1])
    assert messages == {" 1e-08 m (ratio 2.000); the network only works at its training scale: crop or bin the "
                        "detector so the pixel sizes match, or use a model trained at this pixel size\n"}
