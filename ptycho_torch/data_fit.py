"""How well an object explains each measured pattern: Poisson NLL, R-factor, outliers (numpy only).

For a model intensity ``I_j`` (what a probe on an object predicts for pattern ``j``) and measured
counts ``k_j`` (``amplitude**2``), the model is first given the maximum-likelihood global scale
``c = sum k / sum I`` (under Poisson noise; the absolute scale of a network's object is arbitrary),
then per pattern ``j`` (means over its pixels)::

    nll_j      = mean(c I - k log(c I) + log k!)                 Poisson NLL per pixel
    r_factor_j = sum |sqrt(k) - sqrt(c I)| / sum sqrt(k)          amplitude R-factor
    deviance_j = 2 mean(k log(k / (c I)) - (k - c I))             Poisson deviance per pixel

The deviance of a model that explains a pattern up to its shot noise is about 1 per bright pixel
and less where pixels see under a photon, whatever the model's scale; within one scan it is about
the same for every such pattern, so it is the score outliers are found on: ``log deviance`` more than
:data:`OUTLIER_SIGMAS` robust standard deviations (1.4826 MAD) above the scan's median, and at least
:data:`OUTLIER_MIN_RATIO` times the median (so a uniformly well-fitted scan flags nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import gammaln, xlogy

from ptycho_torch.errors import DataContractError

__all__ = ["DataFit", "MeasuredCounts", "OUTLIER_MIN_RATIO", "OUTLIER_SIGMAS", "PatternFit", "data_fit",
           "robust_outliers"]

OUTLIER_SIGMAS = 6.0
"""Robust standard deviations (of the log deviance) above the median that make a pattern an outlier."""
OUTLIER_MIN_RATIO = 1.5
"""An outlier's deviance is also at least this multiple of the scan's median deviance."""
RATE_FLOOR = 1e-9
"""Floor on predicted counts before the logarithm (a pixel the model predicts dark)."""
CHUNK = 256
"""Patterns per vectorised step of a fit."""


@dataclass(frozen=True)
class PatternFit:
    """Per-pattern figures of a scan."""

    nll: npt.NDArray[np.float64]
    """``(S,)`` Poisson NLL per pixel, log k! included."""
    r_factor: npt.NDArray[np.float64]
    """``(S,)`` amplitude R-factor."""
    deviance: npt.NDArray[np.float64]
    """``(S,)`` Poisson deviance per pixel."""


@dataclass(frozen=True)
class DataFit:
    """The data-fit figures of one object against one scan."""

    scale: float
    """Maximum-likelihood global intensity scale ``c`` applied to the model."""
    patterns: PatternFit
    outliers: npt.NDArray[np.int64]
    """Indices of the patterns the object does not explain (see the module docstring)."""

    def summary(self) -> dict[str, Any]:
        """Median and 95th percentile of the per-pattern NLL and R-factor, and the number of outliers."""
        nll, r = self.patterns.nll, self.patterns.r_factor
        return {"nll_median": float(np.median(nll)), "nll_p95": float(np.percentile(nll, 95)),
                "r_factor_median": float(np.median(r)), "r_factor_p95": float(np.percentile(r, 95)),
                "n_outliers": int(len(self.outliers))}

    def to_json(self) -> dict[str, Any]:
        """Summary, outlier indices, scale and the per-pattern figures as plain JSON values."""
        return {**self.summary(), "outliers": self.outliers.tolist(), "scale": self.scale,
                "nll": self.patterns.nll.astype(np.float32).tolist(),
                "r_factor": self.patterns.r_factor.astype(np.float32).tolist()}


class MeasuredCounts:
    """Measured patterns, kept once as float32 amplitudes ``sqrt(k)`` ``(S, N, N)`` with the
    per-pattern constants every fit needs (a refinement scores its object every iteration). Fits run
    over chunks of :data:`CHUNK` patterns, so their float64 temporaries stay small."""

    def __init__(self, amplitudes: npt.NDArray[np.floating]) -> None:
        root = np.asarray(amplitudes, dtype=np.float32)
        if root.ndim != 3:
            raise DataContractError(f"`amplitudes` must be (S, N, N), got shape {root.shape}")
        self.amplitudes = root
        constants = [self._constants(root[first:first + CHUNK].astype(np.float64))
                     for first in range(0, len(root), CHUNK)]
        self._root_sum, self._log_factorial, self._saturated, totals = (
            np.concatenate(c) for c in zip(*constants, strict=True))
        self.total = float(totals.sum())

    @staticmethod
    def _constants(root: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], ...]:
        k = root**2
        axes = (-2, -1)
        return (np.maximum(root.sum(axis=axes), RATE_FLOOR), gammaln(k + 1.0).mean(axis=axes),
                (k - xlogy(k, k)).mean(axis=axes), k.sum(axis=axes))  # saturated: the NLL at rate = k, no log k!

    def fit(self, intensity: npt.NDArray[np.floating]) -> DataFit:
        """The :class:`DataFit` of model ``intensity`` (same shape and layout as the patterns: both
        fftshifted or both not) with the maximum-likelihood global scale."""
        if intensity.shape != self.amplitudes.shape:
            raise DataContractError(f"`intensity` must have the patterns' shape {self.amplitudes.shape}, got "
                                    f"{intensity.shape}")
        total = float(intensity.sum(dtype=np.float64))
        if not total > 0:
            raise DataContractError("the model predicts no photons (all-zero object or probe); cannot fit the data")
        scale = self.total / total
        axes = (-2, -1)
        core, r_factor = np.empty(len(intensity)), np.empty(len(intensity))
        for first in range(0, len(intensity), CHUNK):
            part = slice(first, first + CHUNK)
            rate = np.maximum(scale * intensity[part].astype(np.float64), RATE_FLOOR)
            root = self.amplitudes[part].astype(np.float64)
            core[part] = np.mean(rate - root**2 * np.log(rate), axis=axes)
            r_factor[part] = np.abs(root - np.sqrt(rate)).sum(axis=axes) / self._root_sum[part]
        deviance = np.maximum(2.0 * (core - self._saturated), 0.0)
        patterns = PatternFit(nll=core + self._log_factorial, r_factor=r_factor, deviance=deviance)
        return DataFit(scale=scale, patterns=patterns, outliers=robust_outliers(deviance))


def robust_outliers(deviance: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
    """Indices whose ``deviance`` sits far above the rest (see the module docstring)."""
    score = np.log(np.maximum(np.asarray(deviance, np.float64), RATE_FLOOR))
    median = np.median(score)
    sigma = 1.4826 * np.median(np.abs(score - median))
    threshold = median + max(OUTLIER_SIGMAS * sigma, np.log(OUTLIER_MIN_RATIO))
    return np.flatnonzero(score > threshold).astype(np.int64)


def data_fit(intensity: npt.NDArray[np.floating], counts: npt.NDArray[np.floating]) -> DataFit:
    """The :class:`DataFit` of model ``intensity`` ``(S, N, N)`` against measured ``counts`` (same
    layout), with the maximum-likelihood global scale."""
    return MeasuredCounts(np.sqrt(np.asarray(counts, dtype=np.float64))).fit(intensity)
