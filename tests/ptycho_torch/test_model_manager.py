"""The wts.h5.zip archive: round trip with identical predictions, and a clear message for every bad archive."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ptycho_torch import params
from ptycho_torch.checkpoint import load_generator
from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.errors import ModelArchiveError
from ptycho_torch.model_manager import TorchModelManager
from ptycho_torch.run_layout import ARCHIVE_NAME
from ptycho_torch.simulation import default_probe
from training.module import PtychoPINNModule

N = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint in Lightning's layout (state_dict + hyper_parameters) of a small random model."""
    torch.manual_seed(0)
    training = TrainingConfig(model=ModelConfig(N=N, n_filters_scale=1), nphotons=1e6)
    module = PtychoPINNModule.from_configs(training, PyTorchExecutionConfig(), probe=default_probe(N), training_scale=0.37)
    path = tmp_path_factory.mktemp("ckpt") / "best.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def archive(checkpoint, tmp_path_factory) -> Path:
    return TorchModelManager.save(checkpoint, tmp_path_factory.mktemp("run"), params_snapshot={"N": N, "gridsize": 1})


def test_save_writes_the_documented_layout(archive):
    assert archive.name == ARCHIVE_NAME
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["diffraction_to_obj/model.ckpt", "diffraction_to_obj/params.json",
                                         "manifest.json"]
        manifest = json.loads(zf.read("manifest.json"))
        snapshot = json.loads(zf.read("diffraction_to_obj/params.json"))
    assert manifest["backend"] == "pytorch" and manifest["version"] == "1.0"
    assert manifest["models"] == ["diffraction_to_obj"]
    assert manifest["torch_version"] == torch.__version__ and manifest["lightning_version"]
    assert snapshot == {"N": N, "gridsize": 1, "input_scale": pytest.approx(0.37),
                        "intensity_scale": pytest.approx(1e3 / 16), "_version": "1.0"}


def test_load_restores_params_and_predicts_identically(archive, checkpoint):
    original, _, probe = load_generator(checkpoint)
    params.cfg["N"] = 64
    loaded = TorchModelManager.load(archive)
    assert params.cfg["N"] == N and params.cfg["intensity_scale"] == pytest.approx(62.5)
    x = torch.rand(3, 1, N, N) * 5
    scale = torch.full((3,), 0.37)
    with torch.no_grad():
        for a, b in zip(original(x, scale), loaded.generator(x, scale), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_array_equal(loaded.probe, probe)
    assert loaded.record.training_scale == pytest.approx(0.37)


def test_load_accepts_the_run_folder(archive):
    assert TorchModelManager.load(archive.parent, restore_params=False).name == "diffraction_to_obj"


def _rewrite(source: Path, target: Path, *, drop: str | None = None, replace: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for name in zin.namelist():
            if name == drop:
                continue
            zout.writestr(name, (replace or {}).get(name, zin.read(name)))
    return target


def test_tensorflow_archive_is_named_and_never_unpickled(tmp_path):
    path = tmp_path / ARCHIVE_NAME
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.dill", b"\x80\x04not-to-be-unpickled")
        zf.writestr("diffraction_to_obj/model.keras", b"keras")
    with pytest.raises(ModelArchiveError, match=r"is a TensorFlow PtychoPINN archive .* never unpickled .* `ptychopinn train`"):
        TorchModelManager.load(path)


def test_missing_member_is_named(archive, tmp_path):
    broken = _rewrite(archive, tmp_path / ARCHIVE_NAME, drop="diffraction_to_obj/model.ckpt")
    with pytest.raises(ModelArchiveError, match=r"backend 'pytorch'\) has no member `diffraction_to_obj/model.ckpt`"
                       r".* incomplete; re-create it with TorchModelManager.save"):
        TorchModelManager.load(broken)


def test_truncated_archive_says_corrupt_or_truncated(archive, tmp_path):
    truncated = tmp_path / ARCHIVE_NAME
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ModelArchiveError, match="not a readable zip archive .* corrupt or truncated"):
        TorchModelManager.load(truncated)


def test_corrupt_checkpoint_member_is_named(archive, tmp_path):
    data = bytearray(zipfile.ZipFile(archive).read("diffraction_to_obj/model.ckpt"))
    data[100:120] = b"\x00" * 20
    tampered = _rewrite(archive, tmp_path / ARCHIVE_NAME, replace={"diffraction_to_obj/model.ckpt": bytes(data)})
    with pytest.raises(ModelArchiveError, match=r"member `diffraction_to_obj/model.ckpt` .* does not match its sha256"):
        TorchModelManager.load(tampered)


def test_flipped_bytes_inside_the_zip_fail_the_crc(archive, tmp_path):
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("diffraction_to_obj/model.ckpt")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 50
    raw[start:start + 8] = bytes(b ^ 0xFF for b in raw[start:start + 8])
    path = tmp_path / ARCHIVE_NAME
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelArchiveError, match=r"member `diffraction_to_obj/model.ckpt` of .* is corrupt"):
        TorchModelManager.load(path)


def test_other_backend_and_unknown_model_are_refused(archive, tmp_path):
    manifest = json.loads(zipfile.ZipFile(archive).read("manifest.json"))
    other = _rewrite(archive, tmp_path / "tf.zip",
                     replace={"manifest.json": json.dumps({**manifest, "backend": "tensorflow"}).encode()})
    with pytest.raises(ModelArchiveError, match=r"`backend` in .* must be 'pytorch', got 'tensorflow'"):
        TorchModelManager.load(other)
    with pytest.raises(ModelArchiveError, match=r"`model_name` must be one of \['diffraction_to_obj'\]"):
        TorchModelManager.load(archive, "autoencoder")


def test_missing_file_and_unjsonable_params_are_refused(checkpoint, tmp_path):
    with pytest.raises(ModelArchiveError, match="must be an existing file"):
        TorchModelManager.load(tmp_path / "nope.zip")
    with pytest.raises(ModelArchiveError, match=r"params.cfg\['probe'\] must be a JSON value"):
        TorchModelManager.save(checkpoint, tmp_path, params_snapshot={"probe": np.zeros((2, 2))})
