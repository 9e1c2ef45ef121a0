"""The Fourier layers' fixed DFT bases and spectral convolutions against ``torch.fft`` references."""

from __future__ import annotations

import pytest
import torch

from ptycho_torch.fourier_layers import (
    FactorizedSpectralConv2d,
    SpectralConv2d,
    complex_matmul,
    dft_basis,
    idft_basis,
    irfft_basis,
    rfft_basis,
)


def _low_pass_1d(x: torch.Tensor, modes: int) -> torch.Tensor:
    spectrum = torch.fft.rfft(x)
    spectrum[..., modes:] = 0
    return torch.fft.irfft(spectrum, n=x.shape[-1])


def _kept_2d(x: torch.Tensor, modes: int) -> torch.Tensor:
    """``rfft2(x)`` at the kept frequencies: rows ``0..modes-1`` and ``-modes..-1``, columns ``0..modes-1``."""
    spectrum = torch.fft.rfft2(x)
    return torch.cat([spectrum[..., :modes, :modes], spectrum[..., -modes:, :modes]], dim=-2)


def _from_kept_2d(kept: torch.Tensor, n: int, modes: int) -> torch.Tensor:
    """``irfft2`` of the kept frequencies (as :func:`_kept_2d` orders them), zero elsewhere."""
    spectrum = torch.zeros(*kept.shape[:-2], n, n // 2 + 1, dtype=kept.dtype)
    spectrum[..., :modes, :modes] = kept[..., :modes, :]
    spectrum[..., -modes:, :modes] = kept[..., modes:, :]
    return torch.fft.irfft2(spectrum, s=(n, n))


@pytest.mark.parametrize(("n", "modes"), [(16, 4), (32, 8), (32, 16), (8, 1)])
def test_the_bases_are_the_truncated_rfft_and_inverse_forward_is_the_low_pass(n: int, modes: int) -> None:
    torch.manual_seed(n + modes)
    x = torch.randn(3, 2, n, n)
    cos, sin = rfft_basis(n, modes)
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == (n, modes)
    want = torch.fft.rfft(x)[..., :modes]
    torch.testing.assert_close(x @ cos, want.real, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(x @ sin, want.imag, atol=1e-4, rtol=1e-5)
    icos, isin = irfft_basis(n, modes)
    torch.testing.assert_close((x @ cos) @ icos + (x @ sin) @ isin, _low_pass_1d(x, modes), atol=1e-5, rtol=0)
    # 2-D: rfft along W, the two-sided DFT along H, and back
    spectrum = complex_matmul(dft_basis(n, modes), (x @ cos, x @ sin))
    kept = _kept_2d(x, modes)
    torch.testing.assert_close(spectrum[0], kept.real, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(spectrum[1], kept.imag, atol=1e-4, rtol=1e-5)
    re, im = complex_matmul(idft_basis(n, modes), spectrum)
    torch.testing.assert_close(re @ icos + im @ isin, _from_kept_2d(kept, n, modes), atol=1e-5, rtol=0)


@pytest.mark.parametrize("modes", [0, 9])
def test_modes_beyond_half_the_axis_are_refused(modes: int) -> None:
    with pytest.raises(ValueError, match=r"`modes` must be in \[1, 8\] for a size-16 axis"):
        rfft_basis(16, modes)


def test_spectral_conv_is_the_fno_layer_of_torch_fft() -> None:
    torch.manual_seed(0)
    n, modes, cin, cout = 16, 4, 3, 5
    layer = SpectralConv2d(cin, cout, n, modes)
    x = torch.randn(2, cin, n, n)
    weight = torch.complex(layer.weight_re, layer.weight_im).detach()
    want = _from_kept_2d(torch.einsum("bixy,xyio->boxy", _kept_2d(x, modes), weight), n, modes)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), want, atol=1e-4, rtol=1e-4)
    assert not [name for name in layer.state_dict() if "cos" in name or "sin" in name]  # bases: not saved
    assert not any(t.is_complex() for t in [*layer.parameters(), *layer.buffers()])


def test_factorized_spectral_conv_is_the_ffno_operator_of_torch_fft() -> None:
    torch.manual_seed(1)
    n, modes, c = 16, 5, 4
    layer = FactorizedSpectralConv2d(c, n, modes)
    x = torch.randn(2, c, n, n)

    def along(dim: int, re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft(x, dim=dim).narrow(dim, 0, modes)
        equation = "bihk,kio->bohk" if dim == -1 else "bikw,kio->bokw"
        mixed = torch.einsum(equation, spectrum, torch.complex(re, im).detach())
        padded = torch.zeros_like(torch.fft.rfft(x, dim=dim))  # c in, c out
        padded.narrow(dim, 0, modes).copy_(mixed)
        return torch.fft.irfft(padded, n=n, dim=dim)

    want = along(-1, layer.w_re, layer.w_im) + along(-2, layer.h_re, layer.h_im)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), want, atol=1e-4, rtol=1e-4)
