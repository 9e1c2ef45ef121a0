"""A bundle's tensors as Triton declares them: one ``input``/``output`` entry of a model configuration.

The exporter writes it as text into ``triton/<name>/config.pbtxt`` (:mod:`export.triton`) and the
server answers it as JSON on ``GET /v2/models/{name}/config`` (:mod:`serving.repository`), so both
say the same thing. numpy + onnx (through :mod:`.dtypes`).
"""

from __future__ import annotations

from typing import Any

from ptycho_torch.bundle.dtypes import by_name
from ptycho_torch.bundle.schema import BATCH_DIM, TensorSpec
from ptycho_torch.errors import InvalidInput

__all__ = ["tensor_entry"]


def tensor_entry(spec: TensorSpec) -> dict[str, Any]:
    """``{"name", "data_type", "dims"[, "reshape"]}`` for ``spec`` under ``max_batch_size > 0``: the
    leading batch axis is implicit, and a ``(B,)`` tensor is declared as dims ``[1]`` reshaped to
    ``[]`` (the Triton idiom for per-sample scalars). Raises :class:`InvalidInput` for a dynamic axis
    anywhere but first, or a dtype Triton is not told about."""
    dtype = by_name(spec.dtype)
    if spec.shape[:1] != (BATCH_DIM,) or BATCH_DIM in spec.shape[1:] or dtype is None:
        raise InvalidInput(f"`{spec.name}` must have a leading dynamic batch axis only and a numeric dtype for "
                           f"Triton, got {spec.dtype} {list(spec.shape)}; fix the tensor specs")
    dims = list(spec.shape[1:])
    entry: dict[str, Any] = {"name": spec.name, "data_type": dtype.triton, "dims": dims or [1]}
    if not dims:
        entry["reshape"] = {"shape": []}
    return entry
