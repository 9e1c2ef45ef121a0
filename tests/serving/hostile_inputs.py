"""Hostile request bodies shared by the tests: a forged ``.npy`` header and a compression bomb."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np

MiB = 1 << 20


def forged_header_npz(shape: tuple[int, ...], N: int = 32) -> bytes:
    """A request NPZ whose ``patterns.npy`` header declares ``shape`` but holds a (2, N, N) float32 array."""
    member = io.BytesIO()
    np.save(member, np.zeros((2, N, N), np.float32))
    raw = member.getvalue()
    header_len = struct.unpack("<H", raw[8:10])[0]
    header = raw[10:10 + header_len].decode("latin1").replace(str((2, N, N)), str(shape)).rstrip()
    header = header.ljust(-(-(10 + len(header) + 1) // 64) * 64 - 11) + "\n"  # numpy pads to 64 bytes
    forged = raw[:8] + struct.pack("<H", len(header)) + header.encode("latin1") + raw[10 + header_len:]
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w") as archive:
        archive.writestr("patterns.npy", forged)
        positions = io.BytesIO()
        np.save(positions, np.zeros((2, 2)))
        archive.writestr("positions.npy", positions.getvalue())
    return body.getvalue()


def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes gzip-compressed in 1 MiB steps (the caller never holds them): ~1000x smaller."""
    packer = zlib.compressobj(wbits=31)
    chunk = b"\0" * MiB
    return b"".join(packer.compress(chunk) for _ in range(size // MiB)) + packer.flush()
