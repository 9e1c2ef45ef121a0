"""Engine: exact outputs for any batch size, fixed warmed-up shapes, explicit providers, and a session
checked against the manifest's signature (the reader's check)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
from oracle import oracle_outputs

from ptycho_torch.errors import BundleError, ConfigError
from serving.engine import Engine, select_providers
from serving.errors import InvalidRequest


def _batch(rng: np.random.Generator, size: int, channels: int = 1, N: int = 32) -> tuple[np.ndarray, np.ndarray]:
    return rng.random((size, channels, N, N), np.float32), rng.random(size, np.float32) + 0.5


@pytest.mark.parametrize("size", [1, 3, 16, 37])
def test_run_matches_the_graph_for_any_batch_size(engine: Engine, size: int) -> None:
    diffraction, scale = _batch(np.random.default_rng(size), size)
    amplitude, phase = engine.run(diffraction, scale)
    expected_amplitude, expected_phase = oracle_outputs(diffraction, scale)
    assert amplitude.shape == phase.shape == (size, 1, 32, 32)
    np.testing.assert_array_equal(amplitude, expected_amplitude)
    np.testing.assert_array_equal(phase, expected_phase)


def test_batch_shapes_are_powers_of_two_up_to_the_maximum_and_warmed_up(oracle_bundle) -> None:
    engine = Engine(oracle_bundle, max_batch_size=24, providers=["cpu"])
    assert engine.batch_sizes == (1, 2, 4, 8, 16, 24)
    assert engine.warmup_s is not None and engine.warmup_s >= 0
    seen: list[int] = []
    run = engine.session.run
    engine.session = type("Spy", (), {"run": lambda self, names, feeds: seen.append(len(feeds["scale"]))
                                      or run(names, feeds)})()
    engine.run(*_batch(np.random.default_rng(0), 24 + 24 + 5))
    assert seen == [24, 24, 8]  # the tail of 5 is padded to the warmed-up shape 8


def test_providers_are_explicit_and_checked() -> None:
    assert select_providers(["cpu"]) == ["CPUExecutionProvider"]
    auto = select_providers(None)
    assert auto[-1] == "CPUExecutionProvider"
    assert auto[0] in ort.get_available_providers()
    with pytest.raises(ConfigError, match=r"`providers` must be available in this onnxruntime build, got \['NoSuch"):
        select_providers(["NoSuchExecutionProvider"])


def test_inputs_are_checked_with_a_clear_message(engine: Engine) -> None:
    rng = np.random.default_rng(1)
    diffraction, scale = _batch(rng, 2)
    with pytest.raises(InvalidRequest, match="must be float32"):
        engine.run(diffraction.astype(np.float64), scale)
    with pytest.raises(InvalidRequest, match=r"`diffraction` must have shape \(B, 1, 32, 32\) .* got \[2, 1, 16, 16\]"):
        engine.run(diffraction[..., :16, :16], scale)
    with pytest.raises(InvalidRequest, match=r"`scale` must have shape \(2,\)"):
        engine.run(diffraction, scale[:1])


def test_bad_options_are_refused(oracle_bundle) -> None:
    with pytest.raises(ConfigError, match="`max_batch_size` must be a positive integer, got 0"):
        Engine(oracle_bundle, max_batch_size=0)


def test_a_session_that_is_not_the_manifests_signature_is_a_bundle_error(oracle_bundle) -> None:
    manifest = oracle_bundle.manifest
    renamed = tuple(spec.model_copy(update={"name": f"{spec.name}_x"}) for spec in manifest.outputs)
    bundle = dataclasses.replace(oracle_bundle, manifest=manifest.model_copy(update={"outputs": renamed}))
    with pytest.raises(BundleError, match=r"model\.onnx: graph `outputs` must be named \['amplitude_x', 'phase_x'\] as in "
                                          r"manifest\.json, got \['amplitude', 'phase'\]; re-export the bundle"):
        Engine(bundle, providers=["cpu"], warmup=False)
    wider = tuple(spec.model_copy(update={"shape": ("B", 1, 64, 64)}) if spec.name == "diffraction" else spec
                  for spec in manifest.inputs)
    bundle = dataclasses.replace(oracle_bundle, manifest=manifest.model_copy(update={"inputs": wider}))
    with pytest.raises(BundleError, match=r"graph `inputs\.diffraction` must be float32 \['B', 1, 64, 64\] as in "
                                          r"manifest\.json, got float32 \['B', 1, 32, 32\]"):
        Engine(bundle, providers=["cpu"], warmup=False)


def test_tensorrt_profiles_name_the_manifests_inputs(engine: Engine) -> None:
    options = engine._provider_options("TensorrtExecutionProvider", None)
    assert options["trt_profile_min_shapes"] == "diffraction:1x1x32x32,scale:1"
    assert options["trt_profile_max_shapes"] == f"diffraction:{engine.max_batch_size}x1x32x32,scale:{engine.max_batch_size}"
    assert engine._provider_options("CPUExecutionProvider", None) == {}
