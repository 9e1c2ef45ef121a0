"""The Triton model repository inside a bundle: ``triton/<name>/config.pbtxt`` + ``<version>/model.onnx``."""

from __future__ import annotations

import shutil
from pathlib import Path

from ptycho_torch.errors import ExportError
from export.options import ExportOptions
from ptycho_torch.bundle import BATCH_DIM, TensorSpec, triton_config_path, triton_model_path

_TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}


def _tensor_block(spec: TensorSpec) -> str:
    """One ``input``/``output`` entry; the leading batch dim is implicit (``max_batch_size > 0``)."""
    if spec.shape[0] != BATCH_DIM or BATCH_DIM in spec.shape[1:]:
        raise ExportError(f"`{spec.name}` may only have a leading dynamic batch dimension for Triton, got "
                          f"{list(spec.shape)}; fix the tensor specs")
    dims = list(spec.shape[1:])
    # A (B,) tensor is declared as dims [1] and reshaped to [] (the Triton idiom for per-sample scalars).
    reshape = "" if dims else "\n    reshape: { shape: [ ] }"
    return (f'  {{\n    name: "{spec.name}"\n    data_type: {_TRITON_DTYPES[spec.dtype]}\n'
            f"    dims: [ {', '.join(str(d) for d in dims or [1])} ]{reshape}\n  }}")


def triton_config(name: str, version: int, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], *,
                  max_batch_size: int = ExportOptions.max_batch_size, max_queue_delay_us: int = 100) -> str:
    """``config.pbtxt`` text for the onnxruntime backend with dynamic batching."""
    input_blocks = ",\n".join(_tensor_block(s) for s in inputs)
    output_blocks = ",\n".join(_tensor_block(s) for s in outputs)
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}\n"
        f"input [\n{input_blocks}\n]\noutput [\n{output_blocks}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
    )


def write_triton_repository(root: Path, onnx_path: Path, name: str, version: int, inputs: tuple[TensorSpec, ...],
                            outputs: tuple[TensorSpec, ...], *, max_batch_size: int = ExportOptions.max_batch_size) -> list[str]:
    """Write the repository under ``root/triton``; return the bundle-relative paths written."""
    config, model = triton_config_path(name), triton_model_path(name, version)
    (root / model).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, root / model)
    (root / config).write_text(triton_config(name, version, inputs, outputs, max_batch_size=max_batch_size))
    return [config, model]
