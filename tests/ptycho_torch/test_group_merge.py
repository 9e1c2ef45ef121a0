"""The numpy group merge used at inference is the training physics' merge_extract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptycho_torch import physics
from ptycho_torch.errors import DataContractError
from ptycho_torch.group_merge import merge_groups
from ptycho_torch.grouping import group_indices, relative_offsets


def _groups(rng: np.random.Generator, gridsize: int, N: int = 32) -> tuple[np.ndarray, np.ndarray]:
    x, y = (v.ravel() + rng.uniform(-0.7, 0.7, 36) for v in np.meshgrid(np.arange(6.0) * 3, np.arange(6.0) * 3))
    members = group_indices(x, y, gridsize=gridsize, seed=1)
    offsets = relative_offsets(x, y, members)
    shape = (*members.shape, N, N)
    patches = (rng.uniform(0.5, 1, shape) * np.exp(1j * rng.uniform(-1, 1, shape))).astype(np.complex64)
    return patches, offsets


@pytest.mark.parametrize("gridsize", [2, 3])
def test_merge_groups_is_the_training_merge(gridsize: int) -> None:
    patches, offsets = _groups(np.random.default_rng(gridsize), gridsize)
    expected = physics.merge_extract(torch.from_numpy(patches), torch.from_numpy(offsets.astype(np.float32)))
    merged = merge_groups(patches, offsets)
    assert merged.shape == patches.shape and merged.dtype == np.complex64
    np.testing.assert_allclose(merged, expected.numpy(), atol=2e-5)
    assert np.abs(merged - patches).max() > 0.1  # the merge changed the patches: the test can fail


def test_merge_groups_keeps_agreeing_patches() -> None:
    """Patches cut from one object at integer offsets come back unchanged where their central windows
    overlap (the average of equal values)."""
    rng = np.random.default_rng(0)
    obj = (rng.uniform(0.5, 1, (64, 64)) * np.exp(1j * rng.uniform(-1, 1, (64, 64)))).astype(np.complex64)
    starts = np.array([[16, 16], [18, 16], [16, 20], [18, 20]])  # [x, y] corners; an integer group centre
    centre = starts.mean(axis=0)
    patches = np.stack([obj[r:r + 32, c:c + 32] for c, r in starts])[None]
    offsets = -(starts - centre)[None].astype(np.float64)
    merged = merge_groups(patches, offsets)
    inner = slice(8 + 3, 24 - 3)  # the part of each central window every other central window covers
    np.testing.assert_allclose(merged[0][:, inner, inner], patches[0][:, inner, inner], atol=1e-5)


def test_merge_groups_rejects_mismatched_shapes() -> None:
    with pytest.raises(DataContractError, match=r"\(B, C, 2\)"):
        merge_groups(np.zeros((2, 4, 8, 8), np.complex64), np.zeros((2, 3, 2)))


def test_a_far_outlier_grows_only_its_own_groups_canvas(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each group's canvas is sized by its own offsets, so one group reaching 1500 px away neither grows
    the others' canvases nor changes their merge; chunks hold the work near CHUNK_BYTES."""
    import ptycho_torch.group_merge as gm

    patches, offsets = _groups(np.random.default_rng(5), 2)
    reference = merge_groups(patches, offsets)
    far = offsets.copy()
    far[0, 0] += 1500.0
    sides: list[int] = []
    real_chunk = gm._merge_chunk
    monkeypatch.setattr(gm, "_merge_chunk", lambda o, r, pad: sides.append(o.shape[-1] + 2 * pad) or real_chunk(o, r, pad))
    merged = merge_groups(patches, far)
    np.testing.assert_array_equal(merged[1:], reference[1:])
    assert max(sides) > 3000 and sorted(sides)[-2] < 50  # one large canvas, the rest as before
    monkeypatch.setattr(gm, "CHUNK_BYTES", 1)
    np.testing.assert_array_equal(merge_groups(patches, offsets), reference)  # one group per chunk: same result
