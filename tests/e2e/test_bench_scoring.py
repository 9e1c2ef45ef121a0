"""The benchmarks' scoring (bench.scoring) on the images that broke it."""

from __future__ import annotations

import numpy as np


def test_a_flat_image_is_scored_as_placed_when_registration_pulls_it_far_away() -> None:
    from bench.cases import weak_object
    from bench.scoring import score
    from ptycho_torch.metrics import register

    reference = weak_object(224, 0)[:218, :218]  # the weak-contrast truth: nothing for the flat object to lock on
    flat = np.ones_like(reference)
    assert abs(register(flat, reference)[2][0]) > 100  # a 2-px overlap that SSIM cannot score
    scores = score(flat, reference)
    assert scores["registered_shift_px"] is None  # compared as placed, as any shift over 3 px is
    assert 0 < scores["ssim_amplitude"] < 0.5 and scores["ssim_phase"] > 0.9


def test_a_small_shift_is_registered_away() -> None:
    from bench.cases import weak_object
    from bench.scoring import score

    reference = weak_object(96, 1)
    moved = np.roll(reference, (1, -2), axis=(0, 1))
    scores = score(moved, reference)
    assert scores["registered_shift_px"] == [-1.0, 2.0] and scores["ssim_amplitude"] > 0.99
