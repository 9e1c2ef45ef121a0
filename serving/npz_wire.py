"""The NPZ bodies of ``POST /v1/reconstruct``, for the server and the client alike.

Request arrays: ``patterns`` (S, N, N) real, ``positions`` (S, 2) ``[x, y]`` object pixels, optional
``probe`` (N, N) or (P, N, N) complex, optional ``mask`` (N, N) bool bad detector pixels, optional
``options`` (a 0-d string array holding a JSON object, see
:class:`~ptycho_torch.plan.ReconstructOptions`). Response arrays: ``amplitude``,
``phase``, ``coverage`` (H, W) float32, ``origin`` (2,) float64 ``[x0, y0]``, ``metadata`` (a
0-d JSON string: scale, policy, counts, timings, probe difference, scan report with warnings,
``data_fit`` and ``refinement`` with its ``stop_reason``; see :class:`~ptycho_torch.pipeline.Reconstruction`),
and when they were refined ``probe`` (P, N, N) complex64 (``refine_probe``) and ``positions`` (S, 2)
float64 ``[x, y]`` object pixels (``refine_positions``).
Nothing is ever unpickled, and the uncompressed size and every ``.npy`` header's declared shape are
checked before any array is read.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from collections.abc import Set as AbstractSet
from typing import Any, NamedTuple

import numpy as np

from ptycho_torch.pipeline import Reconstruction
from ptycho_torch.plan import ReconstructOptions
from serving.errors import InvalidRequest, RequestTooLarge
from serving.limits import loads_json

__all__ = ["RECONSTRUCT_MEDIA_TYPE", "ReconstructRequest", "decode_arrays", "decode_reconstruct_request",
           "decode_reconstruction", "encode_arrays", "encode_reconstruct_request", "encode_reconstruction"]

RECONSTRUCT_MEDIA_TYPE = "application/x-npz"

REFINED_ARRAYS = ("probe", "positions")
"""Response arrays sent only when the refinement changed them (:attr:`Reconstruction.probe`, ``.positions``)."""


class ReconstructRequest(NamedTuple):
    """A decoded ``/v1/reconstruct`` body."""

    patterns: np.ndarray
    positions: np.ndarray
    probe: np.ndarray | None
    options: ReconstructOptions
    mask: np.ndarray | None


def encode_arrays(arrays: dict[str, Any], compress: bool = False) -> bytes:
    """An NPZ body of plain ``arrays`` (``compress``: deflate them)."""
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def encode_reconstruct_request(patterns: Any, positions: Any, *, probe: Any = None,
                               options: ReconstructOptions | dict[str, Any] | None = None,
                               mask: Any = None, compress: bool = False) -> bytes:
    """NPZ request body; ``compress`` trades CPU for bandwidth (counts compress well)."""
    arrays: dict[str, Any] = {"patterns": np.asarray(patterns), "positions": np.asarray(positions)}
    if probe is not None:
        arrays["probe"] = np.asarray(probe)
    if mask is not None:
        arrays["mask"] = np.asarray(mask)
    if options is not None:
        if isinstance(options, ReconstructOptions):
            options = options.to_json()
        arrays["options"] = np.array(json.dumps(options))
    return encode_arrays(arrays, compress)


def _declared_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> None:
    """Refuse an ``.npy`` member whose header declares more bytes than the member holds (read before
    numpy allocates the array from that header), or a pickled dtype."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        header = member.tell()
    if dtype.hasobject:
        raise ValueError(f"member {info.filename} holds pickled objects ({dtype})")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > info.file_size - header:
        name = info.filename.removesuffix(".npy")
        raise RequestTooLarge(f"`{name}` in the {what} NPZ declares shape {list(shape)} {dtype} "
                              f"({declared} bytes) but holds {info.file_size - header} bytes; send the array "
                              "numpy.savez wrote, unmodified")


def _open_npz(body: bytes, max_uncompressed_bytes: int, what: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            total = sum(info.file_size for info in archive.infolist())
            if total > max_uncompressed_bytes:
                raise RequestTooLarge(f"the {what} NPZ expands to {total} bytes, over the limit of "
                                      f"{max_uncompressed_bytes} (the per-request memory budget); send fewer "
                                      "patterns per request")
            for info in archive.infolist():
                _declared_array(archive, info, what)
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, zlib.error) as error:
        raise InvalidRequest(f"the {what} body must be an NPZ archive of plain arrays (numpy.savez, no "
                             f"pickled objects), got one that does not read: {error}") from None


def decode_arrays(body: bytes, *, required: set[str], optional: AbstractSet[str] = frozenset(), what: str,
                  max_uncompressed_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of an NPZ body that must hold ``required`` and may hold ``optional`` (others refused)."""
    arrays = _open_npz(body, max_uncompressed_bytes, what)
    unknown = sorted(set(arrays) - required - optional)
    missing = sorted(required - set(arrays))
    if unknown or missing:
        optional_text = f" (optional {sorted(optional)})" if optional else ""
        raise InvalidRequest(f"the {what} NPZ must hold {sorted(required)}{optional_text}; missing {missing}, "
                             f"unknown {unknown}")
    return arrays


def decode_reconstruct_request(body: bytes, *, max_uncompressed_bytes: int) -> ReconstructRequest:
    """The arrays and options of an NPZ request body; ``max_uncompressed_bytes`` bounds the arrays."""
    arrays = decode_arrays(body, required={"patterns", "positions"}, optional={"probe", "mask", "options"},
                           what="request", max_uncompressed_bytes=max_uncompressed_bytes)
    options = ReconstructOptions()
    if "options" in arrays:
        raw = arrays["options"]
        if raw.dtype.kind != "U" or raw.ndim != 0:
            raise InvalidRequest(f"`options` must be a 0-d string array holding a JSON object, got "
                                 f"{raw.dtype} {list(raw.shape)}")
        mapping = loads_json(str(raw), "`options` must be a JSON object, got text that")
        if not isinstance(mapping, dict):
            raise InvalidRequest(f"`options` must be a JSON object, got {type(mapping).__name__}")
        options = ReconstructOptions.from_mapping(mapping)
    return ReconstructRequest(arrays["patterns"], arrays["positions"], arrays.get("probe"), options,
                              arrays.get("mask"))


def encode_reconstruction(result: Reconstruction, extra: dict[str, Any] | None = None) -> bytes:
    """NPZ response body for ``result``; ``extra`` is merged into ``metadata`` (e.g. the model name)."""
    metadata = {"scale": result.scale, "scale_policy": result.scale_policy, "n_patterns": result.n_patterns,
                "n_groups": result.n_groups, "timings": result.timings,
                "probe_difference": result.probe_difference, "scan_report": result.scan_report,
                "pixel_size_m": result.pixel_size_m, "data_fit": result.data_fit, "refinement": result.refinement,
                **(extra or {})}
    arrays = {"amplitude": result.amplitude, "phase": result.phase, "coverage": result.coverage,
              "origin": np.asarray(result.origin, np.float64), "metadata": np.array(json.dumps(metadata))}
    refined = {name: getattr(result, name) for name in REFINED_ARRAYS if getattr(result, name) is not None}
    return encode_arrays({**arrays, **refined}, compress=False)


def decode_reconstruction(body: bytes) -> tuple[Reconstruction, dict[str, Any]]:
    """The :class:`Reconstruction` in a response body, and the full metadata dict."""
    arrays = _open_npz(body, max_uncompressed_bytes=1 << 40, what="response")
    metadata = json.loads(str(arrays["metadata"]))
    origin = arrays["origin"]
    result = Reconstruction(
        amplitude=arrays["amplitude"], phase=arrays["phase"], coverage=arrays["coverage"],
        origin=(float(origin[0]), float(origin[1])), scale=metadata["scale"],
        scale_policy=metadata["scale_policy"], n_patterns=metadata["n_patterns"], n_groups=metadata["n_groups"],
        timings=metadata["timings"], probe_difference=metadata["probe_difference"],
        scan_report=metadata.get("scan_report", {}), pixel_size_m=metadata.get("pixel_size_m"),
        data_fit=metadata.get("data_fit"), refinement=metadata.get("refinement"),
        probe=arrays.get("probe"), positions=arrays.get("positions"),
    )
    return result, metadata
