"""Physics: probe normalisation, far-field forward model, translation, per-group merge, losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from ptycho_torch.errors import DataContractError
from ptycho_torch.physics import (
    diffraction_loss,
    disk_mask,
    extract_patches,
    far_field_amplitude,
    far_field_intensity,
    illuminate,
    intensity_scale,
    merge_extract,
    merge_patches,
    normalize_probe,
    poisson_nll,
    translate,
)


def _gaussian_probe(N: int, sigma: float, phase_tilt: float = 0.0) -> torch.Tensor:
    idx = torch.arange(N, dtype=torch.float32) - N / 2
    r2 = idx[:, None] ** 2 + idx[None, :] ** 2
    return torch.polar(torch.exp(-r2 / (2 * sigma**2)), phase_tilt * idx[None, :].expand(N, N))


def _random_object(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    amp = 0.5 + 0.5 * torch.rand(shape, generator=g)
    return torch.polar(amp, (torch.rand(shape, generator=g) - 0.5) * 2)


def test_disk_mask_is_the_reference_hard_disk():
    mask = disk_mask(32)
    assert mask.shape == (32, 32) and mask.dtype == torch.float32
    assert mask[16, 16] == 1 and mask[0, 0] == 0 and mask[16, 16 + 8] == 0 and mask[16, 16 + 7] == 1
    torch.testing.assert_close(mask, mask.flip(0).flip(1))  # centred on pixel corner N/2 - 0.5


def test_normalize_probe_sets_masked_mean_to_one_over_probe_scale():
    probe = 3.0 * _gaussian_probe(32, 5.0)
    normed, normaliser = normalize_probe(probe, probe_scale=4.0)
    assert normed.shape == (1, 32, 32) and normed.dtype == torch.complex64
    assert (disk_mask(32) * normed[0].abs()).mean().item() == pytest.approx(0.25, rel=1e-5)
    torch.testing.assert_close(normed[0] * normaliser, probe)


def test_multi_mode_probe_shares_one_normaliser_from_the_total_amplitude():
    modes = torch.stack([_gaussian_probe(32, 5.0), 0.5 * _gaussian_probe(32, 3.0, 0.2)])
    normed, normaliser = normalize_probe(modes, probe_scale=2.0)
    total = torch.sqrt((normed.abs() ** 2).sum(0))
    assert (disk_mask(32) * total).mean().item() == pytest.approx(0.5, rel=1e-5)
    torch.testing.assert_close(normed * normaliser, modes)


def test_normalize_probe_rejects_an_empty_probe():
    with pytest.raises(DataContractError, match="probeGuess"):
        normalize_probe(torch.zeros(32, 32, dtype=torch.complex64))


def test_intensity_scale_closed_form():
    assert intensity_scale(1e9, 64) == pytest.approx(988.2, abs=0.05)
    assert intensity_scale(1e4, 32) == pytest.approx(100 / 16)


def test_forward_model_conserves_energy_with_the_ortho_fft():
    probe = normalize_probe(torch.stack([_gaussian_probe(32, 4.0), _gaussian_probe(32, 6.0, 0.3)]))[0]
    obj = _random_object((3, 4, 32, 32), seed=0)
    waves = illuminate(obj, probe)
    assert waves.shape == (3, 4, 2, 32, 32)
    intensity = far_field_intensity(waves)
    assert intensity.shape == (3, 4, 32, 32)
    real_space = (waves.abs() ** 2).sum(dim=(2, 3, 4))
    torch.testing.assert_close(intensity.sum(dim=(2, 3)), real_space, rtol=1e-5, atol=0)


def test_flat_object_gives_the_probe_diffraction_and_modes_add_incoherently():
    p1, p2 = _gaussian_probe(32, 4.0), _gaussian_probe(32, 2.0, 0.5)
    probe = torch.stack([p1, p2])
    flat = torch.full((1, 1, 32, 32), complex(math.cos(0.7), math.sin(0.7)), dtype=torch.complex64)
    amplitude = far_field_amplitude(illuminate(flat, probe))[0, 0]
    expected = np.sqrt(
        sum(np.abs(np.fft.fftshift(np.fft.fft2(p.numpy(), norm="ortho"))) ** 2 for p in (p1, p2))
    )
    np.testing.assert_allclose(amplitude.numpy(), expected, rtol=1e-4, atol=1e-6)
    coherent = np.abs(np.fft.fftshift(np.fft.fft2((p1 + p2).numpy(), norm="ortho")))
    assert np.abs(amplitude.numpy() - coherent).max() > 0.1 * coherent.max()
    # zero frequency sits at the centre after the shift
    assert amplitude.argmax() == 16 * 32 + 16


def test_point_probe_gives_a_flat_pattern_of_known_amplitude():
    probe = torch.zeros(1, 32, 32, dtype=torch.complex64)
    probe[0, 16, 16] = 2.0
    obj = _random_object((2, 1, 32, 32), seed=1)
    amplitude = far_field_amplitude(illuminate(obj, probe))
    expected = 2.0 * obj[:, :, 16, 16].abs() / 32
    torch.testing.assert_close(amplitude, expected[..., None, None].expand_as(amplitude))


def test_translate_moves_content_by_plus_t():
    image = torch.zeros(1, 16, 16)
    image[0, 5, 7] = 1.0  # row 5, column 7
    moved = translate(image, torch.tensor([[3.0, -2.0]]))  # dx=+3 (columns), dy=-2 (rows)
    assert moved[0].nonzero().tolist() == [[3, 10]] and moved[0, 3, 10] == 1.0
    half = translate(image, torch.tensor([[0.5, 0.0]]))
    torch.testing.assert_close(half[0, 5, 7:9], torch.tensor([0.5, 0.5]))
    assert half.sum() == pytest.approx(1.0)


def test_translate_matches_scipy_linear_shift_with_zero_fill():
    rng = np.random.default_rng(0)
    images = rng.random((3, 20, 24))
    shifts = np.array([[1.3, -2.6], [-0.4, 0.75], [5.5, 3.25]])  # [dx, dy]
    moved = translate(torch.from_numpy(images), torch.from_numpy(shifts)).numpy()
    for image, (dx, dy), got in zip(images, shifts, moved, strict=True):
        expected = ndimage.shift(image, (dy, dx), order=1, mode="grid-constant", cval=0.0)  # per-tap zero fill
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_translate_complex_shifts_real_and_imaginary_planes_and_has_gradients():
    z = _random_object((4, 16, 16), seed=2).requires_grad_(True)
    shifts = torch.tensor([[0.3, 1.2], [-1.0, 0.0], [2.5, -0.5], [0.0, 0.0]])
    moved = translate(z, shifts)
    torch.testing.assert_close(moved.real, translate(z.real, shifts))
    torch.testing.assert_close(moved.imag, translate(z.imag, shifts))
    torch.testing.assert_close(moved[3], z[3])
    moved.abs().sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def _groups_from_objects(n_groups: int, N: int = 32, gridsize: int = 2, step: int = 4):
    """Patches cut from a different object per group at integer offsets around the group centre."""
    big = N + 4 * step
    objects = _random_object((n_groups, big, big), seed=3)
    grid = torch.tensor([(i * step, j * step) for j in range(gridsize) for i in range(gridsize)], dtype=torch.float32)
    centre = grid.mean(0)
    positions = grid - centre  # x - g, [x, y]
    offsets = (-positions).expand(n_groups, -1, -1).contiguous()  # grouping sign convention
    c0 = big // 2
    patches = torch.stack(
        [
            torch.stack(
                [obj[c0 + int(y) - N // 2 : c0 + int(y) + N // 2, c0 + int(x) - N // 2 : c0 + int(x) + N // 2] for x, y in positions]
            )
            for obj in objects
        ]
    )
    return patches, offsets, objects


@pytest.mark.parametrize("n_groups", [64, 80])
def test_gridsize2_merge_keeps_one_canvas_per_group(n_groups):
    patches, offsets, objects = _groups_from_objects(n_groups)
    canvas = merge_patches(patches, offsets, pad=4)
    assert canvas.shape == (n_groups, 40, 40)
    # every canvas is that group's own object (no mixing across the batch): centre of the union
    big = objects.shape[-1]
    c0 = big // 2
    window = slice(c0 - 12, c0 + 12)
    torch.testing.assert_close(canvas[:, 8:32, 8:32], objects[:, window, window], rtol=1e-5, atol=1e-5)
    # merging a group alone gives the same canvas as merging it inside a big batch
    torch.testing.assert_close(merge_patches(patches[17:18], offsets[17:18], pad=4), canvas[17:18])


def test_merge_extract_returns_consistent_patches_unchanged_in_their_centres():
    patches, offsets, _ = _groups_from_objects(64)
    again = merge_extract(patches, offsets)
    assert again.shape == patches.shape
    torch.testing.assert_close(again[..., 8:24, 8:24], patches[..., 8:24, 8:24], rtol=1e-5, atol=1e-5)


def test_merge_averages_inconsistent_patches_and_extract_inverts_the_shift():
    N = 16
    patches = torch.stack([torch.full((N, N), 1.0 + 0j), torch.full((N, N), 3.0 + 0j)])[None].to(torch.complex64)
    offsets = torch.zeros(1, 2, 2)
    merged = merge_patches(patches, offsets, pad=0)
    torch.testing.assert_close(merged, torch.full((1, N, N), 2.0 + 0j))
    canvas = torch.zeros(1, 24, 24, dtype=torch.complex64)
    canvas[0, 12 + 2, 12 - 1] = 1.0  # a point at (x, y) = (-1, +2) from the canvas centre
    cut = extract_patches(canvas, torch.tensor([[[1.0, -2.0]]]), N)  # r = -(x - g)
    assert cut[0, 0].abs().argmax() == (N // 2) * N + N // 2


def test_poisson_nll_matches_the_direct_formula():
    rng = np.random.default_rng(4)
    rate = rng.uniform(0.5, 50.0, size=(4, 1, 8, 8))
    counts = rng.poisson(rate).astype(np.float64)
    got = poisson_nll(torch.from_numpy(rate), torch.from_numpy(counts)).item()
    direct = np.mean(-(stats.poisson.logpmf(counts, rate)) - np.array([math.lgamma(k + 1) for k in counts.ravel()]).reshape(counts.shape))
    assert got == pytest.approx(direct, rel=1e-10)
    assert got == pytest.approx(np.mean(rate - counts * np.log(rate)), rel=1e-12)


def test_poisson_nll_is_minimal_at_the_observed_counts_and_finite_at_zero_rate():
    counts = torch.tensor([0.0, 2.0, 7.0])
    rate = counts.clone().clamp_min(1e-3).requires_grad_(True)
    poisson_nll(rate, counts).backward()
    torch.testing.assert_close(rate.grad[1:], torch.zeros(2))
    assert torch.isfinite(poisson_nll(torch.zeros(3), counts))


def test_diffraction_loss_combines_weighted_nll_and_mae():
    rng = torch.Generator().manual_seed(5)
    intensity = torch.rand(2, 1, 8, 8, generator=rng)
    observed = torch.rand(2, 1, 8, 8, generator=rng)
    s = 3.0
    parts = diffraction_loss(intensity, observed, s, nll_weight=0.25, mae_weight=0.5)
    torch.testing.assert_close(parts["nll"], poisson_nll(s**2 * intensity, (s * observed) ** 2))
    torch.testing.assert_close(parts["mae"], (s * intensity.sqrt() - s * observed).abs().mean())
    torch.testing.assert_close(parts["loss"], 0.25 * parts["nll"] + 0.5 * parts["mae"])
