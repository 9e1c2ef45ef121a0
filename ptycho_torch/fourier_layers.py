"""Fourier-neural-operator layers whose transforms are fixed real DFT matrices, not ``torch.fft``.

A spectral convolution keeps only a few low frequencies, so its forward and inverse transforms are
products with small truncated DFT bases: real cos/sin matrices, float32, built once per layer as
non-persistent buffers (derived from the sizes, so never in a checkpoint). The exported ONNX graph
then holds MatMul where ``torch.fft`` would put a DFT node, which onnxruntime runs on the CPU only
and TensorRT cannot parse (docs/decisions.md, "Fourier generators"). The cost is ``O(n * modes)``
per row and axis instead of ``O(n log n)``: comparable while ``modes`` stays small, and in large
matrix products that every provider runs well.

Complex tensors never appear: a spectrum is a pair ``(real, imag)`` of float32 tensors.

* :class:`SpectralConv2d`: the FNO spectral convolution (Li et al. 2021): ``rfft2``, the low positive
  and negative frequencies along H and the low ones along W, one complex ``in x out`` matrix per kept
  frequency pair, inverse.
* :class:`FactorizedSpectralConv2d`: the factorised one (F-FNO, Tran et al. 2023): a 1-D spectral
  convolution along H plus one along W, each with one complex matrix per kept frequency.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FactorizedSpectralConv2d", "SpectralConv2d", "complex_matmul", "dft_basis", "idft_basis",
           "irfft_basis", "mix_channels", "rfft_basis", "two_sided"]

Pair = tuple[Tensor, Tensor]
"""A complex tensor as its ``(real, imag)`` parts, both float32."""


def _check_modes(n: int, modes: int, limit: int) -> None:
    if not 1 <= modes <= limit:
        raise ValueError(f"`modes` must be in [1, {limit}] for a size-{n} axis, got {modes}")


def _angles(n: int, frequencies: Tensor) -> Tensor:
    """``(len(frequencies), n)`` float64: ``2 pi k x / n`` with ``k x`` reduced mod ``n`` (exact phases)."""
    x = torch.arange(n, dtype=torch.float64)
    return 2 * math.pi * torch.remainder(frequencies[:, None] * x[None, :], n) / n


def rfft_basis(n: int, modes: int) -> Pair:
    """``(cos, sin)``, each ``(n, modes)`` float32: for real ``x (..., n)``, ``x @ cos`` and ``x @ sin`` are
    the real and imaginary parts of ``torch.fft.rfft(x)[..., :modes]``. ``modes <= n // 2``."""
    _check_modes(n, modes, n // 2)
    angles = _angles(n, torch.arange(modes, dtype=torch.float64)).T
    return torch.cos(angles).float(), (-torch.sin(angles)).float()


def irfft_basis(n: int, modes: int) -> Pair:
    """``(cos, sin)``, each ``(modes, n)`` float32: ``real @ cos + imag @ sin`` is ``torch.fft.irfft`` (length
    ``n``) of the spectrum ``real + i imag`` ``(..., modes)`` zero-padded beyond ``modes``; the Hermitian
    doubling (1 at frequency 0, 2 above) and the ``1/n`` are in the matrices. ``modes <= n // 2``."""
    _check_modes(n, modes, n // 2)
    angles = _angles(n, torch.arange(modes, dtype=torch.float64))
    weight = torch.full((modes, 1), 2.0 / n, dtype=torch.float64)
    weight[0] = 1.0 / n
    return (weight * torch.cos(angles)).float(), (-weight * torch.sin(angles)).float()


def two_sided(n: int, modes: int) -> Tensor:
    """The kept frequencies of a full DFT: ``0 .. modes-1`` then ``-modes .. -1`` (as ``n - modes .. n - 1``)."""
    return torch.cat([torch.arange(modes), torch.arange(n - modes, n)]).to(torch.float64)


def dft_basis(n: int, modes: int) -> Pair:
    """``(cos, sin)``, each ``(2 modes, n)`` float32: ``(cos + i sin) @ z`` is ``torch.fft.fft(z, dim=-2)`` at the
    :func:`two_sided` frequencies, for complex ``z (..., n, m)``. ``modes <= n // 2``."""
    _check_modes(n, modes, n // 2)
    angles = _angles(n, two_sided(n, modes))
    return torch.cos(angles).float(), (-torch.sin(angles)).float()


def idft_basis(n: int, modes: int) -> Pair:
    """``(cos, sin)``, each ``(n, 2 modes)`` float32: ``(cos + i sin) @ y`` is ``torch.fft.ifft(dim=-2)`` of
    the spectrum ``y (..., 2 modes, m)`` at the :func:`two_sided` frequencies, zero elsewhere."""
    _check_modes(n, modes, n // 2)
    angles = _angles(n, two_sided(n, modes)).T
    return (torch.cos(angles) / n).float(), (torch.sin(angles) / n).float()


def complex_matmul(a: Pair, b: Pair) -> Pair:
    """``a @ b`` of two complex tensors given as pairs (broadcasting as :func:`torch.matmul`)."""
    return a[0] @ b[0] - a[1] @ b[1], a[0] @ b[1] + a[1] @ b[0]


def mix_channels(spectrum: Pair, weight: Pair, order: tuple[int, int, int, int]) -> Pair:
    """Per-frequency complex channel mixing as real MatMuls: the ``spectrum`` parts ``(B, in, F1, F2)``,
    permuted by ``order`` to channels last and the weight's frequencies leading, times ``weight``
    ``(..., in, out)`` (:func:`complex_matmul`, broadcasting as :func:`torch.matmul`), permuted back:
    ``(B, out, F1, F2)`` each. ONNX: Transpose, MatMul, Sub/Add. Nothing is computed from the weights
    alone, so a frozen TorchScript graph holds them once (a block form ``[[re, im], [-im, re]]`` built in
    the forward was folded into a second, 4x larger copy of every weight: 8.5 MB of a 4 MB model)."""
    back = tuple(order.index(axis) for axis in range(4))
    re, im = complex_matmul((spectrum[0].permute(order), spectrum[1].permute(order)), weight)
    return re.permute(back), im.permute(back)


def _spectral_weight(in_channels: int, out_channels: int, *modes: int) -> nn.Parameter:
    """One part (real or imaginary) ``(*modes, in, out)`` of the per-frequency channel mixing: uniform with
    the Glorot bound over channels halved in variance, so that the complex weight has the Glorot variance."""
    bound = math.sqrt(3.0 / (in_channels + out_channels))
    return nn.Parameter(torch.empty(*modes, in_channels, out_channels).uniform_(-bound, bound))


class SpectralConv2d(nn.Module):
    """FNO's spectral convolution on ``(B, in, n, n)`` -> ``(B, out, n, n)`` float32 (Li et al. 2021).

    ``rfft2`` truncated to the :func:`two_sided` ``2 modes`` frequencies along H and ``0 .. modes-1`` along
    W, a complex ``in x out`` matrix per kept frequency pair (``weight_re``, ``weight_im``: ``(2 modes, modes,
    in, out)``), and the inverse: equal to ``irfft2(einsum("bixy,xyio->boxy", rfft2(x)[kept], weight))`` (a
    test checks it against ``torch.fft``).
    """

    w_cos: Tensor
    w_sin: Tensor
    h_cos: Tensor
    h_sin: Tensor
    ih_cos: Tensor
    ih_sin: Tensor
    iw_cos: Tensor
    iw_sin: Tensor

    def __init__(self, in_channels: int, out_channels: int, n: int, modes: int) -> None:
        super().__init__()
        bases = {"w": rfft_basis(n, modes), "h": dft_basis(n, modes), "ih": idft_basis(n, modes),
                 "iw": irfft_basis(n, modes)}
        for name, (cos, sin) in bases.items():
            self.register_buffer(f"{name}_cos", cos, persistent=False)
            self.register_buffer(f"{name}_sin", sin, persistent=False)
        self.weight_re = _spectral_weight(in_channels, out_channels, 2 * modes, modes)
        self.weight_im = _spectral_weight(in_channels, out_channels, 2 * modes, modes)

    def forward(self, x: Tensor) -> Tensor:
        spectrum = x @ self.w_cos, x @ self.w_sin  # (B, in, n, modes): rfft along W
        spectrum = complex_matmul((self.h_cos, self.h_sin), spectrum)  # (B, in, 2 modes, modes): fft along H
        spectrum = mix_channels(spectrum, (self.weight_re, self.weight_im), (2, 3, 0, 1))  # (B, out, 2 modes, modes)
        re, im = complex_matmul((self.ih_cos, self.ih_sin), spectrum)  # (B, out, n, modes): ifft along H
        return re @ self.iw_cos + im @ self.iw_sin  # irfft along W


class FactorizedSpectralConv2d(nn.Module):
    """F-FNO's factorised spectral operator on ``(B, c, n, n)`` -> ``(B, c, n, n)`` float32 (Tran et al. 2023).

    A 1-D spectral convolution along W (``rfft`` over W truncated to ``modes``, a complex ``c x c`` matrix
    per kept frequency, ``irfft``) plus one along H with its own weights (``w_*``, ``h_*``: ``(modes, c, c)``):
    ``2 c^2 modes`` complex weights where :class:`SpectralConv2d` has ``2 c^2 modes^2``.
    """

    cos: Tensor
    sin: Tensor
    icos: Tensor
    isin: Tensor

    def __init__(self, channels: int, n: int, modes: int) -> None:
        super().__init__()
        for name, basis in (("cos", rfft_basis(n, modes)), ("icos", irfft_basis(n, modes))):
            self.register_buffer(name, basis[0], persistent=False)
            self.register_buffer(name.replace("cos", "sin"), basis[1], persistent=False)
        self.w_re, self.w_im = (_spectral_weight(channels, channels, modes) for _ in range(2))
        self.h_re, self.h_im = (_spectral_weight(channels, channels, modes) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        re, im = mix_channels((x @ self.cos, x @ self.sin), (self.w_re[:, None], self.w_im[:, None]),
                              (3, 0, 2, 1))  # (B, c, n, modes): per W frequency, over (B, H)
        along_w = re @ self.icos + im @ self.isin
        re, im = mix_channels((self.cos.mT @ x, self.sin.mT @ x), (self.h_re[:, None], self.h_im[:, None]),
                              (2, 0, 3, 1))  # (B, c, modes, n): per H frequency, over (B, W)
        along_h = self.icos.mT @ re + self.isin.mT @ im
        return along_w + along_h
