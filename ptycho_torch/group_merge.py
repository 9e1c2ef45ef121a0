"""The overlap constraint at inference: each group's patches merged and cut back out (numpy).

A grouped model (gridsize > 1, ``object_big``) is trained through :func:`ptycho_torch.physics.merge_extract`:
the loss sees only the weighted average of a group's patches where they overlap, never a patch on
its own. A patch's difference from that average is unconstrained (on the gold-ball case after 250
steps the raw patches fit the held-out patterns at a Poisson NLL of 15.2 per pixel, their merge at
3.8), so a grouped model's output is the merged group, as in PtychoPINN, whose inference model
returns the group's reassembled object. This module is the numpy twin of ``merge_extract`` (same
weights, same bilinear zero-fill translation, same canvas), so that serving needs no torch;
``tests/ptycho_torch/test_group_merge.py`` holds the two to float32 rounding.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from ptycho_torch.errors import DataContractError

#: weight of a patch's border (outside its central N/2 window) when merging a group (physics.BORDER_WEIGHT)
BORDER_WEIGHT = 1e-3


def _shift_last_axis(images: npt.NDArray, shifts: npt.NDArray[np.float64]) -> npt.NDArray:
    """Linear-interpolation shift of ``images (M, H, W)`` along the last axis by ``shifts (M,)``, zero fill.

    One ``W + 1`` wide window per image from a zero-padded copy (so every tap is valid), then the two
    taps' weighted sum."""
    width = images.shape[-1]
    source = -shifts  # output pixel j samples the input at j - shift
    start = np.floor(source).astype(np.int64)
    frac = (source - start).astype(np.float32)[:, None, None]
    margin = int(np.abs(start).max(initial=0)) + 1
    padded = np.pad(images, ((0, 0), (0, 0), (margin, margin + 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, width + 1, axis=-1)  # (M, H, P, W + 1), a view
    window = windows[np.arange(len(images)), :, start + margin]  # (M, H, W + 1)
    return window[..., :-1] * (1 - frac) + window[..., 1:] * frac


def translate(images: npt.NDArray, shifts: npt.NDArray[np.float64]) -> npt.NDArray:
    """Move the content of ``images (M, H, W)`` by ``shifts (M, 2)`` ``[dx, dy]`` pixels (bilinear, zero fill)."""
    moved = _shift_last_axis(images, shifts[:, 0])
    return _shift_last_axis(moved.swapaxes(-1, -2), shifts[:, 1]).swapaxes(-1, -2)


def canvas_padding(reach: float) -> int:
    """Even border (pixels) a group canvas needs around ``N`` to hold patches moved by up to ``reach`` px."""
    pad = math.ceil(reach)
    return pad + pad % 2


def merge_weights(N: int, pad: int) -> npt.NDArray[np.float32]:
    """``(N + 2 pad, N + 2 pad)`` float32: 1 in the patch's central ``N/2`` window, :data:`BORDER_WEIGHT`
    in the rest of the patch, 0 in the canvas border ``pad``."""
    weights = np.full((N, N), BORDER_WEIGHT, np.float32)
    weights[N // 4: N - N // 4, N // 4: N - N // 4] = 1.0
    return np.pad(weights, pad)


#: bytes of canvas work per chunk of groups (the merge's peak memory above its input and output)
CHUNK_BYTES = 64 << 20


def _merge_chunk(obj: npt.NDArray[np.complex64], r: npt.NDArray[np.float64], pad: int) -> npt.NDArray[np.complex64]:
    """:func:`merge_groups` of ``(G, C, N, N)`` groups on canvases of border ``pad``."""
    G, C, N, _ = obj.shape
    side = N + 2 * pad
    weights = merge_weights(N, pad)
    flat_r = r.reshape(-1, 2)
    padded = np.pad(obj, ((0, 0), (0, 0), (pad, pad), (pad, pad))).reshape(-1, side, side)
    moved = translate(padded * weights, -flat_r).reshape(G, C, side, side)
    moved_weights = translate(np.broadcast_to(weights, (G * C, side, side)), -flat_r).reshape(G, C, side, side)
    canvas = moved.sum(axis=1) / np.maximum(moved_weights.sum(axis=1), BORDER_WEIGHT * 1e-3)
    cut = translate(np.repeat(canvas, C, axis=0), flat_r).reshape(G, C, side, side)
    return cut[..., pad:pad + N, pad:pad + N]


def merge_groups(patches: npt.ArrayLike, offsets: npt.ArrayLike) -> npt.NDArray[np.complex64]:
    """Merge each group's patches on its own canvas and cut them out again.

    ``patches (B, C, N, N)`` complex, ``offsets (B, C, 2)`` the relative offsets ``r = -(x - group
    centre)`` ``[x, y]`` in pixels (:func:`ptycho_torch.grouping.relative_offsets`). Patch ``c`` is
    placed at ``-r_c`` with the weights of :func:`merge_weights`; the weighted average is cut back out
    at each member's place. Each group's canvas is as large as its own offsets need (a far outlier in
    one group does not grow the others), and groups are merged in chunks of about :data:`CHUNK_BYTES`.
    Returns ``(B, C, N, N)`` complex64. Raises :class:`DataContractError` on mismatched shapes.
    """
    obj = np.asarray(patches, np.complex64)
    r = np.asarray(offsets, np.float64)
    if obj.ndim != 4 or obj.shape[-1] != obj.shape[-2] or r.shape != (*obj.shape[:2], 2):
        raise DataContractError(f"`patches` must be (B, C, N, N) and `offsets` (B, C, 2), got {obj.shape} and "
                                f"{r.shape}")
    B, C, N, _ = obj.shape
    out = np.empty(obj.shape, np.complex64)
    if B == 0:
        return out
    pads = np.array([canvas_padding(reach) for reach in np.abs(r).reshape(B, -1).max(axis=1)])
    for pad in np.unique(pads):
        members = np.flatnonzero(pads == pad)
        per_group = 6 * C * (N + 2 * int(pad)) ** 2 * 8  # the complex canvases in flight per group
        step = max(1, CHUNK_BYTES // per_group)
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            out[chunk] = _merge_chunk(obj[chunk], r[chunk], int(pad))
    return out
