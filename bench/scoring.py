"""How the quality benchmarks score an image and find a method's time to quality (shared by
:mod:`bench.quality` and :mod:`bench.solver`; numpy and the project's metrics only, no torch)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ptycho_torch.errors import DataContractError
from ptycho_torch.metrics import align_phase, evaluate_reconstruction, register

TARGET = 0.95
"""Fraction of the best SSIM of a case that counts as 'reached the quality'."""
MAX_SHIFT_PX = 3.0
"""Largest registration shift accepted (a poor reconstruction can pull the cross-correlation peak anywhere)."""


def score(image: np.ndarray, reference: np.ndarray, *, frc_curves: bool = True) -> dict[str, Any]:
    """SSIM, PSNR, FRC50 (amplitude, phase) and the phase correlation. Sub-pixel registration is
    applied when it finds a shift of at most :data:`MAX_SHIFT_PX`; otherwise the images are compared
    as placed (positions are shared, so they align). The shift is found before anything is scored:
    a featureless image (the flat object) can pull it anywhere, leaving too thin an overlap to score."""
    try:
        aligned, cropped, shift = register(image, reference)
    except DataContractError:  # the registration shift left no overlap
        shift = None
    registered = shift is not None and max(abs(v) for v in shift) <= MAX_SHIFT_PX
    if not registered:
        aligned, cropped = np.asarray(image), np.asarray(reference)
    metrics = evaluate_reconstruction(aligned, cropped, register_first=False)
    out: dict[str, Any] = metrics.scores()
    out["registered_shift_px"] = [float(v) for v in shift] if registered and shift is not None else None
    out["phase_correlation"] = phase_correlation(aligned, cropped, register_first=False)
    if frc_curves:
        out["frc_curves"] = {"amplitude": np.round(metrics.frc[0], 4).tolist(),
                             "phase": np.round(metrics.frc[1], 4).tolist()}
    return out


def phase_correlation(image: np.ndarray, reference: np.ndarray, *, register_first: bool = True) -> float:
    """Pearson correlation of the two phases after the same registration, offset and ramp removal as
    :func:`evaluate_reconstruction` (the phase SSIM, on ``(phi + pi) / 2 pi``, hardly moves for a
    phase range of a few tenths of a radian; the correlation does)."""
    p, r = (register(image, reference)[:2] if register_first else (np.asarray(image), np.asarray(reference)))
    a, b = align_phase(np.angle(p)).ravel(), align_phase(np.angle(r)).ravel()
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def time_to_quality(curves: dict[str, list[dict[str, Any]]], parts: tuple[str, ...] = ("amplitude", "phase"),
                    *, kept: bool = False) -> dict[str, Any]:
    """Targets (``TARGET`` x the best SSIM of any method, amplitude and phase) and, per method, the
    first time at which the targets of ``parts`` are all reached (None: never). ``kept``: the first
    time from which every later point of the method stays at the targets (a run that passes the
    target and then leaves it, as its user gets its last state, has not reached it there)."""
    best = {part: max(p[f"ssim_{part}"] for points in curves.values() for p in points)
            for part in ("amplitude", "phase")}
    target = {part: TARGET * value for part, value in best.items()}
    reached = {}
    for method, points in curves.items():
        ordered = sorted(points, key=lambda p: p["seconds"])
        ok = [all(p[f"ssim_{part}"] >= target[part] for part in parts) for p in ordered]
        hits = [p for i, p in enumerate(ordered) if ok[i] and (not kept or all(ok[i:]))]
        reached[method] = ({"seconds": hits[0]["seconds"], "iterations": hits[0].get("iterations"),
                            "epochs": hits[0].get("epochs")} if hits else None)
    return {"best": best, "target": target, "parts": list(parts), "kept": kept, "reached": reached}


def reached_at(hit: dict[str, Any] | None) -> str:
    """Table cell for where a method reached its target (a :func:`time_to_quality` ``reached`` entry):
    ``"12 it."``, ``"10 epochs"``, ``""`` (neither counted) or ``"—"`` (never)."""
    if hit is None:
        return "—"
    if hit.get("iterations") is not None:
        return f"{hit['iterations']} it."
    return f"{hit['epochs']} epochs" if hit.get("epochs") is not None else ""


def speed_up(hit: dict[str, Any] | None, baseline: dict[str, Any] | None) -> str:
    """Table cell: how many times sooner ``hit`` reached the target than ``baseline`` (``"—"`` if either never did)."""
    return "—" if hit is None or baseline is None else f"{baseline['seconds'] / hit['seconds']:.1f}x"
