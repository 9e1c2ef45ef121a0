"""Group scan positions into solution regions and build the :class:`GroupedScan` (as PtychoPINN groups them).

Vectorised numpy/scipy, seeded with :func:`numpy.random.default_rng`. ``gridsize == 1`` gives one
group per position; ``gridsize > 1`` draws ``C = gridsize**2`` members, without replacement, from
the ``K`` nearest neighbours of each seed position (the seed itself excluded), as PtychoPINN's
"sample-then-group". The :class:`GroupedScan` keeps PtychoPINN's grouped-dictionary names
(``diffraction``, ``X_full``, ``Y``, ``coords_*``, ``nn_indices``) as typed fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

from ptycho_torch.errors import DataContractError
from ptycho_torch.normalization import input_scale

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class GroupedScan:
    """A scan gathered into ``B`` groups of ``C = gridsize**2`` patterns, channels last like PtychoPINN.

    Coordinates are ``[x, y]`` object pixels (patch centres); ``coords_*`` arrays hold ``x`` at
    index 0 and ``y`` at index 1 of their third axis.
    """

    diffraction: npt.NDArray[np.float32]
    """``(B, N, N, C)`` float32: raw amplitudes gathered by ``nn_indices``."""
    input_scale: float
    """:func:`~ptycho_torch.normalization.input_scale` of the whole scan (one scalar per scan)."""
    Y: npt.NDArray[np.complex64] | None  # the NPZ contract's name
    """``(B, N, N, C)`` complex64 ground-truth object patches, or None when the scan has no object."""
    coords_nn: npt.NDArray[np.float64]
    """``(B, 1, 2, C)`` float64: each member's absolute position."""
    coords_offsets: npt.NDArray[np.float64]
    """``(B, 1, 2, 1)`` float64: group centre, the mean of its members ("global offset")."""
    coords_relative: npt.NDArray[np.float64]
    """``(B, 1, 2, C)`` float64: ``-(coords_nn - coords_offsets)``; sums to 0 over each group."""
    coords_start_nn: npt.NDArray[np.float64]
    """``(B, 1, 2, C)`` float64: ``coords_nn`` from the scan's ``x/ycoords_start``."""
    coords_start_offsets: npt.NDArray[np.float64]
    """``(B, 1, 2, 1)`` float64: ``coords_offsets`` from ``x/ycoords_start``."""
    coords_start_relative: npt.NDArray[np.float64]
    """``(B, 1, 2, C)`` float64: ``coords_relative`` from ``x/ycoords_start``."""
    nn_indices: npt.NDArray[np.int64]
    """``(B, C)`` int64: each member's index into the scan's arrays."""
    objectGuess: npt.NDArray[np.complexfloating] | None = None  # the NPZ contract's name
    """``(H, W)`` the scan's object, passed through (None when it has none)."""

    def __len__(self) -> int:
        return len(self.nn_indices)

    @property
    def X_full(self) -> npt.NDArray[np.float32]:  # PtychoPINN's name
        """``(B, N, N, C)`` float32 ``diffraction * input_scale``: the normalised network input (a new array)."""
        return (self.diffraction * np.float32(self.input_scale)).astype(np.float32, copy=False)

    @property
    def channels_first(self) -> npt.NDArray[np.float32]:
        """``(B, C, N, N)`` float32 view of ``diffraction``: the generator's and the graph's layout."""
        return np.moveaxis(self.diffraction, -1, 1)

    @property
    def member_positions(self) -> npt.NDArray[np.float64]:
        """``(B * C, 2)`` float64 ``[x, y]`` of every member, group by group (the order of
        ``channels_first`` flattened to ``(B * C, N, N)``)."""
        return np.moveaxis(self.coords_nn[:, 0], -1, 1).reshape(-1, 2)

DEFAULT_NEIGHBOR_COUNT = 4
"""K for gridsize 1 and 2; larger groups need at least ``C`` neighbours (see :func:`default_neighbor_count`)."""


def default_neighbor_count(channels: int) -> int:
    """K, the nearest neighbours a group's ``channels`` members are drawn from when none is given:
    ``max(4, C)``, so gridsize 1 and 2 keep PtychoPINN's K=4 and gridsize 3 (C=9) or 4 (C=16) work."""
    return max(DEFAULT_NEIGHBOR_COUNT, channels)


def group_indices(
    xcoords: ArrayLike,
    ycoords: ArrayLike,
    *,
    gridsize: int = 1,
    K: int | None = None,
    n_groups: int | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """Return ``nn_indices`` (B, C) int64 for positions ``(xcoords, ycoords)``.

    Seeds are all positions in scan order when ``n_groups`` is None or >= S, else ``n_groups``
    distinct positions drawn at random. For ``gridsize > 1`` each group holds ``C`` distinct
    members drawn from the ``K`` nearest neighbours of its seed (needs ``K >= C``; None:
    :func:`default_neighbor_count`).
    """
    x = np.asarray(xcoords, dtype=np.float64)
    y = np.asarray(ycoords, dtype=np.float64)
    n_pos = x.shape[0]
    channels = gridsize * gridsize
    K = default_neighbor_count(channels) if K is None else K
    if gridsize < 1:
        raise DataContractError(f"`gridsize` must be an integer >= 1, got {gridsize!r}")
    if channels > 1 and K < channels:
        raise DataContractError(f"`K` must be >= gridsize**2 = {channels}, got {K}; raise neighbor_count")
    if n_pos < (channels + 1 if channels > 1 else 1):
        raise DataContractError(
            f"`xcoords` must hold at least {channels + 1 if channels > 1 else 1} positions for "
            f"gridsize {gridsize}, got {n_pos}"
        )
    if n_groups is not None and n_groups < 1:
        raise DataContractError(f"`n_groups` must be None or >= 1, got {n_groups!r}")
    rng = np.random.default_rng(seed)
    if n_groups is None or n_groups >= n_pos:
        if n_groups is not None and n_groups > n_pos:
            logger.info("n_groups=%d exceeds the %d scan positions; using one group per position", n_groups, n_pos)
        seeds = np.arange(n_pos, dtype=np.int64)
    else:
        seeds = np.sort(rng.choice(n_pos, size=n_groups, replace=False)).astype(np.int64)
    if channels == 1:
        return seeds[:, None]
    k = min(K, n_pos - 1)
    points = np.column_stack([x, y])
    _, neighbours = cKDTree(points).query(points[seeds], k=k + 1)
    neighbours = _drop_self(np.asarray(neighbours), seeds)
    choice = np.argsort(rng.random(neighbours.shape), axis=1)[:, :channels]
    return np.take_along_axis(neighbours, choice, axis=1).astype(np.int64)


def _drop_self(neighbours: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Remove each seed from its own (K+1)-neighbour row (not always first when positions repeat)."""
    is_self = neighbours == seeds[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True  # seed not among its K+1 nearest (duplicates): drop the farthest
    keep = ~is_self
    return neighbours[keep].reshape(neighbours.shape[0], neighbours.shape[1] - 1)


def group_coordinates(
    xcoords: np.ndarray, ycoords: np.ndarray, nn_indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``coords_nn`` (B,1,2,C), ``coords_offsets`` (B,1,2,1) and ``coords_relative`` (B,1,2,C)."""
    coords_nn = np.stack([xcoords[nn_indices], ycoords[nn_indices]], axis=1)[:, None].astype(np.float64)
    coords_offsets = coords_nn.mean(axis=3, keepdims=True)
    return coords_nn, coords_offsets, -(coords_nn - coords_offsets)


def relative_offsets(xcoords: np.ndarray, ycoords: np.ndarray, nn_indices: np.ndarray) -> np.ndarray:
    """``(B, C, 2)`` float64 ``[x, y]`` relative offsets ``r = -(x - group centre)`` of each member: what
    the overlap merge (``physics.merge_extract``, ``group_merge.merge_groups``) takes."""
    return group_coordinates(xcoords, ycoords, nn_indices)[2][:, 0].transpose(0, 2, 1)


def extract_patches(obj: np.ndarray, xcoords: ArrayLike, ycoords: ArrayLike, N: int) -> np.ndarray:
    """Cut ``N x N`` patches of ``obj`` (H, W) centred at sub-pixel positions, bilinear, zero outside.

    Patch pixel ``(r, c)`` samples the object at row ``y - N/2 + r``, column ``x - N/2 + c``, so a
    patch's centre pixel ``(N/2, N/2)`` sits on the position (the project's coordinate convention).
    Returns (S, N, N) in the object's dtype.
    """
    obj = np.asarray(obj)
    top = np.asarray(ycoords, dtype=np.float64) - N / 2
    left = np.asarray(xcoords, dtype=np.float64) - N / 2
    r0, c0 = np.floor(top).astype(np.int64), np.floor(left).astype(np.int64)
    weight = np.finfo(np.result_type(obj.dtype, np.float32)).dtype  # float32 weights keep complex64
    fy, fx = (top - r0).astype(weight)[:, None, None], (left - c0).astype(weight)[:, None, None]
    pad_r = (max(0, -int(r0.min(initial=0))), max(0, int(r0.max(initial=0)) + N + 1 - obj.shape[0]))
    pad_c = (max(0, -int(c0.min(initial=0))), max(0, int(c0.max(initial=0)) + N + 1 - obj.shape[1]))
    padded = np.pad(obj, (pad_r, pad_c))
    span = np.arange(N + 1)
    rows = (r0 + pad_r[0])[:, None] + span
    cols = (c0 + pad_c[0])[:, None] + span
    win = padded[rows[:, :, None], cols[:, None, :]]  # (S, N+1, N+1)
    patches = (1 - fy) * ((1 - fx) * win[:, :-1, :-1] + fx * win[:, :-1, 1:]) + fy * (
        (1 - fx) * win[:, 1:, :-1] + fx * win[:, 1:, 1:]
    )
    return patches.astype(obj.dtype, copy=False)


def build_grouped_data(
    diff3d: np.ndarray,
    xcoords: np.ndarray,
    ycoords: np.ndarray,
    xcoords_start: np.ndarray,
    ycoords_start: np.ndarray,
    nn_indices: np.ndarray,
    *,
    Y: np.ndarray | None = None,
    objectGuess: np.ndarray | None = None,
) -> GroupedScan:
    """Gather a scan by ``nn_indices`` into a :class:`GroupedScan`.

    ``input_scale`` is computed over the whole scan (one scalar per scan, design.md section 2).
    ``Y`` comes from the scan's ``Y`` when given, else is cut from ``objectGuess`` at each member's
    own position (not PtychoPINN's point-mirrored position), else is None.
    """
    n = diff3d.shape[-1]
    coords = group_coordinates(xcoords, ycoords, nn_indices)
    coords_start = group_coordinates(xcoords_start, ycoords_start, nn_indices)
    if Y is not None:
        patches = Y[nn_indices].transpose(0, 2, 3, 1)
    elif objectGuess is not None:
        unique, inverse = np.unique(nn_indices, return_inverse=True)
        cut = extract_patches(objectGuess, xcoords[unique], ycoords[unique], n)
        patches = cut[inverse.reshape(nn_indices.shape)].transpose(0, 2, 3, 1)
    else:
        patches = None
    return GroupedScan(
        diffraction=np.ascontiguousarray(diff3d[nn_indices].transpose(0, 2, 3, 1)),
        input_scale=input_scale(diff3d),
        Y=None if patches is None else np.ascontiguousarray(patches, dtype=np.complex64),
        coords_nn=coords[0], coords_offsets=coords[1], coords_relative=coords[2],
        coords_start_nn=coords_start[0], coords_start_offsets=coords_start[1], coords_start_relative=coords_start[2],
        nn_indices=nn_indices, objectGuess=objectGuess,
    )
