"""ptycho_torch.bundle: the manifest schema round-trips, and every kind of broken bundle is refused
with a message naming the file and the reason. Uses the torch-free oracle bundle (a real ONNX graph)."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
from oracle import TRAINING_SCALE, read_manifest, rehash, write_oracle_bundle, zip_bundle

from ptycho_torch.bundle import FORMAT_VERSION, Manifest, TensorSpec, load_bundle, summarize
from ptycho_torch.errors import BundleError


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return write_oracle_bundle(tmp_path / "bundle", N=32, gridsize=2)


def test_valid_bundle_loads_with_typed_fields(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert (bundle.name, bundle.version, bundle.N, bundle.gridsize, bundle.channels) == ("oracle", 1, 32, 2, 4)
    assert bundle.training_scale == TRAINING_SCALE and bundle.stitch_M == 8 and bundle.intensity_scale == 1.0
    assert bundle.onnx_path == bundle_dir / "model.onnx" and bundle.root == bundle_dir
    assert bundle.probe.shape == (1, 32, 32) and bundle.probe.dtype == np.complex64
    assert bundle.params == {"N": 32, "gridsize": 2}
    assert bundle.manifest.inputs[0] == TensorSpec(name="diffraction", shape=("B", 4, 32, 32))
    text = summarize(bundle)
    assert "oracle v1" in text and "N=32 gridsize=2 C=4 stitch_M=8" in text and "diffraction float32" in text


def test_manifest_json_round_trip(bundle_dir: Path) -> None:
    manifest = read_manifest(bundle_dir)
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert json.loads(manifest.to_json())["format_version"] == FORMAT_VERSION


def test_zip_bundle_loads_and_its_extraction_is_removed(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = load_bundle(zip_bundle(bundle_dir, tmp_path / "b.zip"))
    root = bundle.root
    assert root != bundle_dir and (root / "model.onnx").is_file() and bundle.source == tmp_path / "b.zip"
    assert bundle.manifest == read_manifest(bundle_dir)
    del bundle
    gc.collect()
    assert not root.exists()


def test_tampered_file_is_refused(bundle_dir: Path) -> None:
    data = bytearray((bundle_dir / "model.onnx").read_bytes())
    data[-5] ^= 0xFF
    (bundle_dir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx: checksum mismatch, sha256 must be [0-9a-f]{64}, got"):
        load_bundle(bundle_dir)


def test_truncated_files_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    archive = zip_bundle(bundle_dir, tmp_path / "b.zip")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(BundleError, match=r"b\.zip is not a readable zip .*truncated or damaged"):
        load_bundle(archive)
    probe = bundle_dir / "probe.npy"
    probe.write_bytes(probe.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"probe\.npy: checksum mismatch"):
        load_bundle(bundle_dir)
    manifest = bundle_dir / "manifest.json"
    manifest.write_text(manifest.read_text()[:200])
    with pytest.raises(BundleError, match=r"manifest\.json is not valid JSON .*truncated"):
        load_bundle(bundle_dir)


def test_unknown_format_version_is_refused(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=rf"`format_version` must be {FORMAT_VERSION}, got {FORMAT_VERSION + 1}"):
        load_bundle(bundle_dir)


def test_manifest_shapes_that_disagree_with_the_graph_are_refused(bundle_dir: Path) -> None:
    manifest = read_manifest(bundle_dir)
    item = ("B", 4, 64, 64)
    rehash(bundle_dir, manifest.model_copy(update={
        "N": 64, "inputs": (TensorSpec(name="diffraction", shape=item), TensorSpec(name="scale", shape=("B",))),
        "outputs": (TensorSpec(name="amplitude", shape=item), TensorSpec(name="phase", shape=item))}))
    (bundle_dir / "params.json").write_text("{}")
    rehash(bundle_dir)
    with pytest.raises(BundleError, match=r"model\.onnx: graph `inputs\.diffraction` must be float32 \['B', 4, 64, "
                                          r"64\] as in manifest\.json, got float32 \['B', 4, 32, 32\]"):
        load_bundle(bundle_dir)


def test_inconsistent_manifest_and_probe_shapes_are_refused(bundle_dir: Path) -> None:
    manifest = read_manifest(bundle_dir)
    rehash(bundle_dir, manifest.model_copy(update={"gridsize": 1}))
    with pytest.raises(BundleError, match=r"`channels` must be gridsize\*\*2 = 1, got 4"):
        load_bundle(bundle_dir)
    rehash(bundle_dir, manifest)
    np.save(bundle_dir / "probe.npy", np.ones((16, 16), np.complex64))
    rehash(bundle_dir)
    with pytest.raises(BundleError, match=r"probe\.npy: shape mismatch, must be complex64 .*N=32, got complex64 \(16, 16\)"):
        load_bundle(bundle_dir)


def test_pickles_are_never_loaded(bundle_dir: Path) -> None:
    np.save(bundle_dir / "probe.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    rehash(bundle_dir)
    with pytest.raises(BundleError, match=r"probe\.npy: must be a plain complex64 array, got one that needs pickle"):
        load_bundle(bundle_dir)
    (bundle_dir / "weights.pt").write_bytes(b"\x80\x04N.")
    rehash(bundle_dir)
    with pytest.raises(BundleError, match=r"weights\.pt: pickle files are never loaded from a bundle"):
        load_bundle(bundle_dir)


def test_missing_and_unlisted_files_are_refused(bundle_dir: Path) -> None:
    (bundle_dir / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match=r"notes\.txt: file not listed in manifest\.json"):
        load_bundle(bundle_dir)
    (bundle_dir / "notes.txt").unlink()
    (bundle_dir / "params.json").unlink()
    with pytest.raises(BundleError, match=r"params\.json: missing file listed in manifest\.json"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match=r"does not exist"):
        load_bundle(bundle_dir / "nowhere")


def test_schema_is_strict(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["surprise"] = 1
    with pytest.raises(BundleError, match=r"unknown keys \['surprise'\] in `manifest.json`"):
        Manifest.from_json(json.dumps(data))
    del data["surprise"]
    data["intensity_scale"] = "big"
    with pytest.raises(BundleError, match=r"`manifest.json.intensity_scale` should be a valid number, got 'big'"):
        Manifest.from_json(json.dumps(data))
    data["intensity_scale"] = 1.0
    del data["N"]
    with pytest.raises(BundleError, match=r"missing keys \['N'\]"):
        Manifest.from_json(json.dumps(data))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("name", "../x", r"`manifest\.json\.name` string should match pattern '\^\[\\w-\]\+\$', got '\.\./x'"),
    ("name", "", r"`manifest\.json\.name` string should match pattern"),
    ("version", -1, r"`manifest\.json\.version` should be greater than or equal to 1, got -1"),
    ("version", 0, r"`manifest\.json\.version` should be greater than or equal to 1, got 0"),
])
def test_names_and_versions_that_export_refuses_are_refused_when_read(bundle_dir: Path, field, value, message) -> None:
    """A hand-edited name or version used to load: a model named `../x` (no URL reaches it, and its
    Triton folder would leave the repository) or version -1 (no Triton version folder)."""
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data[field] = value
    with pytest.raises(BundleError, match=message):
        Manifest.from_json(json.dumps(data))


def test_zip_members_outside_the_bundle_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    members = {p.name: p for p in bundle_dir.iterdir()} | {"../escape.txt": bundle_dir / "params.json"}
    with pytest.raises(BundleError, match=r"member `\.\./escape\.txt` must be a relative path inside the bundle"):
        load_bundle(zip_bundle(bundle_dir, tmp_path / "slip.zip", members))
    assert not (tmp_path / "escape.txt").exists()


def test_symbolic_links_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("not part of the bundle")
    (bundle_dir / "notes.txt").symlink_to(outside)
    with pytest.raises(BundleError, match=r"notes\.txt: symbolic links are never followed in a bundle"):
        load_bundle(bundle_dir)


def test_schema_errors_name_the_nested_field(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["inputs"][0]["shape"][2] = 0
    with pytest.raises(BundleError, match=r"`manifest\.json\.inputs\[0\]\.shape\[2\]` should be greater than 0, got 0"):
        Manifest.from_json(json.dumps(data))
    data["inputs"][0]["shape"][2] = 32
    data["normalization"]["default_policy"] = "guess"
    with pytest.raises(BundleError, match=r"`manifest\.json\.normalization\.default_policy` should be 'scan' or "
                                          r"'bundle', got 'guess'"):
        Manifest.from_json(json.dumps(data))
    data["normalization"]["default_policy"] = "scan"
    data["N"] = True
    with pytest.raises(BundleError, match=r"`manifest\.json\.N` should be a valid integer, got True"):
        Manifest.from_json(json.dumps(data))
