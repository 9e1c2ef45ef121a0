"""resolve(): one plan per reconstruction, and one home for its rules (the whole-scan pipeline and a
live session read the same plan, so a rule changed there changes both)."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from ptycho_torch import plan as plan_module
from ptycho_torch.choices import RefineAlgorithm, RefineStart, ScalePolicy, Units
from ptycho_torch.errors import InvalidInput, InvalidValues
from ptycho_torch.model_facts import ModelFacts
from ptycho_torch.pipeline import reconstruct
from ptycho_torch.plan import ProbeSource, ReconstructOptions, resolve
from ptycho_torch.refinement import AUTO
from serving.batching import DynamicBatcher
from serving.engine import Engine
from serving.sessions import Session

N = 32
MODEL = ModelFacts(name="m", N=N, gridsize=1, stitch_M=12, training_scale=0.25, neighbor_count=4)
GROUPED = dataclasses.replace(MODEL, name="g", gridsize=2, neighbor_count=6)
WITH_PROBE = dataclasses.replace(MODEL, probe=np.ones((1, N, N), np.complex64))


def test_defaults_come_from_the_model() -> None:
    plan = resolve(MODEL)
    assert (plan.stitch_M, plan.neighbor_count, plan.seed, plan.units) == (12, 4, 0, None)
    assert (plan.scale_policy, plan.scale) == (ScalePolicy.SCAN, None)  # measured on the scan later
    assert plan.probe_source is None and plan.refinement is None and plan.run_network
    bundle_default = resolve(dataclasses.replace(MODEL, default_scale_policy=ScalePolicy.BUNDLE))
    assert (bundle_default.scale_policy, bundle_default.scale) == (ScalePolicy.BUNDLE, 0.25)


def test_options_override_the_model_and_an_explicit_scale_wins() -> None:
    options = ReconstructOptions(stitch_M=5, units="counts", seed=3, scale=0.5)
    plan = resolve(GROUPED, options)
    assert (plan.stitch_M, plan.neighbor_count, plan.seed, plan.units) == (5, 6, 3, Units.COUNTS)
    assert (plan.scale_policy, plan.scale) == (ScalePolicy.EXPLICIT, 0.5) and plan.grouped
    assert resolve(GROUPED, ReconstructOptions(scale=0.5, scale_policy="explicit")).scale == 0.5
    with pytest.raises(InvalidInput, match=r"`scale_policy` 'explicit' needs the option `scale`"):
        ReconstructOptions(scale_policy="explicit")
    for policy in ("scan", "bundle"):  # which one was meant? (it used to be the scale, silently)
        with pytest.raises(InvalidInput, match=f"`scale` and `scale_policy` '{policy}' contradict each other"):
            ReconstructOptions(scale=0.5, scale_policy=policy)


@pytest.mark.parametrize(("model", "options", "message"), [
    (MODEL, ReconstructOptions(stitch_M=17), r"`stitch_M` must be in \[1, N/2 = 16\], got 17"),
    (GROUPED, ReconstructOptions(neighbor_count=3), r"`neighbor_count` must be >= gridsize\*\*2 = 4 .* got 3"),
    (MODEL, ReconstructOptions(refine_iterations=2), r"`refine_iterations` needs the probe .* send `probe`"),
    (dataclasses.replace(MODEL, pixel_size_m=1e-8), ReconstructOptions(pixel_size_m=2e-8),
     r"2e-08 m differs from model m's training pixel size 1e-08 m"),
])
def test_rules_that_need_the_model_are_refused_with_the_fix(model: ModelFacts, options: ReconstructOptions,
                                                            message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        resolve(model, options)


def test_a_scale_outside_the_network_range_is_refused_with_no_word_about_patterns() -> None:
    for scale in (1e31, 1e-35):  # the message once claimed the patterns' largest value was 0
        with pytest.raises(InvalidValues, match=r"^`scale` must be in \[1e-30, 1e\+30\], got " + re.escape(repr(scale))
                                                + r": the network's input is patterns \* scale; leave it out"):
            ReconstructOptions(scale=scale)


def test_the_probe_source_and_the_refinement() -> None:
    assert resolve(MODEL, probe_given=True).probe_source == ProbeSource.REQUEST
    assert resolve(WITH_PROBE).probe_source == ProbeSource.MODEL
    options = ReconstructOptions(refine_iterations=7, refine_algorithm="rpie", refine_start="flat",
                                 refine_time_limit_s=2)
    plan = resolve(WITH_PROBE, options)
    assert (plan.refinement.iterations, plan.refinement.algorithm, plan.refinement.time_limit_s) == \
        (7, RefineAlgorithm.RPIE, 2.0)
    assert plan.refine_start == RefineStart.FLAT and not plan.run_network
    # no algorithm asked for: the solver's rule for the case (er for the object alone, rpie with the probe)
    assert ReconstructOptions(refine_iterations=3).refinement().algorithm == RefineAlgorithm.ER
    assert ReconstructOptions(refine_iterations=3, refine_probe=True).refinement().algorithm == RefineAlgorithm.RPIE


def test_a_stream_defaults_to_the_training_scale_refuses_what_it_cannot_do_and_refines_with_the_models_probe(
) -> None:
    stream = resolve(MODEL, stream=True)
    assert (stream.scale_policy, stream.scale) == (ScalePolicy.BUNDLE, 0.25)
    assert resolve(MODEL, ReconstructOptions(scale=0.5), stream=True).scale == 0.5
    for model, options, message in [
        (MODEL, ReconstructOptions(scale_policy="scan"), "`scale_policy` must be 'bundle' for a session"),
        (GROUPED, ReconstructOptions(), "sessions stream single-pattern models"),
        (MODEL, ReconstructOptions(refine_iterations="auto"),
         r"`refine_iterations` in a session refines with the model's probe, and model 'm' has none: .* POST "
         r"/v1/reconstruct and its `probe`"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            resolve(model, options, stream=True)
    refined = resolve(WITH_PROBE, ReconstructOptions(refine_iterations="auto", refine_probe=True), stream=True)
    assert refined.probe_source == ProbeSource.MODEL  # a session refines with the model's probe
    assert refined.refinement is not None and (refined.refinement.iterations, refined.refinement.refine_probe) == (
        AUTO, True)


def test_options_json_holds_what_differs_from_the_defaults() -> None:
    options = ReconstructOptions(scale_policy="bundle", refine_iterations=3, refine_algorithm="rpie")
    assert options.to_json() == {"scale_policy": "bundle", "refine_iterations": 3, "refine_algorithm": "rpie"}
    assert ReconstructOptions.from_mapping(options.to_json()) == options


def test_auto_iterations_and_probe_and_position_refinement_round_trip_into_the_solver_settings() -> None:
    options = ReconstructOptions(refine_iterations="auto", refine_probe=True, refine_positions=True,
                                 refine_time_limit_s=12)
    sent = json.loads(json.dumps(options.to_json()))  # what a client sends
    assert sent == {"refine_iterations": "auto", "refine_probe": True, "refine_positions": True,
                    "refine_time_limit_s": 12}
    assert ReconstructOptions.from_mapping(sent) == options
    settings = resolve(WITH_PROBE, options).refinement
    assert (settings.iterations, settings.refine_probe, settings.refine_positions, settings.time_limit_s) == \
        (AUTO, True, True, 12.0)
    assert resolve(WITH_PROBE, ReconstructOptions(refine_iterations=4)).refinement.refine_probe is False
    plain = options.network_only()  # what the Ptychodus reconstructors send the network
    assert plain == ReconstructOptions(refine_time_limit_s=300.0) and plain.refinement() is None


@pytest.mark.parametrize(("options", "message"), [
    ({"refine_iterations": "autoo"}, r"`refine_iterations` must be a whole number of iterations in \[0, 1000\] or "
                                     r"'auto' \(refine until the data fit stops improving, within "
                                     r"`refine_time_limit_s`\), got 'autoo'$"),
    ({"refine_iterations": -1}, r"`refine_iterations` must be a whole number .* got -1$"),
    ({"refine_iterations": 2.5}, r"`refine_iterations` must be a whole number .* got 2.5$"),
    ({"refine_iterations": True}, r"`refine_iterations` must be a whole number .* got True$"),
    ({"refine_iterations": "20"}, r"`refine_iterations` must be a whole number .* got '20'$"),
    ({"refine_iterations": 1001}, r"`refine_iterations` must be at most 1000, got 1001; ask for fewer, or for 'auto'"),
    ({"refine_iterations": 5, "refine_probe": "yes"}, r"`refine_probe` must be true or false, got 'yes'$"),
    ({"refine_iterations": 5, "refine_positions": 1}, r"`refine_positions` must be true or false, got 1$"),
    ({"refine_probe": True}, r"`refine_probe` needs `refine_iterations` >= 1 or 'auto' .* ask for 'auto', or leave "
                             r"`refine_probe` out$"),
    ({"refine_positions": True, "refine_iterations": 0}, r"`refine_positions` needs `refine_iterations` >= 1 or "
                                                         r"'auto'"),
    ({"refine_algorithm": "mpie"}, r"^`refine_algorithm` 'mpie' needs `refine_iterations` >= 1 or 'auto' \(it is the "
                                   r"refinement's update rule\); ask for 'auto' or a number of iterations, or leave "
                                   r"`refine_algorithm` out$"),
    ({"refine_start": None}, r"^`refine_start` must be one of \['network', 'flat'\], got None$"),
])
def test_bad_refine_values_say_what_is_wrong_and_how_to_fix_it(options: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as refused:
        ReconstructOptions.from_mapping(options)
    assert "noise floor" not in str(refused.value)  # the old, untrue claim


def test_a_rule_changed_in_the_plan_changes_the_whole_scan_path_and_the_session_path_alike(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths resolve the plan: tighten its stitch-crop rule and both refuse the same crop, loosen
    nothing else, and both still accept a crop the new rule allows."""
    def at_most_six(M: int, N: int | None = None) -> None:
        if M > 6:
            raise InvalidInput(f"`stitch_M` must be at most 6 under the changed rule, got {M}")

    monkeypatch.setattr(plan_module, "check_stitch_M", at_most_six)
    positions = np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2) * 3.0 + 20
    patterns = np.full((len(positions), N, N), 0.5, np.float32)
    batcher = DynamicBatcher(engine, max_queue_delay_us=0)
    try:
        for crop in (7, 12):  # both allowed before the change (N/2 = 16)
            with pytest.raises(InvalidInput, match=f"at most 6 under the changed rule, got {crop}"):
                reconstruct(engine, patterns, positions, options=ReconstructOptions(stitch_M=crop))
            with pytest.raises(InvalidInput, match=f"at most 6 under the changed rule, got {crop}"):
                Session("s", batcher, options=ReconstructOptions(stitch_M=crop))
        for run in (lambda: reconstruct(engine, patterns, positions), lambda: Session("s", batcher)):
            with pytest.raises(InvalidInput, match="got 8"):  # the model's own crop (8) breaks the new rule too
                run()
        assert reconstruct(engine, patterns, positions, options=ReconstructOptions(stitch_M=6)).n_patterns == 16
        assert Session("s", batcher, options=ReconstructOptions(stitch_M=6)).stitcher.M == 6
    finally:
        batcher.close()


def test_whole_numbers_of_iterations_are_whole_whatever_their_type() -> None:
    """JSON's 3.0 and numpy's integers are whole numbers (stored as an int); 2.5 and bools are not."""
    for value in (3.0, np.int64(3), np.float32(3.0)):
        options = ReconstructOptions(refine_iterations=value)
        assert options.refine_iterations == 3 and type(options.refine_iterations) is int
        assert options.to_json() == {"refine_iterations": 3} and options.refinement().iterations == 3
    for value in (2.5, float("inf"), float("nan"), np.bool_(True), False):
        with pytest.raises(InvalidInput, match=r"^`refine_iterations` must be a whole number of iterations in "):
            ReconstructOptions(refine_iterations=value)


def test_a_null_for_a_choice_that_has_no_default_rule_is_a_400_naming_the_option() -> None:
    """Every choice option whose annotation admits no None refuses a null (400, its own name); the optional
    ones take it as "the default rule"."""
    from ptycho_torch.choices import choice_fields

    fields = choice_fields(ReconstructOptions)
    required = [name for name in fields if name not in plan_module._optional_fields(ReconstructOptions)]
    assert required == ["refine_start"]  # a new one is covered by the same rule
    for name in required:
        with pytest.raises(InvalidInput, match=rf"^`{name}` must be one of \[.*\], got None$"):
            ReconstructOptions.from_mapping({name: None, "refine_iterations": 1})
    for name in set(fields) - set(required):
        assert getattr(ReconstructOptions.from_mapping({name: None}), name) is None
