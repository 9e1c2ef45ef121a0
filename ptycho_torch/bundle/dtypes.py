"""The one table of tensor element types: each row names one type in every vocabulary a bundle meets.

A type is ``float32`` in the manifest (numpy's name), ``np.float32`` in memory, element type 1 in an
ONNX graph, ``tensor(float)`` in onnxruntime, ``FP32`` in the Open Inference Protocol and
``TYPE_FP32`` in a Triton ``config.pbtxt``. The reader, the exporter's Triton config, the engine,
the OIP codec and the published OpenAPI schema all translate through :data:`DTYPES`. numpy + onnx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from onnx import TensorProto

__all__ = ["DTYPES", "Dtype", "by_name", "by_numpy", "by_onnx", "by_oip", "by_ort"]


@dataclass(frozen=True)
class Dtype:
    """One element type in every vocabulary (see the module docstring)."""

    name: str
    """numpy's name, the manifest's ``dtype``: ``float32``."""
    onnx: int
    """ONNX ``TensorProto`` element type: 1 for float32."""
    oip: str
    """Open Inference Protocol ``datatype``: ``FP32``."""
    ort: str
    """onnxruntime's ``NodeArg.type``: ``tensor(float)``."""

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype in native byte order."""
        return np.dtype(self.name)

    @property
    def triton(self) -> str:
        """Triton's ``data_type``: ``TYPE_`` + the OIP name for every numeric type (``TYPE_FP32``)."""
        return f"TYPE_{self.oip}"


DTYPES: Final = (
    Dtype("bool", TensorProto.BOOL, "BOOL", "tensor(bool)"),
    Dtype("uint8", TensorProto.UINT8, "UINT8", "tensor(uint8)"),
    Dtype("uint16", TensorProto.UINT16, "UINT16", "tensor(uint16)"),
    Dtype("uint32", TensorProto.UINT32, "UINT32", "tensor(uint32)"),
    Dtype("uint64", TensorProto.UINT64, "UINT64", "tensor(uint64)"),
    Dtype("int8", TensorProto.INT8, "INT8", "tensor(int8)"),
    Dtype("int16", TensorProto.INT16, "INT16", "tensor(int16)"),
    Dtype("int32", TensorProto.INT32, "INT32", "tensor(int32)"),
    Dtype("int64", TensorProto.INT64, "INT64", "tensor(int64)"),
    Dtype("float16", TensorProto.FLOAT16, "FP16", "tensor(float16)"),
    Dtype("float32", TensorProto.FLOAT, "FP32", "tensor(float)"),
    Dtype("float64", TensorProto.DOUBLE, "FP64", "tensor(double)"),
)
"""Every type the bundle format and the OIP endpoints accept, in the OIP specification's order."""

_BY_NAME: Final = {d.name: d for d in DTYPES}
_BY_ONNX: Final = {d.onnx: d for d in DTYPES}
_BY_OIP: Final = {d.oip: d for d in DTYPES}
_BY_ORT: Final = {d.ort: d for d in DTYPES}


def by_name(name: str) -> Dtype | None:
    """The row of a manifest ``dtype`` (numpy name), or None."""
    return _BY_NAME.get(name)


def by_numpy(dtype: npt.DTypeLike) -> Dtype | None:
    """The row of a numpy dtype, whatever its byte order, or None (complex, strings, objects)."""
    return _BY_NAME.get(np.dtype(dtype).name)


def by_onnx(elem_type: int) -> Dtype | None:
    """The row of an ONNX element type, or None."""
    return _BY_ONNX.get(elem_type)


def by_oip(datatype: str) -> Dtype | None:
    """The row of an OIP ``datatype``, or None."""
    return _BY_OIP.get(datatype)


def by_ort(type_name: str) -> Dtype | None:
    """The row of an onnxruntime ``NodeArg.type``, or None."""
    return _BY_ORT.get(type_name)
