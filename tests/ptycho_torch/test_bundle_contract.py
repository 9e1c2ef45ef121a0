"""The model contract: one dtype table, one signature per (N, C), one Triton tensor entry."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from oracle import read_manifest, write_oracle_bundle

from ptycho_torch.bundle import INPUT_NAMES, OUTPUT_NAMES, Manifest, TensorSpec, tensor_specs
from ptycho_torch.bundle.dtypes import DTYPES, by_name, by_numpy, by_oip, by_onnx, by_ort
from ptycho_torch.bundle.triton import tensor_entry
from ptycho_torch.errors import BundleError, InvalidInput


@pytest.mark.parametrize("row", DTYPES, ids=lambda d: d.name)
def test_each_row_names_one_type_in_every_vocabulary(row) -> None:
    assert onnx.helper.tensor_dtype_to_np_dtype(row.onnx) == row.numpy
    assert by_name(row.name) is by_onnx(row.onnx) is by_oip(row.oip) is by_ort(row.ort) is by_numpy(row.numpy) is row
    assert by_numpy(row.numpy.newbyteorder(">")) is row
    assert row.triton == f"TYPE_{row.oip}"


def test_the_table_knows_the_usual_names_and_nothing_else() -> None:
    f32 = by_numpy(np.float32)
    assert (f32.name, f32.onnx, f32.oip, f32.ort, f32.triton) == ("float32", 1, "FP32", "tensor(float)", "TYPE_FP32")
    assert by_oip("FP64").ort == "tensor(double)" and by_name("float16").onnx == 10
    assert by_numpy(np.complex64) is None and by_oip("BYTES") is None and by_onnx(8) is None
    assert by_ort("tensor(string)") is None and by_name("complex64") is None


def test_the_signature_follows_n_and_channels() -> None:
    inputs, outputs = tensor_specs(16, 4)
    assert tuple(s.name for s in inputs) == INPUT_NAMES and tuple(s.name for s in outputs) == OUTPUT_NAMES
    assert [s.shape for s in (*inputs, *outputs)] == [("B", 4, 16, 16), ("B",), ("B", 4, 16, 16), ("B", 4, 16, 16)]
    assert {s.dtype for s in (*inputs, *outputs)} == {"float32"}


def test_triton_entry_drops_the_batch_axis_and_reshapes_per_item_scalars() -> None:
    diffraction, scale = tensor_specs(8, 1)[0]
    assert tensor_entry(diffraction) == {"name": "diffraction", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}
    assert tensor_entry(scale) == {"name": "scale", "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": []}}
    with pytest.raises(InvalidInput, match=r"`x` must have a leading dynamic batch axis only .* got float32 \[4, 'B'\]"):
        tensor_entry(TensorSpec(name="x", shape=(4, "B")))
    with pytest.raises(InvalidInput, match=r"numeric dtype for Triton, got complex64 \['B'\]"):
        tensor_entry(TensorSpec(name="x", shape=("B",), dtype="complex64"))


def test_a_manifest_whose_tensors_are_not_the_signature_of_its_n_and_c_is_refused(tmp_path) -> None:
    manifest = read_manifest(write_oracle_bundle(tmp_path / "b", N=32, gridsize=2))
    scale, diffraction = manifest.inputs[1], manifest.inputs[0]
    swapped = manifest.model_copy(update={"inputs": (scale, diffraction)}).to_json()
    with pytest.raises(BundleError, match=r"manifest\.json: `inputs` must be named \['diffraction', 'scale'\] for N=32, "
                                          r"C=4, got \['scale', 'diffraction'\]; re-export the bundle"):
        Manifest.from_json(swapped)
    half = diffraction.model_copy(update={"dtype": "float16"})
    with pytest.raises(BundleError, match=r"`inputs\.diffraction` must be float32 \['B', 4, 32, 32\] for N=32, C=4, "
                                          r"got float16 \['B', 4, 32, 32\]"):
        Manifest.from_json(manifest.model_copy(update={"inputs": (half, scale)}).to_json())
