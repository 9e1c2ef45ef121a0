"""The binary WebSocket update of ``/v1/sessions/{id}/updates``, for the server, the client and the viewer.

One message per update::

    uint32 little-endian   header length L
    L bytes                JSON header: {"type": "update", "x", "y" (object pixel of the rectangle's
                           top-left), "shape": [h, w], "offset": [col, row] of the rectangle in the
                           current canvas, "origin": [x0, y0] and "canvas_shape": [H, W] of that canvas
                           (as /v1/reconstruct returns it), "version", "counts": {...}}
    h*w float32 LE         amplitude, row-major
    h*w float32 LE         phase (radians), row-major

The last message of a session is a text frame ``{"type": "closed", "reason": ...}``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["decode_update", "encode_update"]


def encode_update(header: dict[str, Any], canvas: npt.NDArray[np.complex64]) -> bytes:
    """One binary update for the complex ``canvas`` ``(h, w)`` sub-rectangle described by ``header``."""
    text = json.dumps({"type": "update", **header, "shape": list(canvas.shape)}).encode()
    amplitude = np.abs(canvas).astype("<f4")
    phase = np.angle(canvas).astype("<f4")
    return b"".join([struct.pack("<I", len(text)), text, amplitude.tobytes(), phase.tobytes()])


def decode_update(message: bytes) -> tuple[dict[str, Any], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``(header, amplitude (h, w), phase (h, w))`` of a binary update."""
    (length,) = struct.unpack_from("<I", message)
    header = json.loads(message[4:4 + length])
    h, w = header["shape"]
    amplitude = np.frombuffer(message, "<f4", h * w, 4 + length).reshape(h, w)
    phase = np.frombuffer(message, "<f4", h * w, 4 + length + 4 * h * w).reshape(h, w)
    return header, amplitude, phase
