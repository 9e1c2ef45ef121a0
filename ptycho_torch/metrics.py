"""Reconstruction quality against a reference object (the metrics PtychoPINN reports).

numpy-only (scikit-image for SSIM and registration, scipy for the Fourier shift). The building
blocks are public so a study can mix them; :func:`evaluate_reconstruction` chains them the way
PtychoPINN's ``eval_reconstruction`` does: register, trim, normalise the amplitude, align the
phase, then MAE / MSE / PSNR / SSIM / MS-SSIM / FRC on amplitude and on phase, returned as one
:class:`QualityReport`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from scipy.ndimage import fourier_shift, gaussian_filter
from skimage.metrics import structural_similarity
from skimage.registration import phase_cross_correlation

from ptycho_torch.errors import DataContractError

__all__ = [
    "AmplitudePhase",
    "QualityReport",
    "align_phase",
    "evaluate_reconstruction",
    "frc_cutoff",
    "fourier_ring_correlation",
    "mae",
    "ms_ssim",
    "mse",
    "normalize_amplitude",
    "periodic_rms",
    "psnr",
    "register",
    "ssim",
]

FloatArray = npt.NDArray[np.float64]
PhaseAlign = Literal["plane", "mean", "none"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Per-scale exponents of MS-SSIM (Wang, Simoncelli & Bovik 2003), as in PtychoPINN."""


class AmplitudePhase(NamedTuple):
    """One metric of the amplitude image and of the phase image (a tuple: ``amplitude, phase = ...``)."""

    amplitude: float
    phase: float


@dataclass(frozen=True)
class QualityReport:
    """What :func:`evaluate_reconstruction` measured, each metric on amplitude and on phase."""

    mae: AmplitudePhase
    """Mean absolute error (amplitude normalised to the reference mean; phase in radians)."""
    mse: AmplitudePhase
    """Mean squared error."""
    psnr: AmplitudePhase
    """dB; amplitude against the reference's range, phase against 2 pi; ``inf`` for identical images."""
    ssim: AmplitudePhase
    """Structural similarity, 1 for identical images (phase as ``(phi + pi) / 2 pi``)."""
    ms_ssim: AmplitudePhase
    """Multi-scale SSIM (amplitude smoothed by ``ms_ssim_sigma``)."""
    frc50: AmplitudePhase
    """First ring (interpolated) where the FRC drops below 0.5; ``n/2`` when it never does."""
    frc1over7: AmplitudePhase
    """The same at the 1/7 threshold."""
    frc: tuple[FloatArray, FloatArray]
    """FRC curves ``(amplitude, phase)``, rings ``0 .. n/2 - 1`` (:func:`fourier_ring_correlation`)."""
    shift: tuple[float, float]
    """``(row, col)`` px applied to the prediction by registration; ``(0, 0)`` when not registering."""

    def scores(self, metrics: Sequence[str] = ("ssim", "psnr", "frc50")) -> dict[str, float]:
        """``{"ssim_amplitude": ..., "ssim_phase": ..., ...}`` for ``metrics``: the flat JSON form the
        benchmarks record."""
        return {f"{name}_{part}": float(value) for name in metrics
                for part, value in getattr(self, name)._asdict().items()}


def _check_same_shape(a: np.ndarray, b: np.ndarray, names: str = "`pred` and `reference`") -> None:
    if a.shape != b.shape:
        raise DataContractError(
            f"{names} must have the same shape, got {a.shape} and {b.shape}; "
            f"crop or register them first (metrics.register)"
        )
    if a.ndim != 2:
        raise DataContractError(f"{names} must be 2-D images (H, W), got {a.ndim}-D arrays of shape {a.shape}")


def _floats(*images: npt.ArrayLike) -> list[FloatArray]:
    return [np.asarray(image, dtype=np.float64) for image in images]


def mae(pred: npt.ArrayLike, reference: npt.ArrayLike) -> float:
    """Mean absolute error ``mean |reference - pred|``."""
    p, r = _floats(pred, reference)
    _check_same_shape(p, r)
    return float(np.mean(np.abs(r - p)))


def mse(pred: npt.ArrayLike, reference: npt.ArrayLike) -> float:
    """Mean squared error ``mean (reference - pred)**2``."""
    p, r = _floats(pred, reference)
    _check_same_shape(p, r)
    return float(np.mean((r - p) ** 2))


def psnr(pred: npt.ArrayLike, reference: npt.ArrayLike, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range**2 / MSE)`` in dB; ``inf`` for identical images.

    ``data_range`` defaults to the reference's ``max - min`` (PtychoPINN's ``cv2.PSNR`` assumes 255,
    which is meaningless for amplitudes near 1 and phases in radians).
    """
    p, r = _floats(pred, reference)
    error = mse(p, r)
    if data_range is None:
        data_range = float(r.max() - r.min())
    if error == 0.0:
        return math.inf
    return float(10.0 * np.log10(data_range**2 / error))


def ssim(pred: npt.ArrayLike, reference: npt.ArrayLike, *, data_range: float | None = None) -> float:
    """Structural similarity (``skimage.metrics.structural_similarity``); 1.0 for identical images.

    ``data_range`` defaults to the reference's ``max - min``.
    """
    p, r = _floats(pred, reference)
    _check_same_shape(p, r)
    if data_range is None:
        data_range = float(r.max() - r.min()) or 1.0
    win_size = min(7, *(s if s % 2 else s - 1 for s in p.shape))
    return float(structural_similarity(r, p, data_range=data_range, win_size=win_size))


def ms_ssim(
    pred: npt.ArrayLike, reference: npt.ArrayLike, *, data_range: float | None = None, sigma: float = 0.0
) -> float:
    """Multi-scale SSIM: ``prod_l SSIM_l ** w_l`` over up to 5 dyadic scales (stops below 7 px).

    Images are optionally smoothed by a Gaussian of ``sigma`` px first (PtychoPINN smooths amplitude
    with sigma=1); negative SSIMs are clamped to 1e-4 so the product is defined.
    """
    p, r = _floats(pred, reference)
    _check_same_shape(p, r)
    if sigma > 0:
        p, r = gaussian_filter(p, sigma), gaussian_filter(r, sigma)
    if data_range is None:
        data_range = float(r.max() - r.min()) or 1.0
    value = 1.0
    for weight in MS_SSIM_WEIGHTS:
        if min(p.shape) < 7:
            break
        value *= max(ssim(p, r, data_range=data_range), 1e-4) ** weight
        p, r = p[::2, ::2], r[::2, ::2]
    return float(value)


def normalize_amplitude(pred_amplitude: npt.ArrayLike, reference_amplitude: npt.ArrayLike) -> FloatArray:
    """Scale ``pred_amplitude`` so its mean equals the reference's (the network's scale is arbitrary)."""
    p, r = _floats(pred_amplitude, reference_amplitude)
    mean = p.mean()
    if mean == 0.0:
        raise DataContractError("`pred_amplitude` must not be all zero; there is no scale to normalise")
    return p * (r.mean() / mean)


def periodic_rms(image: npt.ArrayLike, period: int) -> float:
    """RMS of the ``period``-periodic part of a real image: the image folded into its
    ``(row mod period, col mod period)`` cells, each cell averaged, the mean cell removed.

    On a stitched reconstruction's amplitude error with ``period`` the raster scan step this is the
    grid texture that a systematic per-patch error leaves (issue 11). Rows and columns beyond the
    last whole period are ignored. Raises :class:`DataContractError` for an image smaller than one
    period or a period < 2.
    """
    x = np.asarray(image, dtype=np.float64)
    if not isinstance(period, int) or period < 2 or x.ndim != 2 or min(x.shape) < period:
        raise DataContractError(f"`period` must be an integer >= 2 no larger than the 2-D image {x.shape}, "
                                f"got {period!r}")
    h, w = (n - n % period for n in x.shape)
    cells = x[:h, :w].reshape(h // period, period, w // period, period).mean(axis=(0, 2))
    return float(np.sqrt(np.mean((cells - cells.mean()) ** 2)))


def _wrap(phase: FloatArray) -> FloatArray:
    return np.angle(np.exp(1j * phase))


def align_phase(phase: npt.ArrayLike, *, method: PhaseAlign = "plane") -> FloatArray:
    """Remove the unobservable part of a phase image: its global offset, and with ``plane`` a linear ramp.

    The offset is the circular mean (``angle(sum e^{i phi})``), so wrapping at +-pi does no harm; the
    ramp ``a*x + b*y + c`` is then a least-squares fit to the offset-free phase. The result is
    wrapped to ``[-pi, pi]``. Apply it to prediction and reference independently, as PtychoPINN does.
    """
    (phi,) = _floats(phase)
    if method == "none":
        return phi
    if method not in ("plane", "mean"):
        raise DataContractError(f"`method` must be one of ['plane', 'mean', 'none'], got {method!r}")
    phi = _wrap(phi - np.angle(np.sum(np.exp(1j * phi))))
    if method == "plane":
        yy, xx = np.mgrid[0:phi.shape[0], 0:phi.shape[1]]
        design = np.stack([xx.ravel(), yy.ravel(), np.ones(phi.size)], axis=1).astype(np.float64)
        coefficients, *_ = np.linalg.lstsq(design, phi.ravel(), rcond=None)
        phi = _wrap(phi - (design @ coefficients).reshape(phi.shape))
    return phi


def register(
    pred: npt.ArrayLike, reference: npt.ArrayLike, *, upsample_factor: int = 50
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Sub-pixel-align complex ``pred`` to ``reference``; return both cropped to the valid overlap.

    The shift is ``phase_cross_correlation`` of the magnitudes (``upsample_factor`` = 1/precision in
    px), applied to ``pred`` as a Fourier shift; ``ceil(|shift|)`` px are then cropped from every
    border of both images to drop the wrapped-around edge. Returns ``(pred_aligned,
    reference_cropped, (shift_row, shift_col))``, the shift that was applied to ``pred``.
    """
    p, r = np.asarray(pred), np.asarray(reference)
    _check_same_shape(p, r)
    shift, _, _ = phase_cross_correlation(np.abs(r), np.abs(p), upsample_factor=upsample_factor)
    if not np.any(shift):
        return p, r, (0.0, 0.0)  # already aligned: skip the FFT round trip and its rounding
    moved = np.fft.ifft2(fourier_shift(np.fft.fft2(p), shift))
    shifted: np.ndarray = moved if np.iscomplexobj(p) else moved.real
    crop = int(math.ceil(float(np.max(np.abs(shift)))))
    if crop * 2 >= min(p.shape):
        raise DataContractError(
            f"registration shift {tuple(shift)} px leaves no overlap in {p.shape} images; "
            f"check that `pred` and `reference` show the same region"
        )
    window = (slice(crop, p.shape[0] - crop), slice(crop, p.shape[1] - crop))
    return shifted[window], r[window], (float(shift[0]), float(shift[1]))


def fourier_ring_correlation(image1: npt.ArrayLike, image2: npt.ArrayLike) -> FloatArray:
    """FRC curve ``|sum_ring F1 F2*| / sqrt(sum_ring |F1|^2 sum_ring |F2|^2)`` for rings ``0 .. n/2 - 1``.

    Both images are cropped to their central ``n x n`` square (``n`` = the smaller side, made even);
    ring ``k`` holds the frequencies of integer radius ``k`` (``k / n`` cycles per pixel).
    """
    a, b = np.asarray(image1), np.asarray(image2)
    _check_same_shape(a, b, "`image1` and `image2`")
    n = min(a.shape) // 2 * 2
    r0, c0 = (a.shape[0] - n) // 2, (a.shape[1] - n) // 2
    a, b = a[r0:r0 + n, c0:c0 + n], b[r0:r0 + n, c0:c0 + n]
    f1 = np.fft.fftshift(np.fft.fft2(a))
    f2 = np.fft.fftshift(np.fft.fft2(b))
    yy, xx = np.mgrid[0:n, 0:n] - n // 2
    ring = np.rint(np.hypot(xx, yy)).astype(np.int64).ravel()
    keep = ring < n // 2
    ring = ring[keep]

    def ring_sum(values: np.ndarray) -> np.ndarray:
        flat = values.ravel()[keep]
        if np.iscomplexobj(flat):
            return (np.bincount(ring, flat.real, n // 2) + 1j * np.bincount(ring, flat.imag, n // 2))
        return np.bincount(ring, flat, n // 2)

    numerator = np.abs(ring_sum(f1 * np.conj(f2)))
    denominator = np.sqrt(ring_sum(np.abs(f1) ** 2) * ring_sum(np.abs(f2) ** 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(denominator > 0, numerator / denominator, 0.0)
    return curve.astype(np.float64)


def frc_cutoff(curve: npt.ArrayLike, threshold: float) -> float:
    """First ring where ``curve`` drops below ``threshold``, linearly interpolated between rings.

    Returns ``len(curve)`` when it never does (resolution limited by the image size), and 0.0 when
    the curve is below ``threshold`` at ring 1 and ring 0 is not above it (nothing is resolved, e.g.
    a flat object: there is no crossing to interpolate). Ring 0 (the mean) is skipped otherwise.
    Common thresholds: 0.5 and 1/7.
    """
    c = np.asarray(curve, dtype=np.float64)
    below = np.flatnonzero(c[1:] < threshold) + 1
    if len(below) == 0:
        return float(len(c))
    k = int(below[0])
    upper, lower = c[k - 1], c[k]
    if upper < threshold:  # only at k = 1: ring 0 is below too, the curve never crosses
        return 0.0
    return float(k - 1 + (upper - threshold) / (upper - lower))


def evaluate_reconstruction(
    pred: npt.ArrayLike,
    reference: npt.ArrayLike,
    *,
    register_first: bool = True,
    phase_align: PhaseAlign = "plane",
    trim_px: int = 0,
    frc_sigma: float = 0.0,
    ms_ssim_sigma: float = 1.0,
) -> QualityReport:
    """Compare a complex reconstruction with a complex reference of the same shape.

    Steps: optional sub-pixel registration (:func:`register`), trimming ``trim_px`` from every
    border, amplitude normalisation to the reference mean, phase alignment of both (``phase_align``).
    Returns the :class:`QualityReport`. SSIM of the phase uses ``(phi + pi) / 2pi`` with
    ``data_range=1``; PSNR of the phase uses ``data_range=2pi``.
    """
    p, r = np.asarray(pred), np.asarray(reference)
    _check_same_shape(p, r)
    shift = (0.0, 0.0)
    if register_first:
        p, r, shift = register(p, r)
    if trim_px:
        if 2 * trim_px >= min(p.shape):
            raise DataContractError(f"`trim_px` must be < {min(p.shape) // 2} for {p.shape} images, got {trim_px}")
        p, r = p[trim_px:-trim_px, trim_px:-trim_px], r[trim_px:-trim_px, trim_px:-trim_px]

    ref_amp = np.abs(r).astype(np.float64)
    amp = normalize_amplitude(np.abs(p), ref_amp)
    ref_phase = align_phase(np.angle(r), method=phase_align)
    phase = align_phase(np.angle(p), method=phase_align)

    def to_unit(phi: FloatArray) -> FloatArray:
        return (phi + np.pi) / (2 * np.pi)

    curves = (fourier_ring_correlation(amp, ref_amp), fourier_ring_correlation(phase, ref_phase))
    if frc_sigma > 0:
        curves = (gaussian_filter(curves[0], frc_sigma), gaussian_filter(curves[1], frc_sigma))
    return QualityReport(
        mae=AmplitudePhase(mae(amp, ref_amp), mae(phase, ref_phase)),
        mse=AmplitudePhase(mse(amp, ref_amp), mse(phase, ref_phase)),
        psnr=AmplitudePhase(psnr(amp, ref_amp), psnr(phase, ref_phase, data_range=2 * np.pi)),
        ssim=AmplitudePhase(ssim(amp, ref_amp), ssim(to_unit(phase), to_unit(ref_phase), data_range=1.0)),
        ms_ssim=AmplitudePhase(ms_ssim(amp, ref_amp, sigma=ms_ssim_sigma),
                               ms_ssim(to_unit(phase), to_unit(ref_phase), data_range=1.0)),
        frc50=AmplitudePhase(frc_cutoff(curves[0], 0.5), frc_cutoff(curves[1], 0.5)),
        frc1over7=AmplitudePhase(frc_cutoff(curves[0], 1 / 7), frc_cutoff(curves[1], 1 / 7)),
        frc=curves,
        shift=shift,
    )
