"""Stitch predicted object patches into one complex image (docs/design.md section 2).

numpy-only. Each patch contributes its central ``M x M`` crop (the well-constrained part of a
prediction), moved by ``+position`` with bilinear weights, and the canvas is the weighted average::

    canvas = sum_k w_k * shift(crop_k, +x_k) / sum_k w_k * shift(ones, +x_k)

Conventions: ``positions`` are object pixels of each patch's centre pixel ``N // 2``, ``[x, y]`` =
``[column, row]``, float. A positive ``x`` moves content to a larger column index (the sign of
PtychoPINN's ``reassemble_position``). The canvas pixel grid is the object pixel grid shifted by an
*integer* ``origin``: object position ``(x, y)`` lands on canvas ``(col, row) = (x + x0, y + y0)``.
TensorFlow anchors the canvas on the scan's centre of mass instead, which puts every patch of an
integer-position scan through a sub-pixel interpolation; an integer anchor stitches such scans
exactly and changes nothing else (the offsets are still ``position - anchor``).

The accumulation is vectorised over chunks of patches: every crop is spread separably onto its
``(M+1) x (M+1)`` bilinear footprint, then one scatter-add (``np.add.at``) puts the chunk on the
canvas; there is no Python loop over patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ptycho_torch.errors import DataContractError, InvalidInput

__all__ = ["DEFAULT_M", "Rect", "StitchResult", "Stitcher", "TiledStitcher", "canvas_geometry", "check_stitch_M",
           "complex_patches", "default_stitch_M", "stitch_patches"]

DEFAULT_M = 20
"""Default side of the central crop kept from every patch (PtychoPINN's inference default)."""


def complex_patches(amplitude: npt.NDArray[np.float32], phase: npt.NDArray[np.float32]) -> npt.NDArray[np.complex64]:
    """``amplitude * exp(i phase)`` as complex64, any shape (the network's two real outputs, combined)."""
    patches = np.empty(np.shape(amplitude), np.complex64)
    np.cos(phase, out=patches.real)
    np.sin(phase, out=patches.imag)
    patches *= amplitude
    return patches


def default_stitch_M(N: int) -> int:
    """The central crop kept from each ``N x N`` patch when none is chosen: ``min(20, N/2)`` (design.md)."""
    return min(DEFAULT_M, N // 2)

_CHUNK = 256
"""Patches splatted per vectorised step: keeps the float64 temporaries in cache (2x faster than all at once)."""


@dataclass(frozen=True)
class StitchResult:
    """A stitched object and where it sits in object coordinates."""

    canvas: npt.NDArray[np.complex64]
    """Complex object ``(H, W)``; zero where no patch contributed."""
    coverage: npt.NDArray[np.float64]
    """Summed bilinear weights ``(H, W)``: how many crops cover each pixel (0 = not covered)."""
    origin: tuple[float, float]
    """``(x0, y0)``: the canvas ``(col, row)`` where object position ``(0, 0)`` lands."""

    @property
    def amplitude(self) -> npt.NDArray[np.float32]:
        """``|canvas|`` as float32."""
        return np.abs(self.canvas).astype(np.float32)

    @property
    def phase(self) -> npt.NDArray[np.float32]:
        """``angle(canvas)`` in ``[-pi, pi]`` as float32."""
        return np.angle(self.canvas).astype(np.float32)


def check_stitch_M(M: Any, N: int | None = None, *, name: str = "stitch_M") -> None:
    """Refuse a crop ``M`` that is not an integer in ``[1, N/2]`` (``N``: the patch size, None: no upper
    bound known yet) with :class:`~ptycho_torch.errors.InvalidInput` naming ``name``: the one home of
    this rule (requests, sessions, manifests and the stitchers all ask it)."""
    allowed = "a positive integer (at most N/2)" if N is None else f"in [1, N/2 = {N // 2}]"
    if not (isinstance(M, (int, np.integer)) and not isinstance(M, bool) and 1 <= M <= (M if N is None else N // 2)):
        got = int(M) if isinstance(M, np.integer) else M
        raise InvalidInput(f"`{name}` must be {allowed}, got {got!r}: the central crop kept from each patch "
                           f"(only the central half of a prediction is well constrained; the default is "
                           f"min({DEFAULT_M}, N/2))")


def _as_positions(positions: npt.ArrayLike) -> npt.NDArray[np.float64]:
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise DataContractError(f"`positions` must have shape (K, 2) as [x, y] pixels, got shape {pos.shape}")
    if not np.all(np.isfinite(pos)):
        bad = np.flatnonzero(~np.all(np.isfinite(pos), axis=1))
        raise DataContractError(f"`positions` must be finite, got NaN/inf at rows {bad[:10].tolist()}")
    return pos


def _splat(
    crops: np.ndarray, frac: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.complex128], npt.NDArray[np.float64]]:
    """Bilinear footprints ``(k, M+1, M+1)`` of ``crops`` (k, M, M) shifted by ``frac`` (k, 2) ``[x, y]``
    in ``[0, 1)``, and the footprints of all-ones crops (their weights)."""
    k, M = len(crops), crops.shape[1]
    fx = frac[:, 0, None, None]
    fy = frac[:, 1, None, None]
    # separable bilinear splat onto the (M+1) x (M+1) footprint: along x, then along y
    spread_x = np.empty((k, M, M + 1), dtype=np.complex128)
    np.multiply(crops, 1.0 - fx, out=spread_x[:, :, :M])
    spread_x[:, :, M] = 0.0
    spread_x[:, :, 1:] += crops * fx
    footprint = np.empty((k, M + 1, M + 1), dtype=np.complex128)
    np.multiply(spread_x, 1.0 - fy, out=footprint[:, :M, :])
    footprint[:, M, :] = 0.0
    footprint[:, 1:, :] += spread_x * fy
    # the same splat of an all-ones crop is the outer product of two edge-weighted profiles
    profile_x = np.ones((k, M + 1))
    profile_x[:, 0], profile_x[:, M] = 1.0 - frac[:, 0], frac[:, 0]
    profile_y = np.ones((k, M + 1))
    profile_y[:, 0], profile_y[:, M] = 1.0 - frac[:, 1], frac[:, 1]
    return footprint, profile_y[:, :, None] * profile_x[:, None, :]


def _crops(patches: npt.ArrayLike, pos: npt.NDArray[np.float64], M: int) -> np.ndarray:
    """The central ``M x M`` crops of ``patches`` (K, N, N), checked against ``pos`` (K, 2)."""
    patches = np.asarray(patches)
    if patches.ndim != 3 or patches.shape[1] != patches.shape[2]:
        raise DataContractError(f"`patches` must have shape (K, N, N), got shape {patches.shape}")
    if len(patches) != len(pos):
        raise DataContractError(
            f"`patches` and `positions` must have the same length, got {len(patches)} patches "
            f"and {len(pos)} positions"
        )
    N = patches.shape[1]
    check_stitch_M(M, N, name="M")
    start = N // 2 - M // 2
    return patches[:, start:start + M, start:start + M]


def canvas_geometry(
    x_range: tuple[float, float], y_range: tuple[float, float], M: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(origin (x0, y0), shape (H, W))`` of the smallest canvas holding positions in the two ranges;
    computed, not allocated, so callers can bound it first."""
    check_stitch_M(M, name="M")
    (x_lo, x_hi), (y_lo, y_hi) = x_range, y_range
    if not (x_lo <= x_hi and y_lo <= y_hi):
        raise DataContractError(f"bounds must be (low, high) with low <= high, got x {x_range!r}, y {y_range!r}")
    half = M // 2
    # leftmost tap of the leftmost crop: floor(x_lo - half + x0) == 0; rightmost: floor(x_hi - half) + M
    x0, y0 = half - math.floor(x_lo), half - math.floor(y_lo)
    W = math.floor(x_hi - half + x0) + M + 1
    H = math.floor(y_hi - half + y0) + M + 1
    return (x0, y0), (H, W)


class Stitcher:
    """Incremental stitcher on a fixed canvas: ``add`` batches as they arrive, ``result`` any time.

    Build it from every position (:meth:`from_positions`) or from their bounding box
    (:meth:`from_bounds`, for a live scan whose extent is known before the frames are). The running
    sums are float64, so adding in batches gives exactly the one-shot result.
    """

    def __init__(self, *, shape: tuple[int, int], origin: tuple[int, int], M: int = DEFAULT_M) -> None:
        """Canvas of ``shape = (H, W)`` with object ``(0, 0)`` at canvas ``origin = (x0, y0)`` (integers)."""
        check_stitch_M(M, name="M")
        H, W = (int(s) for s in shape)
        if H < 1 or W < 1:
            raise DataContractError(f"`shape` must be two positive sizes (H, W), got {shape!r}")
        self.M = int(M)
        self.shape = (H, W)
        self.origin = (int(origin[0]), int(origin[1]))
        self._sum = np.zeros(H * W, dtype=np.complex128)
        self._weight = np.zeros(H * W)
        self.count = 0
        """Number of patches added so far."""

    @classmethod
    def from_bounds(
        cls, x_range: tuple[float, float], y_range: tuple[float, float], *, M: int = DEFAULT_M
    ) -> Stitcher:
        """The smallest canvas that holds any position with ``x`` in ``x_range`` and ``y`` in ``y_range``."""
        origin, shape = canvas_geometry(x_range, y_range, M)
        return cls(shape=shape, origin=origin, M=M)

    @classmethod
    def from_positions(cls, positions: npt.ArrayLike, *, M: int = DEFAULT_M) -> Stitcher:
        """The smallest canvas that holds every one of ``positions`` ``(K, 2)`` ``[x, y]``."""
        pos = _as_positions(positions)
        if len(pos) == 0:
            raise DataContractError("`positions` must hold at least one position, got an empty (0, 2) array")
        return cls.from_bounds((pos[:, 0].min(), pos[:, 0].max()), (pos[:, 1].min(), pos[:, 1].max()), M=M)

    def add(self, patches: npt.ArrayLike, positions: npt.ArrayLike) -> None:
        """Accumulate complex ``patches`` ``(K, N, N)`` centred at ``positions`` ``(K, 2)`` ``[x, y]``."""
        pos = _as_positions(positions)
        M = self.M
        crops = _crops(patches, pos, M)
        if len(pos) == 0:
            return

        # canvas coordinate of crop pixel (0, 0): position + origin - M//2; split into integer + fraction
        corner = pos + (np.asarray(self.origin, dtype=np.float64) - M // 2)
        base = np.floor(corner)
        frac = corner - base
        base = base.astype(np.int64)
        H, W = self.shape
        outside = (base[:, 0] < 0) | (base[:, 1] < 0) | (base[:, 0] + M >= W) | (base[:, 1] + M >= H)
        if outside.any():
            rows = np.flatnonzero(outside)
            raise DataContractError(
                f"`positions` rows {rows[:10].tolist()} (e.g. {pos[rows[0]].tolist()}) fall outside this "
                f"Stitcher's canvas {self.shape} with origin {self.origin}; build it with "
                f"Stitcher.from_positions/from_bounds covering every position of the scan"
            )

        for first in range(0, len(crops), _CHUNK):
            chunk = slice(first, first + _CHUNK)
            self._accumulate(crops[chunk], base[chunk], frac[chunk])
        self.count += len(crops)

    def _accumulate(
        self, crops: np.ndarray, base: npt.NDArray[np.int64], frac: npt.NDArray[np.float64]
    ) -> None:
        """Splat ``crops`` (k, M, M) whose pixel (0, 0) sits at canvas ``base + frac`` (k, 2) [x, y]."""
        footprint, weight = _splat(crops, frac)
        offsets = np.arange(self.M + 1)
        index = ((base[:, 1, None, None] + offsets[None, :, None]) * self.shape[1]
                 + base[:, 0, None, None] + offsets[None, None, :]).ravel()
        # np.add.at adds element by element, in patch order, straight into the running sums, so any
        # split into batches performs exactly the same float64 additions as a single call
        np.add.at(self._sum, index, footprint.ravel())
        np.add.at(self._weight, index, weight.ravel())

    def result(self) -> StitchResult:
        """The weighted average so far (zero where nothing landed) and the coverage map."""
        covered = self._weight > 0
        canvas = np.zeros(self._sum.shape, dtype=np.complex128)
        canvas[covered] = self._sum[covered] / self._weight[covered]
        return StitchResult(
            canvas=canvas.astype(np.complex64).reshape(self.shape),
            coverage=self._weight.reshape(self.shape).copy(),
            origin=(float(self.origin[0]), float(self.origin[1])),
        )


Rect = tuple[int, int, int, int]
"""``(x, y, w, h)``: a rectangle of the object pixel grid, top-left pixel ``(x, y)`` = ``(col, row)``."""


class TiledStitcher:
    """Incremental stitcher on an unbounded canvas of ``tile x tile`` tiles, allocated where patches land.

    For a live scan whose extent is not known in advance: memory follows the scanned area rather
    than a preallocated box, and ``max_tiles`` bounds it. The tile grid is the object pixel grid,
    so every patch lands on the same pixels with the same bilinear weights as on a
    :class:`Stitcher`; :meth:`result` on the bounding box of the positions added so far equals
    ``Stitcher.from_positions(those positions)`` fed the same patches, up to the order of the float64
    additions (relative differences ~1e-15 when patches arrive in another order).
    """

    def __init__(self, *, M: int = DEFAULT_M, tile: int = 128, max_tiles: int | None = None) -> None:
        check_stitch_M(M, name="M")
        if not (isinstance(tile, int) and tile > M):
            raise DataContractError(f"`tile` must be an integer larger than M = {M}, got {tile!r}")
        self.M, self.tile, self.max_tiles = int(M), tile, max_tiles
        self._tiles: dict[tuple[int, int], tuple[npt.NDArray[np.complex128], npt.NDArray[np.float64]]] = {}
        self._low = np.full(2, np.inf)
        self._high = np.full(2, -np.inf)
        self.count = 0
        """Number of patches added so far."""

    @property
    def n_tiles(self) -> int:
        """Tiles allocated so far (each holds ``tile**2`` complex128 sums and float64 weights)."""
        return len(self._tiles)

    @property
    def nbytes(self) -> int:
        """Memory held by the tiles."""
        return self.n_tiles * self.tile * self.tile * 24

    def _bases(self, pos: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        corner = pos - self.M // 2
        base = np.floor(corner)
        return base.astype(np.int64), corner - base

    def tile_keys(self, positions: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """``(K, 4, 2)`` ``(tile row, tile column)`` of the tiles a patch at each of ``positions`` touches
        (a footprint spans at most 2 x 2 tiles; repeated keys when it spans fewer)."""
        return self._keys(self._bases(_as_positions(positions))[0])

    def _keys(self, base: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        first, last = base // self.tile, (base + self.M) // self.tile
        rows = np.stack([first[:, 1], last[:, 1]], axis=1)
        cols = np.stack([first[:, 0], last[:, 0]], axis=1)
        return np.stack(np.broadcast_arrays(rows[:, :, None], cols[:, None, :]), axis=-1).reshape(-1, 4, 2)

    def _touched(self, base: npt.NDArray[np.int64]) -> set[tuple[int, int]]:
        return {(row, col) for row, col in self._keys(base).reshape(-1, 2).tolist()}

    def add(self, patches: npt.ArrayLike, positions: npt.ArrayLike) -> Rect | None:
        """Accumulate complex ``patches`` ``(K, N, N)`` centred at ``positions`` ``(K, 2)`` ``[x, y]``.

        Returns the grid rectangle the patches changed (None for K = 0). Raises
        :class:`~ptycho_torch.errors.DataContractError`, changing nothing, when the patches would need
        more than ``max_tiles`` tiles.
        """
        pos = _as_positions(positions)
        crops = _crops(patches, pos, self.M)
        if len(pos) == 0:
            return None
        base, frac = self._bases(pos)
        touched = self._touched(base)
        if self.max_tiles is not None and len(touched | self._tiles.keys()) > self.max_tiles:
            raise DataContractError(
                f"these positions need {len(touched - self._tiles.keys())} more canvas tiles of "
                f"{self.tile}x{self.tile} pixels, over the limit of {self.max_tiles}; the scan covers more "
                f"area than this canvas allows (check the position units: object pixels)"
            )
        for key in touched - self._tiles.keys():
            self._tiles[key] = (np.zeros(self.tile * self.tile, np.complex128), np.zeros(self.tile * self.tile))
        for first in range(0, len(crops), _CHUNK):
            chunk = slice(first, first + _CHUNK)
            self._accumulate(crops[chunk], base[chunk], frac[chunk])
        self.count += len(crops)
        self._low = np.minimum(self._low, pos.min(axis=0))
        self._high = np.maximum(self._high, pos.max(axis=0))
        low, high = base.min(axis=0), base.max(axis=0) + self.M
        return int(low[0]), int(low[1]), int(high[0] - low[0] + 1), int(high[1] - low[1] + 1)

    def _accumulate(self, crops: np.ndarray, base: npt.NDArray[np.int64], frac: npt.NDArray[np.float64]) -> None:
        footprint, weight = _splat(crops, frac)
        offsets = np.arange(self.M + 1)
        rows = np.broadcast_to(base[:, 1, None, None] + offsets[None, :, None], footprint.shape).ravel()
        cols = np.broadcast_to(base[:, 0, None, None] + offsets[None, None, :], footprint.shape).ravel()
        T = self.tile
        tile_rows, tile_cols = rows // T, cols // T
        # one integer per tile (a batch spans a few tiles), then one scatter-add per tile touched; the
        # selection keeps footprint order, so each pixel still receives its patches in order
        first_row, first_col = int(tile_rows.min()), int(tile_cols.min())
        span = int(tile_cols.max()) - first_col + 1
        key = (tile_rows - first_row) * span + (tile_cols - first_col)
        local = (rows % T) * T + cols % T
        values, weights = footprint.ravel(), weight.ravel()
        for k in np.unique(key).tolist():
            tile_sum, tile_weight = self._tiles[first_row + k // span, first_col + k % span]
            selected = key == k
            np.add.at(tile_sum, local[selected], values[selected])
            np.add.at(tile_weight, local[selected], weights[selected])

    @property
    def geometry(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """``(origin (x0, y0), shape (H, W))`` of :meth:`result`: the :class:`Stitcher` canvas of the
        positions added so far; None before the first patch."""
        if self.count == 0:
            return None
        return canvas_geometry((self._low[0], self._high[0]), (self._low[1], self._high[1]), self.M)

    def region(self, rect: Rect) -> tuple[npt.NDArray[np.complex64], npt.NDArray[np.float64]]:
        """The weighted average (complex64, 0 where nothing landed) and coverage on grid ``rect``."""
        x, y, w, h = rect
        total = np.zeros((h, w), np.complex128)
        coverage = np.zeros((h, w))
        T = self.tile
        for ty in range(y // T, (y + h - 1) // T + 1):
            for tx in range(x // T, (x + w - 1) // T + 1):
                if (ty, tx) not in self._tiles:
                    continue
                tile_sum, tile_weight = (a.reshape(T, T) for a in self._tiles[ty, tx])
                r0, r1 = max(y, ty * T), min(y + h, (ty + 1) * T)
                c0, c1 = max(x, tx * T), min(x + w, (tx + 1) * T)
                total[r0 - y:r1 - y, c0 - x:c1 - x] = tile_sum[r0 - ty * T:r1 - ty * T, c0 - tx * T:c1 - tx * T]
                coverage[r0 - y:r1 - y, c0 - x:c1 - x] = tile_weight[r0 - ty * T:r1 - ty * T, c0 - tx * T:c1 - tx * T]
        covered = coverage > 0
        total[covered] /= coverage[covered]
        return total.astype(np.complex64), coverage

    def result(self) -> StitchResult:
        """The weighted average on :attr:`geometry`, as :meth:`Stitcher.result` gives it."""
        geometry = self.geometry
        if geometry is None:
            raise DataContractError("no patch has been added yet; add patches before asking for the result")
        (x0, y0), (H, W) = geometry
        canvas, coverage = self.region((-x0, -y0, W, H))
        return StitchResult(canvas=canvas, coverage=coverage, origin=(float(x0), float(y0)))


def stitch_patches(patches: npt.ArrayLike, positions: npt.ArrayLike, M: int = DEFAULT_M) -> StitchResult:
    """Stitch complex ``patches`` ``(K, N, N)`` at ``positions`` ``(K, 2)`` ``[x, y]`` onto the smallest canvas.

    Each patch's central ``M x M`` crop (``M <= N/2``) is moved by ``+position`` with bilinear
    weights; overlapping crops are averaged by their summed weights. See the module docstring for
    the coordinate convention; ``result.origin`` says where object position ``(0, 0)`` lands.
    """
    stitcher = Stitcher.from_positions(positions, M=M)
    stitcher.add(patches, positions)
    return stitcher.result()
