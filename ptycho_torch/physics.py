"""Training-only physics: probe normalisation, the far-field forward model, overlap merge, losses.

Conventions (PtychoPINN's forward model and losses, docs/design.md References):

* object patches and probes are complex ``(..., N, N)``; a probe has ``P`` incoherent modes
  ``(P, N, N)``;
* the far field is the orthonormal 2-D FFT, fftshifted (zero frequency at the centre);
  the modes add **incoherently**: ``I = sum_p |F(P_p * O)|**2``;
* predicted counts are ``lambda = s**2 * I`` with the intensity scale ``s = sqrt(nphotons)/(N/2)``;
  targets are ``(s * x_norm)**2`` with ``x_norm`` the normalised measured amplitudes;
* translations move content by ``+t`` (``t = [dx, dy]`` in pixels, x = column), bilinear, zero fill;
* relative offsets ``r`` follow the grouping convention ``r = -(x - group_centre)``; merging places
  patch ``c`` at ``-r_c`` from the canvas centre, extraction shifts back by ``+r_c``.

Nothing here is part of the exported inference graph.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from ptycho_torch import group_merge
from ptycho_torch.errors import DataContractError
from ptycho_torch.group_merge import BORDER_WEIGHT

#: floor for predicted counts before the logarithm of the Poisson NLL
RATE_FLOOR = 1e-12


def disk_mask(N: int) -> Tensor:
    """Hard disk of radius ``N/4`` about the patch centre, float32 ``(N, N)`` (TF ``M_probe``)."""
    idx = torch.arange(N, dtype=torch.float64) - N / 2 + 0.5
    radius = torch.sqrt(idx[:, None] ** 2 + idx[None, :] ** 2)
    return (radius < N / 4).to(torch.float32)


def as_modes(probe: Tensor) -> Tensor:
    """A probe as ``(P, N, N)`` complex64: ``(N, N)`` becomes one mode."""
    probe = probe.to(torch.complex64)
    return probe[None] if probe.ndim == 2 else probe


def normalize_probe(probe: Tensor, probe_scale: float = 4.0) -> tuple[Tensor, float]:
    """Scale a probe like the reference (hoidn/PtychoPINN); return ``(probe_norm, normaliser)``.

    ``probe_norm = probe / normaliser`` with ``normaliser = probe_scale * mean_hw |M * P|`` over all
    ``N x N`` pixels, ``M`` the disk of :func:`disk_mask` and ``|P|`` the total (incoherent) mode
    amplitude ``sqrt(sum_p |P_p|**2)``, so all modes share one normaliser.
    """
    modes = as_modes(probe)
    total = torch.sqrt((modes.abs() ** 2).sum(dim=0))
    normaliser = float(probe_scale * (disk_mask(modes.shape[-1]) * total).mean())
    if not math.isfinite(normaliser) or normaliser <= 0:
        raise DataContractError(
            f"probe must have finite, non-zero amplitude inside the disk of radius N/4, got normaliser "
            f"{normaliser}; check probeGuess in the scan file"
        )
    return modes / normaliser, normaliser


def intensity_scale(nphotons: float, N: int) -> float:
    """``s = sqrt(nphotons) / (N/2)``: maps normalised amplitudes (mean energy (N/2)^2) to counts."""
    return math.sqrt(nphotons) / (N / 2)


def illuminate(obj: Tensor, probe: Tensor) -> Tensor:
    """Exit waves ``(B, C, P, N, N)`` of object patches ``(B, C, N, N)`` under ``(P, N, N)`` modes."""
    return obj[:, :, None] * probe


def far_field_intensity(exit_waves: Tensor) -> Tensor:
    """``sum_p |fftshift(FFT_ortho(psi_p))|**2`` of ``(B, C, P, N, N)`` -> ``(B, C, N, N)`` float32."""
    field = torch.fft.fftshift(torch.fft.fft2(exit_waves, norm="ortho"), dim=(-2, -1))
    return (field.real**2 + field.imag**2).sum(dim=2)


def far_field_amplitude(exit_waves: Tensor) -> Tensor:
    """Square root of :func:`far_field_intensity` (gradient-safe at zero)."""
    return torch.sqrt(far_field_intensity(exit_waves).clamp_min(RATE_FLOOR))


def _shift_last_axis(images: Tensor, shifts: Tensor) -> Tensor:
    """Linear-interpolation shift of ``images (M, H, W)`` along the last axis by ``shifts (M,)``."""
    width = images.shape[-1]
    source = -shifts  # output pixel j samples the input at j - shift
    start = torch.floor(source)
    frac = (source - start).to(images.real.dtype)[:, None, None]
    index = torch.arange(width, device=images.device)[None, :] + start.to(torch.long)[:, None]

    def tap(idx: Tensor) -> Tensor:
        valid = ((idx >= 0) & (idx < width)).to(images.real.dtype)[:, None, :]
        gathered = torch.gather(images, -1, idx.clamp(0, width - 1)[:, None, :].expand_as(images))
        return gathered * valid

    return (1 - frac) * tap(index) + frac * tap(index + 1)


def translate(images: Tensor, shifts: Tensor) -> Tensor:
    """Move the content of ``images (..., H, W)`` by ``shifts (..., 2)`` = ``[dx, dy]`` pixels.

    Bilinear (separable, so integer shifts are exact); taps falling outside the image contribute
    zero. Real or complex images; one shift per leading index, all in one vectorised call.
    """
    *lead, H, W = images.shape
    flat = images.reshape(-1, H, W)
    t = shifts.reshape(-1, 2).to(torch.float64 if flat.dtype in (torch.float64, torch.complex128) else torch.float32)
    moved = _shift_last_axis(flat, t[:, 0])
    moved = _shift_last_axis(moved.transpose(-1, -2), t[:, 1]).transpose(-1, -2)
    return moved.reshape(*lead, H, W)


def canvas_padding(offsets: Tensor) -> int:
    """Even border (pixels) a group canvas needs around ``N`` to hold patches at ``offsets``."""
    return group_merge.canvas_padding(float(offsets.abs().max()) if offsets.numel() else 0.0)


def _merge_weights(N: int, pad: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.from_numpy(group_merge.merge_weights(N, pad)).to(dtype=dtype, device=device)


def merge_patches(patches: Tensor, offsets: Tensor, pad: int) -> Tensor:
    """Merge each group's patches on its own canvas: ``(B, C, N, N)`` -> ``(B, N+2pad, N+2pad)``.

    ``offsets (B, C, 2)`` are the relative offsets ``r`` (``[x, y]``, grouping sign convention);
    patch ``c`` moves by ``-r_c``. Overlaps are a weighted average: weight 1 in each patch's
    central ``N/2`` window, :data:`BORDER_WEIGHT` in its border, so centres dominate where they
    exist and borders fill in elsewhere. One canvas per group, whatever the batch size.
    """
    N = patches.shape[-1]
    padded = F.pad(patches, (pad,) * 4)
    weights = _merge_weights(N, pad, padded.real.dtype, padded.device).expand(padded.shape)
    moved = translate(padded * weights, -offsets)
    moved_weights = translate(weights, -offsets)
    return moved.sum(dim=1) / moved_weights.sum(dim=1).clamp_min(BORDER_WEIGHT * 1e-3)


def extract_patches(canvas: Tensor, offsets: Tensor, N: int) -> Tensor:
    """Cut ``C`` patches ``(B, C, N, N)`` back out of ``canvas (B, H, W)`` at ``offsets (B, C, 2)``."""
    C = offsets.shape[1]
    moved = translate(canvas[:, None].expand(-1, C, -1, -1), offsets)
    top = (canvas.shape[-2] - N) // 2
    left = (canvas.shape[-1] - N) // 2
    return moved[..., top : top + N, left : left + N]


def merge_extract(patches: Tensor, offsets: Tensor) -> Tensor:
    """The overlap constraint: merge each group's patches and cut them out again (same shape)."""
    merged = merge_patches(patches, offsets, canvas_padding(offsets))
    return extract_patches(merged, offsets, patches.shape[-1])


def poisson_nll(rate: Tensor, counts: Tensor) -> Tensor:
    """Mean Poisson negative log-likelihood without the constant: ``mean(lambda - k*log(lambda))``.

    ``rate`` (predicted counts) is floored at :data:`RATE_FLOOR` before the log (TF
    ``log_poisson_loss(compute_full_loss=False)``).
    """
    return (rate - counts * torch.log(rate.clamp_min(RATE_FLOOR))).mean()


def amplitude_mae(predicted: Tensor, observed: Tensor) -> Tensor:
    """Mean absolute error between predicted and observed (scaled) diffraction amplitudes."""
    return (predicted - observed).abs().mean()


def diffraction_loss(
    intensity: Tensor, observed: Tensor, scale: float | Tensor, *, nll_weight: float, mae_weight: float
) -> dict[str, Tensor]:
    """Weighted physics loss of predicted far-field ``intensity`` against ``observed`` amplitudes.

    ``observed`` are normalised measured amplitudes (``x_norm``); with ``s = scale`` the predicted
    counts are ``s**2 * intensity`` and the observed counts ``(s * observed)**2`` (``s`` a float, or
    a tensor broadcastable to ``intensity``, e.g. ``(B, 1, 1, 1)`` for per-item doses). Returns
    ``{"loss", "nll", "mae"}`` with ``loss = nll_weight * nll + mae_weight * mae``.
    """
    nll = poisson_nll(scale**2 * intensity, (scale * observed) ** 2)
    mae = amplitude_mae(scale * torch.sqrt(intensity.clamp_min(RATE_FLOOR)), scale * observed)
    return {"loss": nll_weight * nll + mae_weight * mae, "nll": nll, "mae": mae}


def central_window(patches: Tensor) -> Tensor:
    """The central ``N/2 x N/2`` window of ``(..., N, N)`` patches (where the probe lights the object)."""
    N = patches.shape[-1]
    return patches[..., N // 4 : N - N // 4, N // 4 : N - N // 4]


def distillation_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Gain-invariant distance of complex patches ``predicted`` to ``target`` (both ``(B, C, N, N)``).

    Over the batch's central ``N/2`` windows (:func:`central_window`), with ``c = <t, p> / <t, t>`` the
    least-squares complex gain of the targets ``t`` onto the prediction ``p``::

        D = sum |p - c t|**2 / sum |p|**2        (c and the denominator detached)

    ``D`` does not change when ``target`` is multiplied by any non-zero complex number (the solver's
    object has an arbitrary global gain and phase) and equals ``1 - |corr(p, t)|**2``, in ``[0, 1]``;
    its gradient ``2 (p - c t) / sum |p|**2`` pulls ``p`` towards the gained target. Returns a scalar (float32).
    """
    p = central_window(predicted.to(torch.complex64))
    t = central_window(target.to(torch.complex64)).detach()
    t_power = (t.real**2 + t.imag**2).sum()
    p_power = (p.real**2 + p.imag**2).sum().detach()
    with torch.no_grad():
        gain = (t.conj() * p).sum() / t_power.clamp_min(torch.finfo(torch.float32).tiny)
    residual = p - gain * t
    return (residual.real**2 + residual.imag**2).sum() / p_power.clamp_min(torch.finfo(torch.float32).tiny)
