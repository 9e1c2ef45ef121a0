"""The PtychoPINN CNN generator (Hoidn et al., docs/design.md References), written to export cleanly.

One shared encoder and two skip-less decoders (amplitude, phase). The graph is real-valued end to
end: ``forward(diffraction, scale) -> (amplitude, phase)``, both ``(B, C, N, N)`` float32. ``N`` and
``C`` are fixed when the module is built; the only dynamic dimension is the batch.

Filter ladders follow the TensorFlow reference and generalise to any power of two ``N >= 32``:
``log2(N/8)`` encoder levels ending in an 8x8 bottleneck of ``128 * n_filters_scale`` channels,
decoders that climb back to ``N/2`` with ``32 * n_filters_scale`` channels, and a last stage that
predicts the central ``N/2`` window (zero-padded to ``N``) plus, with ``probe_big``, the border
(``generator='tf'``), or the whole ``N x N`` window from one head with bilinear upsampling
(``generator='full'``: no hard window edge, so no square frame in the patches), optionally with
the amplitude multiplied by a smooth :func:`taper` (``generator='taper'``: a soft support), or the
TF structure with its centre head and border branch blended by a smooth :func:`blend_window`
instead of the hard mask (``generator='smooth'``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ptycho_torch.choices import AmpActivation, Generator, check_table
from ptycho_torch.config import ModelConfig

#: feature channels the TF reference reserves for the border branch (``c_outer``)
BORDER_CHANNELS = 4


def encoder_filters(N: int) -> list[int]:
    """Encoder ladder before ``n_filters_scale``: ``[32, 64, 128]`` at N=64, ``[64, 128]`` at N=32."""
    levels = int(math.log2(N // 8))
    return [128 // 2 ** (levels - 1 - i) for i in range(levels)]


def decoder_filters(N: int) -> list[int]:
    """Decoder ladder before ``n_filters_scale``: ``[64, 32]`` at N=64, ``[32]`` at N=32."""
    levels = int(math.log2(N // 8))
    return [32 * 2 ** (levels - 2 - i) for i in range(levels - 1)]


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """3x3 'same' convolution with Keras' default init (glorot-uniform weights, zero bias)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
    nn.init.xavier_uniform_(conv.weight)
    assert conv.bias is not None  # bias=True above
    nn.init.zeros_(conv.bias)
    return conv


class _ConvBlock(nn.Module):
    """Conv+ReLU, Conv+ReLU, then a 2x max-pool (encoder) or a 2x nearest upsampling (decoder)."""

    def __init__(self, in_channels: int, out_channels: int, resample: nn.Module) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels)
        self.conv2 = _conv(out_channels, out_channels)
        self.resample = resample

    def forward(self, x: Tensor) -> Tensor:
        return self.resample(F.relu(self.conv2(F.relu(self.conv1(x)))))


def _down(in_channels: int, out_channels: int) -> _ConvBlock:
    return _ConvBlock(in_channels, out_channels, nn.MaxPool2d(2))


def _up(in_channels: int, out_channels: int, mode: str = "nearest") -> _ConvBlock:
    upsample = nn.Upsample(scale_factor=2, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    return _ConvBlock(in_channels, out_channels, upsample)


AMPLITUDE_ACTIVATIONS: Mapping[AmpActivation, Callable[[], nn.Module]] = check_table(AmpActivation, {
    AmpActivation.SIGMOID: nn.Sigmoid,
    AmpActivation.SWISH: nn.SiLU,
    AmpActivation.SILU: nn.SiLU,
    AmpActivation.SOFTPLUS: nn.Softplus,
    AmpActivation.RELU: nn.ReLU,
})
"""``amp_activation`` -> the amplitude head's activation module."""


@dataclass(frozen=True)
class Head:
    """How one ``generator`` builds the last decoder stage."""

    windowed: bool
    """Predict the central N/2 window at the decoder's native resolution (nearest upsampling), zero-padded
    to N when ``pad_object``; else the whole N x N window from one head (bilinear upsampling)."""
    taper: bool = False
    """Multiply the amplitude by :func:`taper` (a soft support)."""
    blend: bool = False
    """Blend the centre head and the border branch by :func:`blend_window` instead of the hard mask."""


HEADS: Mapping[Generator, Head] = check_table(Generator, {
    Generator.TF: Head(windowed=True),
    Generator.SMOOTH: Head(windowed=True, blend=True),
    Generator.FULL: Head(windowed=False),
    Generator.TAPER: Head(windowed=False, taper=True),
})
"""``generator`` -> its last decoder stage (see the module docstring)."""


class _PhaseActivation(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return math.pi * torch.tanh(x)


class _Decoder(nn.Module):
    """Decoder base (8x8 -> N/2) and the last stage of one head (amplitude or phase)."""

    taper: Tensor
    border_mask: Tensor
    window: Tensor
    """The buffers its head registers: ``(1, 1, N, N)`` float32 (see :func:`taper`, :func:`border_mask`,
    :func:`blend_window`)."""

    def __init__(self, config: ModelConfig, activation: nn.Module, border_mask: Tensor, *,
                 tapered: bool = False) -> None:
        super().__init__()
        N, nf, cout = config.N, config.n_filters_scale, config.channels
        head = HEADS[config.generator]
        mode = "nearest" if head.windowed else "bilinear"
        self.tapered = tapered and head.taper
        if self.tapered:
            self.register_buffer("taper", taper(N), persistent=False)
        ladder = [f * nf for f in decoder_filters(N)]
        widths = [128 * nf, *ladder]
        self.base = nn.Sequential(*(_up(a, b, mode) for a, b in pairwise(widths)))
        features = widths[-1]  # 32 * nf at N/2 x N/2
        border_width = nf * 2048 // N
        self.pad_object = config.pad_object and head.windowed
        self.probe_big = config.probe_big and self.pad_object
        self.activation = activation
        self.pad = N // 4
        if self.pad_object:
            self.inner_channels = features - BORDER_CHANNELS if self.probe_big else features
            self.inner_conv = _conv(self.inner_channels, cout)
        else:
            self.outer_up = _up(features, border_width, mode)
            self.outer_conv = _conv(border_width, cout)
        if self.probe_big:
            self.border_up = _up(BORDER_CHANNELS, border_width)
            self.border_conv = _conv(border_width, cout)
            self.register_buffer("border_mask", border_mask, persistent=False)
        self.blended = self.pad_object and head.blend
        if self.blended:
            self.register_buffer("window", blend_window(N), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.base(x)
        if not self.pad_object:
            out = self.activation(self.outer_conv(self.outer_up(x)))
            return out * self.taper if self.tapered else out
        out = F.pad(self.activation(self.inner_conv(x[:, : self.inner_channels])), (self.pad,) * 4)
        if self.blended:
            out = out * self.window
        if self.probe_big:
            border = F.silu(self.border_conv(self.border_up(x[:, self.inner_channels :])))
            out = out + border * (1 - self.window if self.blended else self.border_mask)
        return out


def _separable_window(N: int, flat: float, roll_off: float) -> Tensor:
    """``(1, 1, N, N)`` float32: 1 within ``flat`` pixels of the centre (per axis), a cos^2 roll-off
    to 0 over the next ``roll_off`` pixels, 0 beyond; the product of the two axes' profiles."""
    d = (torch.arange(N, dtype=torch.float64) - N / 2 + 0.5).abs()
    t = torch.cos(0.5 * math.pi * ((d - flat) / roll_off).clamp(0, 1)) ** 2
    return (t[:, None] * t[None, :]).to(torch.float32)[None, None]


def taper(N: int) -> Tensor:
    """1 over the central ``N/2`` window, a cos^2 roll-off to 0 over the next ``N/8`` pixels, 0
    beyond: a soft support without the hard window edge ('taper' generator)."""
    return _separable_window(N, N / 4, N / 8)


def blend_window(N: int) -> Tensor:
    """1 up to ``N/16`` pixels inside the central ``N/2`` window's edge, a cos^2 roll-off to 0 at the
    edge, 0 beyond. The 'smooth' generator weights its centre head by it and its border branch by
    one minus it: a blend instead of a hard seam."""
    return _separable_window(N, N / 4 - N / 16, N / 16)


def border_mask(N: int) -> Tensor:
    """``(1, 1, N, N)`` float32: 0 inside the central ``N/2`` window, 1 outside."""
    mask = torch.ones(1, 1, N, N)
    mask[..., N // 4 : N - N // 4, N // 4 : N - N // 4] = 0.0
    return mask


class PtychoPINNGenerator(nn.Module):
    """Diffraction amplitudes -> object amplitude and phase patches.

    ``forward(diffraction (B, C, N, N) raw amplitudes, scale (B,)) -> (amplitude, phase)``, both
    ``(B, C, N, N)`` float32; the network sees ``diffraction * scale`` (the input normalisation,
    design.md section 2). ``C = config.gridsize ** 2`` patterns in, one patch per pattern out.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        nf, C = config.n_filters_scale, config.channels
        ladder = [f * nf for f in encoder_filters(config.N)]
        widths = [C, *ladder]
        self.encoder = nn.Sequential(*(_down(a, b) for a, b in pairwise(widths)))
        mask = border_mask(config.N)
        self.amplitude = _Decoder(config, AMPLITUDE_ACTIVATIONS[config.amp_activation](), mask, tapered=True)
        self.phase = _Decoder(config, _PhaseActivation(), mask)

    def forward(self, diffraction: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        features = self.encoder(diffraction * scale.reshape(-1, 1, 1, 1))
        return self.amplitude(features), self.phase(features)


def combine_complex(amplitude: Tensor, phase: Tensor) -> Tensor:
    """``amplitude * exp(i * phase)`` as complex64 (valid for negative amplitudes too)."""
    return torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))
