"""The Triton model repository inside a bundle: ``triton/<name>/config.pbtxt`` + ``<version>/model.onnx``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from export.options import ExportOptions
from ptycho_torch.bundle import TensorSpec, triton_config_path, triton_model_path
from ptycho_torch.bundle.triton import tensor_entry


def _pbtxt_list(values: list[Any]) -> str:
    return f"[ {', '.join(map(str, values))} ]" if values else "[ ]"


def _tensor_block(spec: TensorSpec) -> str:
    """One ``input``/``output`` entry of ``config.pbtxt``: :func:`tensor_entry` as text."""
    entry = tensor_entry(spec)
    reshape = f"\n    reshape: {{ shape: {_pbtxt_list(entry['reshape']['shape'])} }}" if "reshape" in entry else ""
    return (f'  {{\n    name: "{entry["name"]}"\n    data_type: {entry["data_type"]}\n'
            f"    dims: {_pbtxt_list(entry['dims'])}{reshape}\n  }}")


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
