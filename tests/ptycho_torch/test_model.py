"""The generators: the CNN's TF topology and parameter counts, the Fourier ones; shapes and value
ranges, the architecture table, export-cleanliness."""

from __future__ import annotations

import math

import pytest
import torch

from ptycho_torch.config import ModelConfig
from ptycho_torch.errors import ConfigError
from ptycho_torch.model import (
    FFNO_LAYERS,
    GENERATORS,
    FFNOGenerator,
    FNOGenerator,
    PtychoPINNGenerator,
    border_mask,
    build_generator,
    combine_complex,
    decoder_filters,
    encoder_filters,
    taper,
)

SWISH_MIN = -0.2785  # min of x * sigmoid(x)


def _run(config: ModelConfig, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = PtychoPINNGenerator(config).eval()
    x = torch.rand(batch, config.channels, config.N, config.N) * 3
    with torch.no_grad():
        return model(x, torch.full((batch,), 0.7))


def test_filter_ladders_follow_the_reference_and_generalise():
    assert encoder_filters(64) == [32, 64, 128]
    assert encoder_filters(128) == [16, 32, 64, 128]
    assert encoder_filters(256) == [8, 16, 32, 64, 128]
    assert encoder_filters(32) == [64, 128]
    assert decoder_filters(64) == [64, 32]
    assert decoder_filters(128) == [128, 64, 32]
    assert decoder_filters(32) == [32]


@pytest.mark.parametrize(("gridsize", "expected"), [(1, 2_331_772), (2, 2_340_208)])
def test_parameter_count_matches_tensorflow_reference(gridsize, expected):
    model = PtychoPINNGenerator(ModelConfig(N=64, gridsize=gridsize, n_filters_scale=2))
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("N", [64, 128])
@pytest.mark.parametrize("gridsize", [1, 2])
def test_output_shapes_and_ranges(N, gridsize):
    config = ModelConfig(N=N, gridsize=gridsize, n_filters_scale=1)
    amplitude, phase = _run(config, batch=2)
    C = gridsize**2
    assert amplitude.shape == phase.shape == (2, C, N, N)
    assert amplitude.dtype == phase.dtype == torch.float32
    inside = (border_mask(N) == 0).expand_as(amplitude)
    # central window: sigmoid amplitude in (0, 1); border: swish branch, bounded below by swish's min
    assert 0 < amplitude[inside].min() and amplitude[inside].max() < 1
    assert amplitude[~inside].min() >= SWISH_MIN
    assert phase.abs().max() <= math.pi
    assert amplitude.std() > 0 and phase.std() > 0


def test_without_probe_big_the_border_is_exactly_zero():
    config = ModelConfig(N=32, n_filters_scale=1, probe_big=False)
    amplitude, phase = _run(config)
    outside = border_mask(32).bool().expand_as(amplitude)
    assert torch.count_nonzero(amplitude[outside]) == 0 and torch.count_nonzero(phase[outside]) == 0
    assert torch.count_nonzero(amplitude[~outside]) == amplitude[~outside].numel()


def test_without_pad_object_the_whole_patch_comes_from_the_head_activation():
    amplitude, _ = _run(ModelConfig(N=32, n_filters_scale=1, pad_object=False, amp_activation="relu"))
    assert amplitude.shape == (2, 1, 32, 32)
    assert amplitude.min() >= 0


@pytest.mark.parametrize(("activation", "low"), [("relu", 0.0), ("softplus", 1e-12), ("swish", SWISH_MIN)])
def test_amplitude_activation_choices(activation, low):
    amplitude, _ = _run(ModelConfig(N=32, n_filters_scale=1, probe_big=False, amp_activation=activation))
    centre = amplitude[..., 8:24, 8:24]
    assert centre.min() >= low


def test_scale_input_multiplies_the_diffraction_per_sample():
    torch.manual_seed(1)
    model = PtychoPINNGenerator(ModelConfig(N=32, n_filters_scale=1)).eval()
    x = torch.rand(3, 1, 32, 32)
    scale = torch.tensor([0.5, 1.0, 2.0])
    with torch.no_grad():
        a1, p1 = model(x, scale)
        a2, p2 = model(x * scale[:, None, None, None], torch.ones(3))
        a3, _ = model(x[1:2], scale[1:2])  # each sample is independent of the rest of the batch
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(p1, p2)
    torch.testing.assert_close(a1[1:2], a3)


def test_glorot_uniform_init_and_zero_bias():
    model = PtychoPINNGenerator(ModelConfig(N=32, n_filters_scale=1))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs
    for conv in convs:
        assert torch.count_nonzero(conv.bias) == 0
        fan_in = conv.in_channels * 9
        fan_out = conv.out_channels * 9
        assert conv.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-7


def test_border_mask_is_a_buffer_and_no_complex_tensors_anywhere():
    model = PtychoPINNGenerator(ModelConfig(N=32, n_filters_scale=1))
    masks = [b for name, b in model.named_buffers(remove_duplicate=False) if name.endswith("border_mask")]
    assert len(masks) == 2 and all(m.shape == (1, 1, 32, 32) for m in masks)
    assert int(masks[0].sum()) == 32 * 32 - 16 * 16
    assert not any(t.is_complex() for t in [*model.parameters(), *model.buffers()])


def test_torch_export_with_dynamic_batch_matches_eager():
    torch.manual_seed(0)
    model = PtychoPINNGenerator(ModelConfig(N=32, gridsize=2, n_filters_scale=1)).eval()
    x, scale = torch.rand(2, 4, 32, 32), torch.ones(2)
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(model, (x, scale), dynamic_shapes=({0: batch}, {0: batch}))
    x5, s5 = torch.rand(5, 4, 32, 32), torch.rand(5) + 0.5
    with torch.no_grad():
        expected = model(x5, s5)
        got = exported.module()(x5, s5)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])


def test_combine_complex_is_polar_and_keeps_negative_amplitudes():
    amplitude = torch.tensor([1.0, 0.5, -0.25])
    phase = torch.tensor([0.0, math.pi / 2, 0.3])
    z = combine_complex(amplitude, phase)
    assert z.dtype == torch.complex64
    torch.testing.assert_close(z[:2], torch.polar(amplitude[:2], phase[:2]))
    torch.testing.assert_close(z[2], torch.tensor(-0.25 * complex(math.cos(0.3), math.sin(0.3)), dtype=torch.complex64))


def _frame_jump(amplitude: torch.Tensor, N: int) -> float:
    """Mean |row-to-row step| across the central window's top edge, over the median step elsewhere."""
    steps = (amplitude[..., 1:, :] - amplitude[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    return float(steps[N // 4 - 1] / steps.median())


def test_full_generator_predicts_the_whole_window_without_a_frame():
    N = 32
    full = ModelConfig(N=N, n_filters_scale=1, generator="full")
    amplitude, phase = _run(full, batch=4)
    assert amplitude.shape == phase.shape == (4, 1, N, N)
    assert 0 < amplitude.min() and amplitude.max() < 1  # every pixel from the sigmoid head
    assert phase.abs().max() <= math.pi
    model = PtychoPINNGenerator(full)
    assert not [name for name, _ in model.named_buffers() if name.endswith("border_mask")]
    assert {m.mode for m in model.modules() if isinstance(m, torch.nn.Upsample)} == {"bilinear"}
    # the TF-parity generator's window edge is a step many times the typical one; 'full' has none
    assert _frame_jump(_run(ModelConfig(N=N, n_filters_scale=1), batch=4)[0], N) > 10
    assert _frame_jump(amplitude, N) < 3


def test_generator_field_is_checked():
    with pytest.raises(ConfigError, match="generator"):
        ModelConfig(generator="unet")


def test_taper_generator_is_a_soft_support_without_a_frame():
    N = 32
    window = taper(N)[0, 0]
    centre = slice(N // 4, N - N // 4)
    assert torch.all(window[centre, centre] == 1) and window[: N // 8, :].max() < 1e-6  # flat top, zero rim
    steps = (window[1:, N // 2] - window[:-1, N // 2]).abs()
    assert steps.max() < 0.5  # a roll-off over N/8 pixels, not a step
    amplitude, _ = _run(ModelConfig(N=N, n_filters_scale=1, generator="taper"), batch=4)
    assert torch.all(amplitude[..., centre, centre] > 0) and amplitude[..., : N // 8, :].abs().max() < 1e-6

    def largest_row_step(a: torch.Tensor) -> float:
        return float((a[..., 1:, :] - a[..., :-1, :]).abs().mean(dim=(0, 1, 3)).max())

    tf_amplitude, _ = _run(ModelConfig(N=N, n_filters_scale=1), batch=4)
    assert largest_row_step(amplitude) < 0.6 * largest_row_step(tf_amplitude)  # spread over N/8 rows


def test_smooth_generator_is_tf_with_a_blend_instead_of_a_seam():
    N = 64
    torch.manual_seed(0)
    tf = PtychoPINNGenerator(ModelConfig(N=N, n_filters_scale=1)).eval()
    smooth = PtychoPINNGenerator(ModelConfig(N=N, n_filters_scale=1, generator="smooth")).eval()
    smooth.load_state_dict(tf.state_dict())  # the same weights: only the seam differs
    x, scale = torch.rand(3, 1, N, N) * 3, torch.full((3,), 0.7)
    with torch.no_grad():
        (a_tf, p_tf), (a_sm, p_sm) = tf(x, scale), smooth(x, scale)
    flat = slice(N // 4 + N // 16, N - N // 4 - N // 16)  # inside the blend: the centre head alone
    torch.testing.assert_close(a_sm[..., flat, flat], a_tf[..., flat, flat])
    torch.testing.assert_close(p_sm[..., flat, flat], p_tf[..., flat, flat])
    outside = border_mask(N).bool().expand_as(a_tf)
    torch.testing.assert_close(a_sm[outside], a_tf[outside])  # beyond the window: the border branch alone

    def largest_row_step(a: torch.Tensor) -> float:
        return float((a[..., 1:, :] - a[..., :-1, :]).abs().mean(dim=(0, 1, 3)).max())

    assert largest_row_step(a_sm) < 0.5 * largest_row_step(a_tf)


@pytest.mark.parametrize("N", [32, 64])
@pytest.mark.parametrize("gridsize", [1, 2])
@pytest.mark.parametrize("architecture", ["fno", "ffno"])
def test_fourier_generators_keep_the_contract(architecture, N, gridsize):
    config = ModelConfig(N=N, gridsize=gridsize, n_filters_scale=1, architecture=architecture)
    torch.manual_seed(0)
    model = build_generator(config).eval()
    assert type(model) is GENERATORS[architecture] and model.config is config
    x, scale = torch.rand(3, gridsize**2, N, N) * 3, torch.tensor([0.5, 1.0, 2.0])
    with torch.no_grad():
        amplitude, phase = model(x, scale)
        scaled, _ = model(x * scale[:, None, None, None], torch.ones(3))  # the graph multiplies by scale
        alone, _ = model(x[1:2], scale[1:2])  # each sample is independent of the rest of the batch
    assert amplitude.shape == phase.shape == (3, gridsize**2, N, N)
    assert amplitude.dtype == phase.dtype == torch.float32
    assert 0 < amplitude.min() and amplitude.max() < 1  # the sigmoid head over the whole window
    assert phase.abs().max() <= math.pi and amplitude.std() > 0 and phase.std() > 0
    torch.testing.assert_close(scaled, amplitude)
    torch.testing.assert_close(alone, amplitude[1:2])
    assert not any(t.is_complex() for t in [*model.parameters(), *model.buffers()])
    assert not [name for name in model.state_dict() if name.endswith(("cos", "sin", "grid"))]  # derived, not saved


def test_the_table_builds_each_architecture_and_fourier_settings_are_checked():
    assert build_generator(ModelConfig(N=32, n_filters_scale=1)).__class__ is PtychoPINNGenerator
    assert isinstance(build_generator(ModelConfig(N=32, n_filters_scale=1, architecture="fno")), FNOGenerator)
    ffno = build_generator(ModelConfig(N=32, n_filters_scale=1, architecture="ffno", amp_activation="relu"))
    assert isinstance(ffno, FFNOGenerator) and len(ffno.blocks) == FFNO_LAYERS
    with torch.no_grad():
        assert ffno(torch.rand(2, 1, 32, 32), torch.ones(2))[0].min() >= 0  # amp_activation applies
    with pytest.raises(ConfigError, match=r"^architecture must be one of \['cnn', 'fno', 'ffno'\], got 'unet'$"):
        ModelConfig(architecture="unet")
    for cnn_only in ({"generator": "taper"}, {"pad_object": False}, {"probe_big": False}):
        name, value = next(iter(cnn_only.items()))
        with pytest.raises(ConfigError, match=rf"^{name} applies to architecture 'cnn' only, got {name}="):
            ModelConfig(architecture="fno", **cnn_only)
        ModelConfig(**cnn_only)  # the CNN's own settings
