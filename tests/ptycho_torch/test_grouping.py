"""Grouping: geometry of offsets, real K-neighbour groups, seeded determinism, the GroupedScan."""

from __future__ import annotations

import numpy as np
import pytest

from ptycho_torch.data import RawData
from ptycho_torch.errors import DataContractError
from ptycho_torch.grouping import extract_patches, group_indices

N = 32


@pytest.fixture
def scan() -> RawData:
    rng = np.random.default_rng(7)
    n_pos = 60
    obj = (rng.uniform(0.5, 1, (120, 120)) * np.exp(1j * rng.uniform(-1, 1, (120, 120)))).astype(np.complex64)
    x, y = rng.uniform(20, 100, (2, n_pos))
    return RawData.from_coords_without_pc(x, y, rng.uniform(0, 2, (n_pos, N, N)), np.ones((N, N)), objectGuess=obj)


def test_gridsize_one_is_one_group_per_position(scan):
    grouped = scan.generate_grouped_data(N, gridsize=1)
    np.testing.assert_array_equal(grouped.nn_indices[:, 0], np.arange(len(scan)))
    assert grouped.diffraction.shape == (60, N, N, 1)
    np.testing.assert_array_equal(grouped.diffraction[..., 0], scan.diff3d)
    np.testing.assert_array_equal(grouped.coords_relative, 0.0)
    np.testing.assert_array_equal(grouped.coords_offsets[:, 0, :, 0], scan.positions)


def test_offsets_are_consistent_with_positions(scan):
    grouped = scan.generate_grouped_data(N, K=6, n_groups=25, gridsize=2, seed=3)
    nn = grouped.nn_indices
    assert nn.shape == (25, 4) and grouped.coords_nn.shape == (25, 1, 2, 4)
    assert grouped.coords_offsets.shape == (25, 1, 2, 1) and grouped.diffraction.shape == (25, N, N, 4)
    np.testing.assert_array_equal(grouped.coords_nn[:, 0, 0], scan.xcoords[nn])  # [x, y] order
    np.testing.assert_array_equal(grouped.coords_nn[:, 0, 1], scan.ycoords[nn])
    np.testing.assert_allclose(grouped.coords_offsets[..., 0], grouped.coords_nn.mean(axis=3))
    np.testing.assert_allclose(grouped.coords_relative, -(grouped.coords_nn - grouped.coords_offsets))
    np.testing.assert_allclose(grouped.coords_relative.sum(axis=3), 0.0, atol=1e-12)
    np.testing.assert_array_equal(grouped.diffraction[3, :, :, 2], scan.diff3d[nn[3, 2]])
    np.testing.assert_array_equal(grouped.coords_start_nn, grouped.coords_nn)
    assert len(grouped) == 25 and grouped.channels_first.shape == (25, 4, N, N)  # the network's layout
    np.testing.assert_array_equal(grouped.channels_first[3, 2], scan.diff3d[nn[3, 2]])
    np.testing.assert_array_equal(grouped.member_positions[3 * 4 + 2], [scan.xcoords[nn[3, 2]], scan.ycoords[nn[3, 2]]])


def test_groups_are_distinct_real_k_nearest_neighbours(scan):
    K, C = 6, 4
    nn = group_indices(scan.xcoords, scan.ycoords, gridsize=2, K=K, seed=11)
    points = scan.positions
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    kth = np.sort(distance, axis=1)[:, K - 1]  # distance to each seed's K-th nearest other position
    seeds = np.arange(len(scan))  # n_groups=None: one group seeded at every position
    member_distance = distance[seeds[:, None], nn]
    assert np.all(member_distance <= kth[:, None] + 1e-12)
    assert all(len(set(row)) == C for row in nn.tolist())
    assert not np.any(nn == seeds[:, None])


def test_seeded_grouping_is_deterministic(scan):
    first = scan.generate_grouped_data(N, K=6, n_groups=30, gridsize=2, seed=5)
    again = scan.generate_grouped_data(N, K=6, n_groups=30, gridsize=2, seed=5)
    other = scan.generate_grouped_data(N, K=6, n_groups=30, gridsize=2, seed=6)
    np.testing.assert_array_equal(first.nn_indices, again.nn_indices)
    np.testing.assert_array_equal(first.X_full, again.X_full)
    assert not np.array_equal(first.nn_indices, other.nn_indices)
    sampled = group_indices(scan.xcoords, scan.ycoords, n_groups=10, seed=1)
    assert sampled.shape == (10, 1) and len(np.unique(sampled)) == 10


def test_x_full_is_normalised_by_the_scan_scale(scan):
    grouped = scan.generate_grouped_data(N, gridsize=1)
    energy = np.sum(grouped.X_full.astype(np.float64) ** 2, axis=(1, 2)).mean()
    assert energy == pytest.approx((N / 2) ** 2, rel=1e-5)
    np.testing.assert_allclose(grouped.X_full, grouped.diffraction * np.float32(grouped.input_scale))


def test_ground_truth_patches_are_cut_at_each_members_own_position(scan):
    grouped = scan.generate_grouped_data(N, K=6, n_groups=8, gridsize=2, seed=2)
    nn = grouped.nn_indices
    expected = extract_patches(scan.objectGuess, scan.xcoords[nn[:, 1]], scan.ycoords[nn[:, 1]], N)
    np.testing.assert_allclose(grouped.Y[..., 1], expected, rtol=1e-6)
    assert grouped.Y.dtype == np.complex64 and grouped.objectGuess is scan.objectGuess


def test_extract_patches_centre_convention_and_subpixel():
    obj = np.arange(64 * 64, dtype=np.float64).reshape(64, 64)  # obj[r, c] = 64 r + c, linear
    patch = extract_patches(obj, np.array([30.0, 30.25]), np.array([20.0, 20.5]), 8)
    assert patch[0, 4, 4] == obj[20, 30]  # centre pixel N/2 sits on the position (x=col, y=row)
    assert patch[0, 0, 0] == obj[16, 26]
    assert patch[1, 4, 4] == pytest.approx(64 * 20.5 + 30.25)  # bilinear is exact on a linear ramp
    edge = extract_patches(obj, np.array([1.0]), np.array([1.0]), 8)
    assert edge[0, 0, 0] == 0 and edge[0, 4, 4] == obj[1, 1]  # zero outside the object


def test_bad_grouping_requests():
    x = np.arange(10.0)
    with pytest.raises(DataContractError, match="`K` must be >= gridsize\\*\\*2 = 4"):
        group_indices(x, x, gridsize=2, K=3)
    with pytest.raises(DataContractError, match="at least 5 positions"):
        group_indices(x[:4], x[:4], gridsize=2, K=4)
    with pytest.raises(DataContractError, match="`n_groups` must be None or >= 1"):
        group_indices(x, x, n_groups=0)


def test_grouping_at_another_n_is_refused(scan):
    with pytest.raises(DataContractError, match="`N` must be the scan's pattern size 32, got 64"):
        scan.generate_grouped_data(64)
