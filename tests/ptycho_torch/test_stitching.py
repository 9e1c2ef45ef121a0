"""The stitcher: sign and axis convention, exact reproduction, incremental == one-shot, errors."""

from __future__ import annotations

import numpy as np
import pytest

from ptycho_torch.errors import DataContractError, InvalidInput
from ptycho_torch.stitching import Stitcher, TiledStitcher, stitch_patches

N = 32
M = 16


def _field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth analytic complex object at (possibly fractional) pixel coordinates."""
    amplitude = 0.7 + 0.2 * np.sin(2 * np.pi * x / 37.0) * np.cos(2 * np.pi * y / 29.0)
    phase = 0.8 * np.sin(2 * np.pi * (x + 2 * y) / 53.0)
    return amplitude * np.exp(1j * phase)


def _smooth_object(H: int, W: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    return _field(xx, yy)


def _cut(obj: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Integer-position N x N patches whose centre pixel N//2 sits at ``positions`` [x, y]."""
    ix = positions[:, 0].astype(int)[:, None, None] - N // 2 + np.arange(N)[None, None, :]
    iy = positions[:, 1].astype(int)[:, None, None] - N // 2 + np.arange(N)[None, :, None]
    return obj[iy, ix].astype(np.complex64)


@pytest.mark.parametrize("position", [(5.0, -3.0), (0.0, 0.0), (-7.0, 12.0)])
def test_bright_pixel_lands_on_predicted_canvas_pixel(position):
    patch = np.zeros((1, N, N), np.complex64)
    patch[0, N // 2, N // 2] = 2.0 + 1.0j  # the patch centre pixel
    result = stitch_patches(patch, [position], M=M)
    x0, y0 = result.origin
    hits = np.argwhere(np.abs(result.canvas) > 0)
    np.testing.assert_array_equal(hits, [[position[1] + y0, position[0] + x0]])  # (row, col)
    assert result.canvas[int(position[1] + y0), int(position[0] + x0)] == 2.0 + 1.0j


def test_positive_x_moves_content_to_larger_column_and_positive_y_to_larger_row():
    patches = np.zeros((2, N, N), np.complex64)
    patches[:, N // 2, N // 2] = 1.0
    result = stitch_patches(patches, [[10.0, 0.0], [0.0, 4.0]], M=M)
    x0, y0 = result.origin
    assert result.canvas[int(y0), int(x0 + 10)] == 1.0
    assert result.canvas[int(y0 + 4), int(x0)] == 1.0


def test_off_centre_pixel_keeps_its_offset_from_the_patch_centre():
    patch = np.zeros((1, N, N), np.complex64)
    patch[0, N // 2 + 2, N // 2 - 3] = 1.0  # 2 rows below, 3 columns left of the centre
    result = stitch_patches(patch, [[4.0, 6.0]], M=M)
    x0, y0 = result.origin
    np.testing.assert_array_equal(np.argwhere(result.canvas != 0), [[6 + y0 + 2, 4 + x0 - 3]])


def test_sub_pixel_position_splits_the_pixel_bilinearly():
    patch = np.zeros((1, N, N), np.complex64)
    patch[0, N // 2, N // 2] = 1.0
    result = stitch_patches(patch, [[3.25, 1.5]], M=M)
    x0, y0 = result.origin
    col, row = int(3 + x0), int(1 + y0)
    weighted = result.canvas * result.coverage  # undo the average to see the splat weights
    np.testing.assert_allclose(weighted[row:row + 2, col:col + 2],
                               [[0.75 * 0.5, 0.25 * 0.5], [0.75 * 0.5, 0.25 * 0.5]], atol=1e-7)
    assert np.count_nonzero(weighted) == 4


def _raster(step: float, n: int, start: float = 40.0) -> np.ndarray:
    g = start + step * np.arange(n)
    xx, yy = np.meshgrid(g, g + 3.0)
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def test_integer_positions_reproduce_the_object_exactly_inside_the_covered_region():
    obj = _smooth_object(160, 160)
    positions = _raster(6.0, 10)
    result = stitch_patches(_cut(obj, positions), positions, M=M)
    x0, y0 = (int(v) for v in result.origin)
    covered = result.coverage > 0
    rows, cols = np.nonzero(covered)
    truth = obj[rows - y0, cols - x0]
    assert covered.sum() > 60 * 60
    assert np.max(np.abs(result.canvas[covered] - truth)) < 1e-5


def test_sub_pixel_positions_reproduce_the_object_closely():
    rng = np.random.default_rng(3)
    positions = _raster(6.0, 10) + rng.uniform(-0.5, 0.5, (100, 2))
    # patches sampled from the analytic object exactly at the sub-pixel positions
    yy, xx = np.mgrid[0:N, 0:N] - N // 2
    patches = _field(positions[:, 0, None, None] + xx, positions[:, 1, None, None] + yy).astype(np.complex64)
    result = stitch_patches(patches, positions, M=M)
    x0, y0 = (int(v) for v in result.origin)
    inner = result.coverage > 1.0  # away from the ragged border of the scan
    rows, cols = np.nonzero(inner)
    error = np.abs(result.canvas[inner] - _field(cols - x0, rows - y0))
    assert inner.sum() > 50 * 50
    # bilinear splatting smooths by ~f(1-f)/2 * curvature; measured max 0.036, rms 0.0050
    assert error.max() < 0.05
    assert np.sqrt(np.mean(error**2)) < 8e-3


def test_incremental_equals_one_shot_exactly():
    rng = np.random.default_rng(0)
    positions = rng.uniform(-30, 30, (53, 2))
    patches = (rng.standard_normal((53, N, N)) + 1j * rng.standard_normal((53, N, N))).astype(np.complex64)
    one_shot = stitch_patches(patches, positions, M=M)
    stitcher = Stitcher.from_bounds((-30, 30), (-30, 30), M=M)
    for chunk in np.array_split(np.arange(53), [5, 6, 30]):
        stitcher.add(patches[chunk], positions[chunk])
    incremental = stitcher.result()
    assert stitcher.count == 53
    # the bounding-box canvas may be larger; compare in object coordinates
    dx = int(incremental.origin[0] - one_shot.origin[0])
    dy = int(incremental.origin[1] - one_shot.origin[1])
    H, W = one_shot.canvas.shape
    np.testing.assert_array_equal(incremental.canvas[dy:dy + H, dx:dx + W], one_shot.canvas)
    np.testing.assert_array_equal(incremental.coverage[dy:dy + H, dx:dx + W], one_shot.coverage)
    assert incremental.coverage.sum() == pytest.approx(53 * M * M)

    same_geometry = Stitcher.from_positions(positions, M=M)
    for chunk in np.array_split(np.arange(53), 4):
        same_geometry.add(patches[chunk], positions[chunk])
    np.testing.assert_array_equal(same_geometry.result().canvas, one_shot.canvas)


def test_crop_larger_than_half_the_patch_is_refused():
    with pytest.raises(InvalidInput, match=r"`M` must be in \[1, N/2 = 16\], got 20"):
        stitch_patches(np.zeros((1, N, N), np.complex64), [[0.0, 0.0]], M=20)


def test_position_outside_a_bounded_stitcher_is_refused_not_dropped():
    stitcher = Stitcher.from_bounds((0, 10), (0, 10), M=M)
    with pytest.raises(DataContractError, match=r"rows \[1\] .* outside this Stitcher's canvas"):
        stitcher.add(np.zeros((2, N, N), np.complex64), [[5.0, 5.0], [11.5, 5.0]])


def test_mismatched_lengths_and_bad_shapes_are_refused():
    with pytest.raises(DataContractError, match="same length, got 2 patches and 1 positions"):
        stitch_patches(np.zeros((2, N, N), np.complex64), [[0.0, 0.0]], M=M)
    with pytest.raises(DataContractError, match=r"shape \(K, 2\)"):
        stitch_patches(np.zeros((1, N, N), np.complex64), [0.0, 0.0], M=M)
    with pytest.raises(DataContractError, match=r"must be finite, got NaN/inf at rows \[0\]"):
        stitch_patches(np.zeros((1, N, N), np.complex64), [[np.nan, 0.0]], M=M)


def test_tiled_stitcher_equals_the_whole_scan_stitcher_in_any_order() -> None:
    rng = np.random.default_rng(1)
    patches = (rng.random((200, 32, 32)) + 1j * rng.random((200, 32, 32))).astype(np.complex64)
    positions = rng.uniform(-150, 200, (200, 2))
    whole = Stitcher.from_positions(positions, M=12)
    whole.add(patches, positions)
    tiled = TiledStitcher(M=12, tile=64)
    chunks = np.array_split(rng.permutation(200), 7)
    rects = [tiled.add(patches[chunk], positions[chunk]) for chunk in chunks]
    expected, got = whole.result(), tiled.result()
    assert got.origin == expected.origin and got.canvas.shape == expected.canvas.shape
    np.testing.assert_allclose(got.canvas, expected.canvas, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.coverage, expected.coverage, rtol=0, atol=1e-12)
    # each returned rectangle is the bounding box of its patches' (M+1) x (M+1) footprints
    for rect, chunk in zip(rects, chunks, strict=True):
        base = np.floor(positions[chunk] - 6).astype(int)
        low, high = base.min(axis=0), base.max(axis=0) + 13
        assert rect == (low[0], low[1], high[0] - low[0], high[1] - low[1])


def test_tiled_stitcher_allocates_tiles_only_where_patches_land() -> None:
    tiled = TiledStitcher(M=12, tile=64)
    patches = np.ones((2, 32, 32), np.complex64)
    rect = tiled.add(patches, [[10.0, 10.0], [5000.5, 3000.0]])
    assert tiled.n_tiles == 2 and tiled.nbytes == 2 * 64 * 64 * 24
    assert rect == (4, 4, 5000 - 6 + 13 - 4, 3000 - 6 + 13 - 4)
    result = tiled.result()
    reference = Stitcher.from_positions([[10.0, 10.0], [5000.5, 3000.0]], M=12)
    assert result.canvas.shape == reference.shape and result.origin == reference.origin
    assert result.coverage.sum() == pytest.approx(2 * 12 * 12)


def test_tiled_stitcher_refuses_growth_past_its_tile_limit_and_changes_nothing() -> None:
    tiled = TiledStitcher(M=8, tile=32, max_tiles=1)
    patch = np.ones((1, 16, 16), np.complex64)
    tiled.add(patch, [[5.0, 5.0]])
    before = tiled.result()
    with pytest.raises(DataContractError, match="over the limit of 1"):
        tiled.add(np.ones((2, 16, 16), np.complex64), [[5.0, 5.0], [500.0, 500.0]])
    assert tiled.count == 1 and np.array_equal(tiled.result().canvas, before.canvas)
