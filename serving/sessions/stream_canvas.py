"""The canvas of one live scan: patches stitched as they come, and the regions each viewer has not seen.

A :class:`~ptycho_torch.stitching.TiledStitcher` holds the object (its result on the positions seen
equals the whole-scan stitcher's). Positions are admitted before their frames are inferred: inside
the ``bounds`` given at creation, and only while the object's bounding box and the tiles it needs
stay under the canvas limit. A session that refines shows its latest refined object over the
network's patches (:class:`RefinedLayer`, where its round covered the canvas); patches stitched
since show through elsewhere. Every viewer (:class:`Watch`) collects the rectangle changed since its
last look (stitched patches or a refined layer), which the WebSocket sends as a delta. Not
thread-safe: the :class:`~serving.sessions.session.Session` holds the lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ptycho_torch.stitching import Rect, StitchResult, TiledStitcher, canvas_geometry, complex_patches
from serving.errors import InvalidRequest
from serving.sessions.messages import Reasons, unflagged

__all__ = ["Bounds", "RefinedLayer", "StreamCanvas", "Watch", "check_bounds"]

Bounds = tuple[tuple[float, float], tuple[float, float]]
"""``((x_lo, x_hi), (y_lo, y_hi))`` object pixels."""


@dataclass(eq=False)
class Watch:
    """A viewer's changed region since its last look (grid rectangle, or None), and its wake-up event."""

    dirty: Rect | None = None
    event: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class RefinedLayer:
    """A refined object shown over the network's patches: ``object (h, w)`` complex64 on the grid
    rectangle ``rect`` ``(x, y, w, h)``, shown where ``shown (h, w)`` is True."""

    rect: Rect
    object: npt.NDArray[np.complex64]
    shown: npt.NDArray[np.bool_]


def check_bounds(bounds: Any) -> Bounds:
    """``bounds`` as ``((x_lo, x_hi), (y_lo, y_hi))`` floats; :class:`InvalidRequest` when malformed."""
    try:
        (x_lo, x_hi), (y_lo, y_hi) = ((float(a), float(b)) for a, b in bounds)
    except (TypeError, ValueError):
        raise InvalidRequest(f"`bounds` must be [[x_lo, x_hi], [y_lo, y_hi]] object pixels, got {bounds!r}") from None
    if not (np.isfinite([x_lo, x_hi, y_lo, y_hi]).all() and x_lo <= x_hi and y_lo <= y_hi):
        raise InvalidRequest(f"`bounds` must be finite with low <= high, got {bounds!r}")
    return (x_lo, x_hi), (y_lo, y_hi)


class StreamCanvas:
    """The object of a live scan on ``max_tiles`` tiles of ``tile x tile`` pixels at most, patches
    cropped to ``M``; positions must lie in ``bounds`` when given."""

    def __init__(self, *, M: int, tile: int, max_tiles: int, bounds: Any = None) -> None:
        self.stitcher = TiledStitcher(M=M, tile=tile, max_tiles=max_tiles)
        self.bounds: Bounds | None = None if bounds is None else check_bounds(bounds)
        self.version = 0
        """Incremented by every stitched batch and every refined layer shown."""
        self.refined: RefinedLayer | None = None
        """The latest refined object shown over the patches (None: the network's patches only)."""
        self._span: Bounds | None = None  # x, y range of the positions admitted
        self._tiles: set[tuple[int, int]] = set()  # tiles the admitted positions will need
        self._watches: list[Watch] = []

    def flag_outside(self, pos: npt.NDArray[np.float64], reasons: Reasons) -> None:
        """Give the rows of ``pos (K, 2)`` outside :attr:`bounds` (and without a reason yet) their reason."""
        if self.bounds is None:
            return
        (x_lo, x_hi), (y_lo, y_hi) = self.bounds
        x, y = pos.T
        outside = ~((x_lo <= x) & (x <= x_hi) & (y_lo <= y) & (y <= y_hi))
        for row in np.flatnonzero(outside & unflagged(reasons)):
            reasons[row] = f"position {pos[row].tolist()} is outside the canvas bounds {self.bounds} given at creation"

    def reserve(self, pos: npt.NDArray[np.float64]) -> str | None:
        """Admit the finite positions ``pos (K, 2)`` together: None when they fit (the canvas counts them
        from now on), else why not (nothing changed). The object is returned on the bounding box of
        every position, so that box (not only the tiles touched) must fit the canvas limit: two
        positions far apart would otherwise ask for a canvas of any size."""
        span = _grown(self._span, pos)
        tiles = self._tiles | _tile_set(self.stitcher.tile_keys(pos))
        (x_range, y_range), T, max_tiles = span, self.stitcher.tile, self.stitcher.max_tiles
        assert max_tiles is not None  # a stream's canvas is always bounded (__init__)
        _, (H, W) = canvas_geometry(x_range, y_range, self.stitcher.M)
        limit = max_tiles * T ** 2
        if H * W > limit:
            return (f"would make the object {H:.3g} x {W:.3g} px (the bounding box of the session's positions), "
                    f"over the canvas limit of {limit:,} px ({max_tiles} tiles of {T}x{T}); check the "
                    "position units (object pixels)")
        if len(tiles) > max_tiles:
            return (f"would grow the canvas past its limit of {max_tiles} tiles of {T}x{T} pixels; "
                    "check the position units (object pixels)")
        self._span, self._tiles = span, tiles
        return None

    def add(self, amplitude: npt.NDArray[np.float32], phase: npt.NDArray[np.float32],
            positions: npt.NDArray[np.float64]) -> None:
        """Stitch the network's ``amplitude``, ``phase`` ``(K, 1, N, N)`` at admitted ``positions (K, 2)``
        and mark the changed rectangle for every viewer."""
        rect = self.stitcher.add(complex_patches(amplitude[:, 0], phase[:, 0]), positions)
        assert rect is not None
        self._changed(rect)

    def show_refined(self, layer: RefinedLayer) -> None:
        """Show ``layer`` over the patches from now on (replacing the last one) and mark it for every viewer."""
        self.refined = layer
        self._changed(layer.rect)

    def _changed(self, rect: Rect) -> None:
        self.version += 1
        for watch in self._watches:
            watch.dirty = _union(watch.dirty, rect)
            watch.event.set()

    def watch(self) -> Watch:
        """A new viewer; its first region is the whole canvas so far."""
        watch = Watch()
        geometry = self.stitcher.geometry
        if geometry is not None:
            (x0, y0), (H, W) = geometry
            watch.dirty = (-x0, -y0, W, H)
            watch.event.set()
        self._watches.append(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        if watch in self._watches:
            self._watches.remove(watch)

    def wake_all(self) -> None:
        """Wake every viewer (the session closed)."""
        for watch in self._watches:
            watch.event.set()

    def take_update(self, watch: Watch) -> tuple[Rect, npt.NDArray[np.complex64], dict[str, Any]] | None:
        """The region changed since ``watch``'s last update: grid rectangle, complex object on it, and the
        header fields (canvas geometry, the rectangle's offset in it, version); None if nothing changed."""
        rect, watch.dirty = watch.dirty, None
        watch.event.clear()
        if rect is None:
            return None
        canvas, _ = self.stitcher.region(rect)
        _overlay(canvas, rect, self.refined)
        (x0, y0), (H, W) = self.stitcher.geometry  # type: ignore[misc]
        header = {"x": rect[0], "y": rect[1], "offset": [rect[0] + x0, rect[1] + y0],
                  "origin": [float(x0), float(y0)], "canvas_shape": [H, W], "version": self.version}
        return rect, canvas, header

    def result(self) -> StitchResult | None:
        """The object so far: the network's patches as the whole-scan stitcher gives them, the refined
        layer over them; None before the first patch."""
        stitched = self.network()
        if stitched is not None:
            x0, y0 = (int(v) for v in stitched.origin)
            H, W = stitched.canvas.shape
            _overlay(stitched.canvas, (-x0, -y0, W, H), self.refined)
        return stitched

    def network(self) -> StitchResult | None:
        """The network's patches only, as the whole-scan stitcher gives them; None before the first patch."""
        return None if self.stitcher.count == 0 else self.stitcher.result()

    def to_json(self) -> dict[str, Any]:
        """The status's ``canvas`` part: origin, shape (None before the first patch), tiles and bytes held."""
        geometry = self.stitcher.geometry
        return {"origin": None if geometry is None else list(geometry[0]),
                "shape": None if geometry is None else list(geometry[1]),
                "tiles": self.stitcher.n_tiles, "bytes": self.stitcher.nbytes}


def _grown(span: Bounds | None, points: npt.NDArray[np.float64]) -> Bounds:
    """``span`` grown to hold ``points (K >= 1, 2)`` ``[x, y]``."""
    lo, hi = points.min(axis=0).tolist(), points.max(axis=0).tolist()
    if span is not None:
        (x_lo, x_hi), (y_lo, y_hi) = span
        lo, hi = [min(x_lo, lo[0]), min(y_lo, lo[1])], [max(x_hi, hi[0]), max(y_hi, hi[1])]
    return (lo[0], hi[0]), (lo[1], hi[1])


def _tile_set(keys: npt.NDArray[np.int64]) -> set[tuple[int, int]]:
    """The ``(tile row, tile column)`` pairs of ``keys (K, 4, 2)``."""
    return {(row, column) for row, column in keys.reshape(-1, 2).tolist()}


def _overlay(canvas: npt.NDArray[np.complex64], rect: Rect, layer: RefinedLayer | None) -> None:
    """Write ``layer``'s shown pixels into ``canvas`` ``(h, w)``, which holds grid rectangle ``rect``."""
    if layer is None:
        return
    (x, y, w, h), (lx, ly, lw, lh) = rect, layer.rect
    c0, c1, r0, r1 = max(x, lx), min(x + w, lx + lw), max(y, ly), min(y + h, ly + lh)
    if c0 >= c1 or r0 >= r1:
        return
    shown = layer.shown[r0 - ly:r1 - ly, c0 - lx:c1 - lx]
    canvas[r0 - y:r1 - y, c0 - x:c1 - x][shown] = layer.object[r0 - ly:r1 - ly, c0 - lx:c1 - lx][shown]


def _union(a: Rect | None, b: Rect) -> Rect:
    if a is None:
        return b
    x, y = min(a[0], b[0]), min(a[1], b[1])
    return x, y, max(a[0] + a[2], b[0] + b[2]) - x, max(a[1] + a[3], b[1] + b[3]) - y
