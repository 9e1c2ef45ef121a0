"""Figures for docs/benchmarks.md (matplotlib, Agg backend): images side by side and FRC curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from bench.report import ROOT
from ptycho_torch.metrics import align_phase, normalize_amplitude


def _display_path(path: Path) -> str:
    path = path.resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Lay out ``fig``, write it to ``path`` (PNG at 80 dpi, parent folders created) and close it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def quality_figure(path: Path, label: str, stamp: str, reference_name: str, reference: np.ndarray,
                   images: dict[str, np.ndarray], scores: dict[str, dict[str, Any]]) -> str:
    """Amplitude (row 1) and phase (row 2) of the reference and each reconstruction, as scored (amplitude
    scaled to the reference mean, phase offset and ramp removed), plus their FRC curves against the
    reference; returns the written path (repository-relative when inside it)."""
    panels = {reference_name: reference, **images}
    ref_amp = np.abs(reference)
    fig, axes = plt.subplots(2, len(panels) + 1, figsize=(3.2 * (len(panels) + 1), 6.4), squeeze=False)
    amp_range = np.percentile(ref_amp, [1, 99])
    phase_range = np.percentile(align_phase(np.angle(reference)), [1, 99])
    for column, (name, image) in enumerate(panels.items()):
        amplitude = normalize_amplitude(np.abs(image), ref_amp)
        axes[0, column].imshow(amplitude, cmap="gray", vmin=amp_range[0], vmax=amp_range[1])
        axes[1, column].imshow(align_phase(np.angle(image)), cmap="gray", vmin=phase_range[0],
                                vmax=phase_range[1])
        axes[0, column].set_title(name, fontsize=9)
        for row in range(2):
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
    axes[0, 0].set_ylabel("amplitude")
    axes[1, 0].set_ylabel("phase (rad)")
    for row, part in enumerate(("amplitude", "phase")):
        ax = axes[row, -1]
        for name, score in scores.items():
            curve = np.asarray(score["frc_curves"][part])
            ax.plot(np.arange(len(curve)) / (2 * len(curve)), curve, label=f"{name} (FRC50 {score[f'frc50_{part}']:.1f})")
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("spatial frequency (cycles/pixel)")
        ax.set_title(f"FRC vs {reference_name}, {part}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{label} — held-out region {reference.shape[0]}x{reference.shape[1]} px — run {stamp}", fontsize=10)
    save_figure(fig, path)
    return _display_path(path)


def time_to_quality_figure(path: Path, cases: dict[str, dict[str, Any]], stamp: str,
                           columns: tuple[str, ...] = ("ssim_amplitude", "ssim_phase")) -> str:
    """A score (each of ``columns``: SSIM amplitude and phase, or e.g. ``phase_correlation``) against
    wall time per method, one row per case, the 0.95 x best SSIM target dashed and the flat object's
    score dotted; returns the written path."""
    scored = {name: case for name, case in cases.items() if "curves" in case}
    rows = max(len(scored), 1)
    fig, axes = plt.subplots(rows, len(columns), figsize=(5 * len(columns), 3.0 * rows), squeeze=False)
    for row, (name, case) in enumerate(scored.items()):
        for column, key in enumerate(columns):
            ax = axes[row, column]
            for method, points in case["curves"].items():
                points = sorted(points, key=lambda p: p["seconds"])
                ax.plot([p["seconds"] for p in points], [p[key] for p in points], marker="o", ms=3, label=method)
            if key.startswith("ssim_"):
                ax.axhline(case["time_to_quality"]["target"][key.removeprefix("ssim_")], color="gray", lw=0.8,
                           ls="--", label="0.95 x best")
            if key in case["flat"]:
                ax.axhline(case["flat"][key], color="black", lw=0.8, ls=":", label="flat object")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on short ranges
            ax.set_xlabel("wall time (s)")
            label = key.replace("ssim_", "SSIM ").replace("_", " ")
            ax.set_ylabel(label)
            ax.set_title(f"{name}: {label} vs {case['reference']}", fontsize=9)
            if row == 0 and column == 0:
                ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"time to quality — run {stamp}", fontsize=10)
    save_figure(fig, path)
    return _display_path(path)
