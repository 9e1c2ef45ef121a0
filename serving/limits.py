"""Per-request limits: every allocation sized by the client is bounded **before** it is made.

A request may cost at most :attr:`Limits.max_request_memory_bytes` (:mod:`serving.config`) of working memory. What counts:
the body after ``Content-Encoding`` decoding (bounded while it is inflated), the arrays an NPZ body
declares (read from each ``.npy`` header before any array is read), the Python objects of JSON
tensor data, and the reconstruct pipeline's arrays including the stitched canvas (sized from the
positions' span). A refusal is a 413 naming the field, the implied size and the limit. Bodies are
read with an idle timeout and a total deadline (408), so a slow or half-sent body cannot hold a
worker forever.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from typing import Any

import numpy as np
from starlette.requests import ClientDisconnect, Request

from ptycho_torch.stitching import canvas_geometry
from serving.config import Limits, MiB
from serving.errors import ClientGone, InvalidRequest, RequestTimeout, RequestTooLarge, UnsupportedEncoding

__all__ = ["Limits", "check_budget", "check_reconstruct_budget", "decode_content", "loads_json", "read_body",
           "reconstruct_bytes"]

CANVAS_BYTES_PER_PIXEL = 96
"""Stitching sums (complex128 + float64), the averaged canvas (complex128 -> complex64), amplitude,
phase and coverage planes and their NPZ copy: 81 bytes, rounded up."""
PATTERN_BYTES_PER_PIXEL = 40
"""Per network input pixel: float32 amplitudes (+ float64 square root of counts), grouped input,
amplitude and phase outputs, complex patches."""


def _count(n: int) -> str:
    """``12,345`` or, for numbers past a trillion (positions of 1e300 make such canvases), ``~1e300``."""
    digits = len(str(abs(int(n))))
    return f"{int(n):,}" if digits <= 12 else f"~1e{digits - 1}"


def _mib(nbytes: int) -> str:
    return f"{nbytes / MiB:,.1f} MiB" if nbytes < 1 << 60 else f"{_count(nbytes // MiB)} MiB"


def check_budget(field: str, what: str, nbytes: int, limits: Limits, fix: str) -> None:
    """Raise :class:`RequestTooLarge` (413) when ``nbytes`` is over the per-request memory budget."""
    limit = limits.max_request_memory_bytes
    if nbytes > limit:
        raise RequestTooLarge(f"`{field}`: {what} needs {_mib(nbytes)}, over the per-request memory budget of "
                              f"{_mib(limit)} (--max-request-memory-mb); {fix}")


def reconstruct_bytes(n_inputs: int, N: int, canvas_shape: tuple[int, int]) -> int:
    """Working memory of the reconstruct pipeline: ``n_inputs`` network input patterns (groups x
    channels) of ``N x N`` and a stitched canvas of ``canvas_shape`` (H, W), bytes."""
    return n_inputs * N * N * PATTERN_BYTES_PER_PIXEL + canvas_shape[0] * canvas_shape[1] * CANVAS_BYTES_PER_PIXEL


def check_reconstruct_budget(patterns: np.ndarray, positions: np.ndarray, *, N: int, channels: int,
                             decoded_bytes: int, limits: Limits) -> None:
    """Refuse a reconstruct request whose decoded arrays plus pipeline (network inputs, outputs,
    stitched canvas at the largest crop ``N/2``) would pass the budget. Malformed positions are left
    to the pipeline, which names what is wrong with them."""
    pos = np.asarray(positions)
    if pos.ndim != 2 or pos.shape[1:] != (2,) or not len(pos) or pos.dtype.kind not in "fiu" \
            or not np.isfinite(pos).all():
        return
    lo, hi = pos.min(axis=0).astype(np.float64), pos.max(axis=0).astype(np.float64)
    _, (H, W) = canvas_geometry((lo[0], hi[0]), (lo[1], hi[1]), max(1, N // 2))
    n_inputs = len(patterns) * channels if np.ndim(patterns) == 3 else 0
    canvas = H * W * CANVAS_BYTES_PER_PIXEL
    need = decoded_bytes + reconstruct_bytes(n_inputs, N, (H, W))
    if 2 * canvas >= need:
        check_budget("positions", f"a stitched canvas of {_count(H)} x {_count(W)} px (the positions span "
                     f"{hi[0] - lo[0]:.4g} x {hi[1] - lo[1]:.4g} px) with the scan's arrays", need, limits,
                     "check that the positions are object pixels of this scan, or reconstruct it in regions")
    check_budget("patterns", f"reconstructing {len(pos)} patterns of {N} x {N} (decoded arrays, network inputs "
                 "and outputs, canvas)", need, limits, "send fewer patterns per request")


def loads_json(text: str | bytes, what: str, hint: str = "") -> Any:
    """``json.loads`` whose every failure (syntax, encoding, nesting too deep) is a one-line 400;
    ``what`` names the text, ``hint`` is appended to a syntax error."""
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidRequest(f"{what} is nested too deeply to parse; send flat JSON (tensor data as one flat "
                             "list)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"{what} does not parse ({error}){hint}") from None


async def read_body(request: Request, limits: Limits) -> bytes:
    """The body, decoded per ``Content-Encoding``, within :attr:`Limits.max_body_bytes` and the timeouts.

    Raises :class:`RequestTooLarge` (413, after draining up to 64 MiB more so the client reads it),
    :class:`RequestTimeout` (408), :class:`UnsupportedEncoding` (415) or :class:`ClientGone`.
    """
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 64 * MiB:
        raise RequestTooLarge(f"request body is {declared} bytes, over the limit of {limit} bytes "
                              "(--max-request-mb); send fewer patterns per request")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
        raise UnsupportedEncoding(f"`Content-Encoding: {encoding}` is not supported; send gzip, deflate or none")
    chunks, size = [], 0
    deadline = time.monotonic() + limits.body_timeout_s
    stream = request.stream().__aiter__()
    while True:
        wait = min(limits.body_idle_timeout_s, deadline - time.monotonic())
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=max(wait, 0.0))
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise RequestTimeout(f"the request body did not arrive in time ({size} bytes received; the server "
                                 f"waits {limits.body_idle_timeout_s:g} s for each piece and "
                                 f"{limits.body_timeout_s:g} s in all); send the whole body promptly") from None
        except ClientDisconnect:
            raise ClientGone("the client closed the connection while sending the body") from None
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > limit + 64 * MiB:
            break
    if size > limit:
        raise RequestTooLarge(f"request body is over the limit of {limit} bytes (--max-request-mb); "
                              "send fewer patterns per request")
    body = b"".join(chunks)
    return body if encoding == "identity" else decode_content(body, encoding, limit)


def decode_content(body: bytes, encoding: str, limit: int) -> bytes:
    """Inflate a ``gzip`` or ``deflate`` (zlib, or raw deflate) body, stopping as soon as it passes
    ``limit`` bytes: a compression bomb costs at most ``limit``."""
    wbits = 16 + zlib.MAX_WBITS if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS
    if wbits == zlib.MAX_WBITS and body[:1] and (body[0] & 0x0F != 8 or int.from_bytes(body[:2], "big") % 31):
        wbits = -zlib.MAX_WBITS  # raw deflate, as some clients send for `deflate`
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
        if len(out) > limit:
            raise RequestTooLarge(f"the `Content-Encoding: {encoding}` body expands past {limit} bytes, over "
                                  "the limit (--max-request-mb); send fewer patterns per request")
        if inflater.unconsumed_tail or not inflater.eof:
            raise InvalidRequest(f"the `Content-Encoding: {encoding}` body is truncated; send the whole stream")
    except zlib.error as error:
        raise InvalidRequest(f"the body is not valid {encoding} data ({error}); compress it with "
                             f"{'gzip.compress' if wbits > zlib.MAX_WBITS else 'zlib.compress'}") from None
    return out
