"""An "oracle" bundle: a tiny hand-built ONNX graph whose outputs are known exactly.

``amplitude = diffraction * scale`` and ``phase = PHASE_FACTOR * diffraction`` (elementwise), so a
test can compute the expected output of any request with numpy, and any mix-up of items between
callers, batches or channels shows up as a wrong number. The bundle follows the manifest schema of
:mod:`ptycho_torch.bundle` and passes :func:`~ptycho_torch.bundle.load_bundle`.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ptycho_torch.bundle import (
    BATCH_DIM,
    NORMALIZATION_RULE,
    Manifest,
    Normalization,
    Provenance,
    TensorSpec,
    Verification,
)
from ptycho_torch.checksums import sha256_file

PHASE_FACTOR = 0.25
TRAINING_SCALE = 0.5


def oracle_outputs(diffraction: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the oracle graph returns, computed with numpy."""
    amplitude = diffraction * scale.reshape(-1, 1, 1, 1)
    return amplitude.astype(np.float32), (diffraction * np.float32(PHASE_FACTOR)).astype(np.float32)


def oracle_model(N: int, channels: int) -> onnx.ModelProto:
    """The ONNX graph: amplitude = diffraction * scale[:, None, None, None], phase = 0.25 * diffraction."""
    item = [BATCH_DIM, channels, N, N]
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["scale", "shape4"], ["scale4"]),
            helper.make_node("Mul", ["diffraction", "scale4"], ["amplitude"]),
            helper.make_node("Mul", ["diffraction", "factor"], ["phase"]),
        ],
        "oracle",
        [helper.make_tensor_value_info("diffraction", TensorProto.FLOAT, item),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, [BATCH_DIM])],
        [helper.make_tensor_value_info("amplitude", TensorProto.FLOAT, item),
         helper.make_tensor_value_info("phase", TensorProto.FLOAT, item)],
        initializer=[helper.make_tensor("shape4", TensorProto.INT64, [4], [-1, 1, 1, 1]),
                     helper.make_tensor("factor", TensorProto.FLOAT, [], [PHASE_FACTOR])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_oracle_bundle(root: Path, *, N: int = 32, gridsize: int = 1, name: str = "oracle",
                        stitch_M: int | None = None, version: int = 1, training_scale: float = TRAINING_SCALE,
                        pixel_size_m: float | None = None, bad_pixels: np.ndarray | None = None) -> Path:
    """Write a complete, checksummed oracle bundle into ``root`` and return it (``bad_pixels``: the
    optional (N, N) bool mask shipped as ``bad_pixels.npy``)."""
    root.mkdir(parents=True, exist_ok=True)
    channels = gridsize * gridsize
    onnx.save(oracle_model(N, channels), root / "model.onnx")
    (root / "params.json").write_text(json.dumps({"N": N, "gridsize": gridsize}))
    yy, xx = np.mgrid[:N, :N] - N / 2
    probe = np.exp(-(xx**2 + yy**2) / (N / 4) ** 2).astype(np.complex64)
    np.save(root / "probe.npy", probe)
    if bad_pixels is not None:
        np.save(root / "bad_pixels.npy", bad_pixels)
    files = {p.name: sha256_file(p) for p in sorted(root.iterdir()) if p.name != "manifest.json"}
    item = (BATCH_DIM, channels, N, N)
    manifest = Manifest(
        name=name, version=version, N=N, gridsize=gridsize, channels=channels, opset=17,
        inputs=(TensorSpec(name="diffraction", shape=item), TensorSpec(name="scale", shape=(BATCH_DIM,))),
        outputs=(TensorSpec(name="amplitude", shape=item), TensorSpec(name="phase", shape=item)),
        normalization=Normalization(rule=NORMALIZATION_RULE, training_scale=training_scale),
        intensity_scale=1.0, stitch_M=stitch_M or N // 4,
        provenance=Provenance(package_version="test", torch_version="none", onnx_version=onnx.__version__,
                              created="2024-01-01T00:00:00Z"),
        verification=Verification(inputs="oracle", n_samples=0, tolerance=0.0, errors={}),
        files=files, pixel_size_m=pixel_size_m,
    )
    (root / "manifest.json").write_text(manifest.to_json())
    return root


def read_manifest(root: Path) -> Manifest:
    """The validated manifest of the bundle folder ``root``."""
    return Manifest.from_json((root / "manifest.json").read_text())


def rehash(root: Path, manifest: Manifest | None = None) -> None:
    """Rewrite manifest.json with fresh checksums of every file (a consistent, re-signed bundle)."""
    manifest = manifest or read_manifest(root)
    files = {p.relative_to(root).as_posix(): sha256_file(p) for p in root.rglob("*")
             if p.is_file() and p.name != "manifest.json"}
    (root / "manifest.json").write_text(manifest.model_copy(update={"files": files}).to_json())


def zip_bundle(root: Path, archive: Path, members: dict[str, Path] | None = None) -> Path:
    """Zip ``members`` (archive name -> file; default: every file of ``root``) into ``archive``."""
    with zipfile.ZipFile(archive, "w") as zf:
        for name, path in (members or {p.relative_to(root).as_posix(): p for p in root.rglob("*")}).items():
            zf.write(path, name)
    return archive
