"""Can the installed onnxruntime load a bundle's graph? Answered when the bundle is loaded.

A graph records the ONNX IR version and the opset of each operator domain it was written for. An
onnxruntime older than those refuses the graph when a session is created, deep in its C++ loader,
with a multi-line message. :func:`check_runtime` asks the installed onnxruntime the same question
with a one-node graph stamped with the same IR version and opsets (milliseconds, cached), so
``load_bundle`` — and with it ``inspect``, ``serve``, ``reconstruct --model`` and Ptychodus' Load
Model — refuses such a bundle in one line naming what it needs, what is installed, and the fix.
No version table to keep up to date: the runtime itself answers.
"""

from __future__ import annotations

import functools
import re
from importlib import metadata
from typing import TYPE_CHECKING

from ptycho_torch.errors import BundleError

if TYPE_CHECKING:
    import onnx

DEFAULT_DOMAIN = "ai.onnx"

_IR_LIMIT = re.compile(r"max supported IR version: (\d+)")
_OPSET_LIMIT = re.compile(r"official support for domain (\S+) is till opset (\d+)")


def runtime_version() -> str:
    """The installed onnxruntime distribution and version, e.g. ``onnxruntime 1.18.0``."""
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return "onnxruntime (version unknown)"


def graph_requirements(model: onnx.ModelProto) -> tuple[int, tuple[tuple[str, int], ...]]:
    """``(ir_version, ((domain, opset), ...))`` that an ``onnx.ModelProto`` is stamped with."""
    opsets = tuple(sorted((o.domain or DEFAULT_DOMAIN, int(o.version)) for o in model.opset_import))
    return int(model.ir_version), opsets


def describe(ir_version: int, opsets: tuple[tuple[str, int], ...]) -> str:
    """``IR version 10, opset ai.onnx 18``: the requirements in words."""
    return f"IR version {ir_version}, opset " + ", ".join(f"{domain} {version}" for domain, version in opsets)


@functools.lru_cache(maxsize=32)
def runtime_refusal(ir_version: int, opsets: tuple[tuple[str, int], ...]) -> str | None:
    """Why the installed onnxruntime refuses a graph with these stamps (a short phrase), or None."""
    import onnx
    from onnx import TensorProto, helper

    try:
        import onnxruntime as ort
    except ModuleNotFoundError:  # no runtime at all: the command that needs one says which extra
        return None

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    imports = [helper.make_opsetid("" if d == DEFAULT_DOMAIN else d, v) for d, v in opsets]
    if DEFAULT_DOMAIN not in dict(opsets):
        imports.append(helper.make_opsetid("", onnx.defs.onnx_opset_version()))
    probe = helper.make_model(graph, opset_imports=imports)
    probe.ir_version = ir_version
    try:
        ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime's pybind Fail/InvalidGraph/...: its text is all we get
        return short_reason(str(error))
    return None


def short_reason(message: str) -> str:
    """The useful part of an onnxruntime load error: its limit if it states one, else its last line."""
    if match := _IR_LIMIT.search(message):
        return f"it supports IR version <= {match.group(1)}"
    if match := _OPSET_LIMIT.search(message):
        return f"it supports opset {match.group(1)} <= {match.group(2)}"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no reason given"
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : \S+ \S+\(.*?\) ", "", last)[:300]


def check_runtime(model: onnx.ModelProto, rel: str) -> None:
    """Raise :class:`BundleError` (one line) if the installed onnxruntime cannot load ``model``."""
    ir_version, opsets = graph_requirements(model)
    reason = runtime_refusal(ir_version, opsets)
    if reason is not None:
        raise BundleError(
            f"{rel}: needs ONNX {describe(ir_version, opsets)}, which the installed {runtime_version()} cannot "
            f"load ({reason}); upgrade it (pip install -U onnxruntime) or re-export the bundle with an older "
            "opset (ptychopinn export --opset 18)"
        )
