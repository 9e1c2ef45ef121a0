"""The generators, written to export cleanly: the PtychoPINN CNN (Hoidn et al., docs/design.md
References) and two Fourier-neural-operator ones (FNO, F-FNO), one per ``architecture`` (:data:`GENERATORS`).

The CNN: one shared encoder and two skip-less decoders (amplitude, phase). The graph is real-valued end to
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

The Fourier generators (:class:`FourierGenerator`) lift the patterns to an ``N/2`` grid, run FNO
(``'fno'``) or F-FNO (``'ffno'``) blocks whose spectral transforms are fixed DFT matrices (no DFT node
in the exported graph, :mod:`ptycho_torch.fourier_layers`) and predict the whole ``N x N`` window.
One training step (forward and backward of 16 patterns at N=64, ``n_filters_scale`` 1, one CPU
thread) costs about 0.4x the CNN's for ``fno`` and 0.7x for ``ffno`` (docs/decisions.md, "Fourier
generators").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ptycho_torch.choices import AmpActivation, Architecture, Generator, check_table
from ptycho_torch.config import ModelConfig
from ptycho_torch.fourier_layers import FactorizedSpectralConv2d, SpectralConv2d

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


class ObjectGenerator(nn.Module):
    """Diffraction amplitudes -> object amplitude and phase patches: the base of every generator
    (:data:`GENERATORS`), which keeps the :class:`ModelConfig` it was built from as ``config``.

    ``forward(diffraction (B, C, N, N) raw amplitudes, scale (B,)) -> (amplitude, phase)``, both
    ``(B, C, N, N)`` float32; the network sees ``diffraction * scale`` (the input normalisation,
    design.md section 2). ``C = config.gridsize ** 2`` patterns in, one patch per pattern out.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config


class PtychoPINNGenerator(ObjectGenerator):
    """The CNN generator (``architecture='cnn'``, see the module docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
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


FOURIER_WIDTH = 32
"""Channels of the Fourier generators' blocks before ``n_filters_scale``."""
FOURIER_PATCH = 2
"""The Fourier generators work on an ``N/2 x N/2`` grid: each cell lifts (and predicts) a 2 x 2 pixel patch."""
FNO_LAYERS = 4
"""FNO blocks of the ``fno`` generator (Li et al.'s four)."""
FFNO_LAYERS = 6
"""F-FNO blocks of the ``ffno`` generator (cheaper blocks, so deeper; about the CNN's step cost)."""


def _grid(N: int) -> Tensor:
    """``(1, 2, N, N)`` float32: the row and column coordinates in [-1, 1] (FNO's position channels)."""
    axis = torch.linspace(-1.0, 1.0, N)
    return torch.stack(torch.meshgrid(axis, axis, indexing="ij"))[None]


class _FNOBlock(nn.Module):
    """One FNO layer (Li et al. 2021): ``gelu(spectral(x) + W x)``, W a 1x1 convolution; ``(B, c, n, n)``."""

    def __init__(self, channels: int, n: int, modes: int) -> None:
        super().__init__()
        self.spectral = SpectralConv2d(channels, channels, n, modes)
        self.pointwise = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.spectral(x) + self.pointwise(x))


class _FFNOBlock(nn.Module):
    """One F-FNO layer (Tran et al. 2023): ``x + W2 gelu(W1 spectral(x))``, the factorised spectral
    operator then a pointwise feed-forward (1x1 convolutions, 2x wider inside), residual; ``(B, c, n, n)``."""

    def __init__(self, channels: int, n: int, modes: int) -> None:
        super().__init__()
        self.spectral = FactorizedSpectralConv2d(channels, n, modes)
        self.feed_forward = nn.Sequential(nn.Conv2d(channels, 2 * channels, kernel_size=1), nn.GELU(),
                                          nn.Conv2d(2 * channels, channels, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.feed_forward(self.spectral(x))


def _fourier_head(width: int, channels: int, activation: nn.Module) -> nn.Sequential:
    """``(B, width, N/2, N/2)`` -> ``(B, channels, N, N)``: a pointwise MLP to ``channels`` 2 x 2 patches per
    cell, laid out by a pixel shuffle, then ``activation``."""
    return nn.Sequential(nn.Conv2d(width, 2 * width, kernel_size=1), nn.GELU(),
                         nn.Conv2d(2 * width, channels * FOURIER_PATCH**2, kernel_size=1),
                         nn.PixelShuffle(FOURIER_PATCH), activation)


class FourierGenerator(ObjectGenerator):
    """A Fourier-neural-operator generator of ``layers`` ``block(width, n, modes)`` blocks; :class:`FNOGenerator`
    and :class:`FFNOGenerator` choose them.

    Lift: ``diffraction * scale`` and two position channels (:func:`_grid`), a 2 x 2 stride-2 convolution
    to ``FOURIER_WIDTH * n_filters_scale`` channels on the ``N/2`` grid (the CNN decoder's last resolution).
    Then ``layers`` blocks keeping ``modes = N/8`` frequencies per axis (a quarter of the grid's band),
    and one head each for the whole ``N x N`` amplitude (``amp_activation``) and phase (``pi tanh``)
    windows. The spectral transforms are fixed DFT matrices (:mod:`ptycho_torch.fourier_layers`), so the
    exported graph has no DFT node. ``generator``, ``pad_object`` and ``probe_big`` are the CNN's.
    """

    grid: Tensor
    """The position channels, ``(1, 2, N, N)`` float32 (a buffer, not saved)."""

    def __init__(self, config: ModelConfig, block: Callable[[int, int, int], nn.Module], layers: int) -> None:
        super().__init__(config)
        N, C = config.N, config.channels
        width, n = FOURIER_WIDTH * config.n_filters_scale, N // FOURIER_PATCH
        self.register_buffer("grid", _grid(N), persistent=False)
        self.lift = nn.Conv2d(C + 2, width, kernel_size=FOURIER_PATCH, stride=FOURIER_PATCH)
        self.blocks = nn.Sequential(*(block(width, n, n // 4) for _ in range(layers)))
        self.amplitude = _fourier_head(width, C, AMPLITUDE_ACTIVATIONS[config.amp_activation]())
        self.phase = _fourier_head(width, C, _PhaseActivation())

    def forward(self, diffraction: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        x = diffraction * scale.reshape(-1, 1, 1, 1)
        features = self.blocks(self.lift(torch.cat([x, self.grid.expand(x.shape[0], -1, -1, -1)], dim=1)))
        return self.amplitude(features), self.phase(features)


class FNOGenerator(FourierGenerator):
    """``architecture='fno'``: :data:`FNO_LAYERS` FNO blocks (2-D spectral convolution plus a pointwise path)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, _FNOBlock, FNO_LAYERS)


class FFNOGenerator(FourierGenerator):
    """``architecture='ffno'``: :data:`FFNO_LAYERS` F-FNO blocks (factorised spectral operator, feed-forward,
    residual)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, _FFNOBlock, FFNO_LAYERS)


GENERATORS: Mapping[Architecture, Callable[[ModelConfig], ObjectGenerator]] = check_table(Architecture, {
    Architecture.CNN: PtychoPINNGenerator,
    Architecture.FNO: FNOGenerator,
    Architecture.FFNO: FFNOGenerator,
})
"""``architecture`` -> its generator class."""


def build_generator(config: ModelConfig) -> ObjectGenerator:
    """A new generator of ``config.architecture``, randomly initialised (the one way to build one from a config)."""
    return GENERATORS[config.architecture](config)


def combine_complex(amplitude: Tensor, phase: Tensor) -> Tensor:
    """``amplitude * exp(i * phase)`` as complex64 (valid for negative amplitudes too)."""
    return torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))
