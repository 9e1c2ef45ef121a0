"""Solver benchmark: the refinement (``ptycho_torch.refinement``, in-process) against pty-chi on scans
that need probe refinement, position correction and many iterations (:mod:`bench.cases`).

Cases: the weak-contrast scan from another instrument (a GRF object of weak contrast, the Siemens
star's probe, a step of N/8), at the true positions and with +-2 px random position errors (positions
refined; +-2 px x N/64 at a smaller N), the probe refined in both; the real Siemens star's held-out half (flat start, the file's
probe, refined), scored against a full-scan reconstruction with probe refinement run to convergence.

**Ours**: ``refine`` on a :class:`~ptycho_torch.refinement.ScanModel` from a flat object (amplitude 1,
phase 0) with ``RefineSettings(iterations="auto", algorithm=..., refine_probe=True,
refine_positions=<case>)``, every other setting at its default, one run per algorithm of
:data:`~ptycho_torch.refinement.ALGORITHMS` (the one ``default_algorithm`` picks for the case is
marked ``default``). Its time is the model's construction plus the time spent
inside the generator (copying the states that are scored is not counted); the object is kept at
iterations 0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, ... (about 1.25x apart) and at the last
state, and scored after the run.

**pty-chi**: LSQML from its PyPI release in its own venv (:mod:`bench.ptychi`), object initialised to
ones, the given probe refined (rescaled in the first epoch), position correction where the case
refines positions; the batch size tuned on the weak-contrast case (the candidate that reaches 0.95 x its
own best SSIM soonest) and the position step on the position-error case (the candidate that ends
with the smallest position error); the object every 2 epochs; until its displayed loss improves by
less than 1 % over 10 epochs or the epoch cap. Its time is task construction + epochs.

Scoring (:func:`bench.scoring.score`, ``ptycho_torch.metrics.evaluate_reconstruction`` as in
:mod:`bench.quality`): the case's box (the bounding box of the true patch centres), sub-pixel
registration of at most 3 px, amplitude scaled to the reference mean, phase offset and ramp removed;
plus the phase correlation (the phase SSIM of a +-0.15 rad object hardly moves). The target is 0.95 x
the best SSIM any method reaches on the case (amplitude and phase; the star: phase only); time to
quality is a method's first scored point from which it stays at or above the targets to its last
(its user gets the last state). Positions: rms over patterns of the distance between the solver's
positions and the true ones after removing their mean offset (a common shift is a shift of the object).

    python -m bench solver [--quick|--smoke]

Both solvers get :data:`THREADS` threads (2; ``BENCH_SOLVER_THREADS`` overrides it, e.g. 1 for a
trial run pinned to one core of a shared machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import ptychi
from bench.cases import SolverCase, siemens_cases, weak_contrast_cases
from bench.report import ROOT, cell, finite_or_none
from bench.scoring import TARGET, reached_at, score, speed_up, time_to_quality

THREADS = int(os.environ.get("BENCH_SOLVER_THREADS", "2"))
PTYCHI = "pty-chi LSQML"
PARTIAL = ROOT / "out" / "bench-solver-partial.json"
"""The cases finished so far, rewritten after each one (a long run that is stopped keeps them)."""
PTYCHI_BASE = {"chunk": 10, "tolerance": 0.01, "snapshot_every": 2}
"""pty-chi's stopping rule and snapshots (as in :mod:`bench.quality`)."""
REFERENCE_ITERATIONS = {"smoke": 60, "quick": 200, "full": 400}
"""Iterations of our full-scan star reference (ER, probe refined): far past where ``auto`` stops."""
PTYCHI_REFERENCE = {"max_epochs": 400, "chunk": 20, "tolerance": 0.002, "snapshot_every": 20}
"""pty-chi's full-scan star reference: until its loss improves by less than 0.2 % over 20 epochs (checked every 20)."""

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"N": 32, "side": 8, "siemens": False, "max_iterations": 40, "time_limit_s": 20.0, "ptychi": None},
    "quick": {"N": 32, "side": 12, "siemens": True, "max_iterations": 400, "time_limit_s": 60.0,
              "ptychi": {"max_epochs": 150, "batch_sizes": (48,), "position_step_sizes": (1.0,)}},
    "full": {"N": 64, "side": 20, "siemens": True, "max_iterations": 1000, "time_limit_s": 300.0,
             "ptychi": {"max_epochs": 300, "batch_sizes": (48, 96, 200), "position_step_sizes": (0.3, 1.0, 3.0)}},
}


def score_schedule(cap: int) -> list[int]:
    """Iterations at which our object is kept for scoring: 0-6, then about 1.25x apart, up to ``cap``."""
    points, k = list(range(7)), 6
    while k < cap:
        k = max(k + 1, int(round(k * 1.25)))
        points.append(k)
    return [k for k in points if k <= cap]


def position_rms(positions: np.ndarray | None, truth: np.ndarray | None) -> float | None:
    """Rms distance (px) of ``positions`` from ``truth`` after removing the mean offset; None without both."""
    if positions is None or truth is None:
        return None
    error = np.asarray(positions, np.float64) - truth
    error -= error.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(error ** 2, axis=1))))


def _points(images: list[tuple[dict[str, Any], np.ndarray]], reference: np.ndarray) -> list[dict[str, Any]]:
    """Score each ``(point, image)``; the point gains the SSIM, PSNR, FRC50 and phase correlation."""
    out = []
    for point, image in images:
        scores = score(image, reference, frc_curves=False)
        out.append({**point, **{k: v for k, v in scores.items() if k.startswith(("ssim", "psnr", "frc50", "phase_"))}})
    return out


def ours_label(algorithm: str, case: SolverCase) -> str:
    """``ours ALG (auto)``, with ``, default`` for the rule the solver picks itself on this case."""
    from ptycho_torch.refinement import default_algorithm

    chosen = str(default_algorithm(case.refine_probe, case.refine_positions)) == algorithm
    return f"ours {algorithm} (auto{', default' if chosen else ''})"


def run_ours(case: SolverCase, algorithm: str, size: dict[str, Any], *, iterations: int | str = "auto",
             threads: int = THREADS) -> tuple[list[tuple[dict[str, Any], np.ndarray]], dict[str, Any], np.ndarray]:
    """Our refinement of ``case`` from a flat object with ``algorithm``; the kept ``(point, object in the
    box)`` pairs, the run's summary and the final object on the case's grid."""
    from ptycho_torch.refinement import RefineSettings, ScanModel, refine
    from ptycho_torch.refinement.solver import POSITION_MARGIN_PX

    settings = RefineSettings(iterations=iterations, algorithm=algorithm, refine_probe=case.refine_probe,  # type: ignore[arg-type]
                              refine_positions=case.refine_positions, time_limit_s=size["time_limit_s"],
                              max_iterations=size["max_iterations"], workers=threads)
    started = time.perf_counter()
    model = ScanModel(case.amplitudes, case.positions, case.probe, shape=case.object_shape, origin=(0.0, 0.0),
                      workers=threads, margin=POSITION_MARGIN_PX if case.refine_positions else 0)
    start = model.grow(np.ones(case.object_shape, np.complex64), 1.0)
    states = refine(model, start, settings)
    inside = time.perf_counter() - started
    keep = set(score_schedule(settings.iteration_cap))
    kept: list[tuple[dict[str, Any], np.ndarray]] = []
    while True:
        tick = time.perf_counter()
        state = next(states, None)
        inside += time.perf_counter() - tick
        if state is None:
            break
        if state.iteration in keep or state.stop_reason is not None:
            point = {"seconds": inside, "iterations": state.iteration,
                     "positions_rms_px": position_rms(state.positions, case.true_positions)}
            kept.append((point, np.array(model.crop(state.object)[case.box])))
        last = state
    history = last.history
    summary = {"algorithm": str(algorithm), "iterations": last.iteration, "seconds": inside,
               "stopped": last.stopped, "stop_reason": str(last.stop_reason),
               "amplitude_error": [h.get("amplitude_error") for h in history],
               "nll_median": [history[0].get("nll_median"), history[-1].get("nll_median")],
               "positions_rms_px": position_rms(last.positions, case.true_positions),
               "given_positions_rms_px": position_rms(case.positions, case.true_positions),
               "settings": {"iterations": settings.iterations, "algorithm": str(settings.algorithm),
                            "refine_probe": settings.refine_probe, "refine_positions": settings.refine_positions,
                            "time_limit_s": settings.time_limit_s, "max_iterations": settings.max_iterations,
                            "workers": threads}}
    return kept, summary, np.array(model.crop(last.object))


def _ptychi_settings(case: SolverCase, size: dict[str, Any], batch_size: int, position_step: float | None,
                     **override: Any) -> dict[str, Any]:
    settings = {**PTYCHI_BASE, "max_epochs": size["ptychi"]["max_epochs"], "batch_size": min(batch_size, len(case.positions)),
                "threads": THREADS, "optimize_probe": case.refine_probe, "optimize_positions": case.refine_positions,
                "seed": 0, **override}
    if case.refine_positions and position_step is not None:
        settings["positions"] = {"step_size": position_step}
    return settings


def run_ptychi(case: SolverCase, settings: dict[str, Any]) -> ptychi.PtychiResult:
    """pty-chi LSQML on ``case`` with ``settings`` (see bench/ptychi_runner.py)."""
    x, y = case.positions[:, 0], case.positions[:, 1]
    return ptychi.reconstruct(case.counts, x, y, case.probe, case.object_shape, settings)


def ptychi_curve(case: SolverCase, result: ptychi.PtychiResult) -> list[tuple[dict[str, Any], np.ndarray]]:
    """pty-chi's snapshots as ``(point, object in the box)`` pairs."""
    return [({"seconds": float(s), "epochs": int(e), "positions_rms_px": position_rms(p, case.true_positions)},
             o[case.box]) for o, e, s, p in zip(result.snapshots, result.snapshot_epochs, result.snapshot_s,
                                                result.snapshot_positions, strict=True)]


def ptychi_summary(case: SolverCase, result: ptychi.PtychiResult, settings: dict[str, Any]) -> dict[str, Any]:
    """What a pty-chi run did, with the exact options it ran with."""
    options = result.options
    position_options = options.get("probe_position_options", {})
    return {"algorithm": "LSQML", "versions": result.versions, "epochs": result.epochs,
            "converged": result.converged, "seconds": result.reconstruction_s, "process_s": result.process_s,
            "positions_rms_px": position_rms(result.positions, case.true_positions),
            "settings": dict(settings),
            "options": {"batch_size": options.get("reconstructor_options", {}).get("batch_size"),
                        "noise_model": options.get("reconstructor_options", {}).get("noise_model"),
                        "object": {k: options.get("object_options", {}).get(k)
                                   for k in ("optimizer", "step_size", "optimal_step_size_scaler")},
                        "probe": {k: options.get("probe_options", {}).get(k)
                                  for k in ("optimizable", "optimizer", "step_size", "optimal_step_size_scaler")}
                        | {"orthogonalize_incoherent_modes": options.get("probe_options", {})
                           .get("orthogonalize_incoherent_modes", {}).get("enabled")},
                        "positions": {k: position_options.get(k) for k in ("optimizable", "optimizer", "step_size")}
                        | {"correction_options": position_options.get("correction_options"),
                           "optimization_plan": position_options.get("optimization_plan")}}}


def tune_ptychi(cases: list[SolverCase], size: dict[str, Any]) -> dict[str, Any]:
    """The batch size (on the first case) with which pty-chi reaches 0.95 x its own best SSIM soonest,
    then the position step (on the first case that refines positions) that ends nearest the true positions."""
    spec = size["ptychi"]
    tuning: dict[str, Any] = {"batch_trials": [], "position_trials": []}
    first = cases[0]
    assert first.truth is not None, "pty-chi is tuned on a case with ground truth"
    reference = first.truth[first.box]
    for batch_size in spec["batch_sizes"]:
        settings = _ptychi_settings(first, size, batch_size, None)
        result = run_ptychi(first, settings)
        points = _points(ptychi_curve(first, result), reference)
        amp, phase = [p["ssim_amplitude"] for p in points], [p["ssim_phase"] for p in points]
        hits = [p for p in points if p["ssim_amplitude"] >= TARGET * max(amp) and p["ssim_phase"] >= TARGET * max(phase)]
        tuning["batch_trials"].append({"case": first.name, "batch_size": batch_size, "epochs": result.epochs,
                                       "converged": result.converged, "seconds": result.reconstruction_s,
                                       "best_ssim": [max(amp), max(phase)],
                                       "seconds_to_target": hits[0]["seconds"] if hits else None,
                                       "result": (result, settings, points)})
    usable = [t for t in tuning["batch_trials"] if t["seconds_to_target"] is not None] or tuning["batch_trials"]
    tuning["batch_size"] = int(min(usable, key=lambda t: t["seconds_to_target"] or np.inf)["batch_size"])
    moving = next((c for c in cases if c.refine_positions and c.true_positions is not None), None)
    tuning["position_step"] = spec["position_step_sizes"][0] if spec["position_step_sizes"] else None
    if moving is not None and len(spec["position_step_sizes"]) > 1:
        for step in spec["position_step_sizes"]:
            settings = _ptychi_settings(moving, size, tuning["batch_size"], step)
            result = run_ptychi(moving, settings)
            tuning["position_trials"].append({"case": moving.name, "step_size": step, "epochs": result.epochs,
                                              "seconds": result.reconstruction_s,
                                              "positions_rms_px": position_rms(result.positions, moving.true_positions),
                                              "result": (result, settings, None)})
        tuning["position_step"] = float(min(tuning["position_trials"], key=lambda t: t["positions_rms_px"])["step_size"])
    return tuning


def _tuned_run(tuning: dict[str, Any], case: SolverCase) -> tuple[ptychi.PtychiResult, dict[str, Any]] | None:
    """The tuning's own run of ``case`` with the chosen settings, if it made one (it is that case's run)."""
    for trial in tuning["batch_trials"]:
        if trial["case"] == case.name and trial["batch_size"] == tuning["batch_size"]:
            return trial["result"][:2]
    for trial in tuning["position_trials"]:
        if trial["case"] == case.name and trial["step_size"] == tuning["position_step"]:
            return trial["result"][:2]
    return None


def star_references(case: SolverCase, mode: str, size: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Full-scan reconstructions of the star with the probe refined, run to convergence: ours (ER,
    :data:`REFERENCE_ITERATIONS`) and pty-chi's (:data:`PTYCHI_REFERENCE`) when it is installed."""
    full = case.full_scan
    assert full is not None
    references: dict[str, dict[str, Any]] = {}
    if ptychi.available() and size["ptychi"] is not None:
        settings = _ptychi_settings(full, size, 96, None, **PTYCHI_REFERENCE)
        result = run_ptychi(full, settings)
        references["pty-chi full scan"] = {"object": result.object, "epochs": result.epochs,
                                           "converged": result.converged, "seconds": result.reconstruction_s,
                                           "settings": {k: v for k, v in settings.items()}}
    _, summary, obj = run_ours(full, "er", {**size, "time_limit_s": None}, iterations=REFERENCE_ITERATIONS[mode])
    errors = [e for e in summary["amplitude_error"] if e is not None]
    references["ours full scan"] = {"object": obj, "iterations": summary["iterations"], "seconds": summary["seconds"],
                                    "algorithm": summary["algorithm"],
                                    "amplitude_error_last_10": (errors[-11] - errors[-1]) / errors[-11]
                                    if len(errors) > 11 else None}
    return references


def run_case(case: SolverCase, mode: str, size: dict[str, Any], tuning: dict[str, Any] | None,
             algorithms: list[str]) -> dict[str, Any]:
    """Every method on one case: curves, run summaries, flat-object score, time to quality."""
    result: dict[str, Any] = {"label": case.label, "N": int(case.amplitudes.shape[-1]), "patterns": len(case.positions),
                              "box": [[case.box[0].start, case.box[0].stop], [case.box[1].start, case.box[1].stop]],
                              "refine_probe": case.refine_probe, "refine_positions": case.refine_positions,
                              "notes": list(case.notes)}
    references: dict[str, np.ndarray] = {}
    if case.truth is not None:
        references["ground truth"] = case.truth
    else:
        refs = star_references(case, mode, size)
        references = {name: ref.pop("object") for name, ref in refs.items()}
        result["reference_runs"] = refs
    primary = "ground truth" if case.truth is not None else next(iter(references))
    result["reference"] = primary
    raw: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {}
    runs: dict[str, Any] = {}
    for algorithm in algorithms:
        method = ours_label(algorithm, case)
        raw[method], runs[method], _ = run_ours(case, algorithm, size)
    if size["ptychi"] is None:
        result["ptychi"] = "skipped in smoke mode"
    elif not ptychi.available():
        result["ptychi"] = ptychi.NOT_INSTALLED
    else:
        try:
            assert tuning is not None
            done = _tuned_run(tuning, case)
            if done is None:
                settings = _ptychi_settings(case, size, tuning["batch_size"], tuning["position_step"])
                done = run_ptychi(case, settings), settings
            raw[PTYCHI], runs[PTYCHI] = ptychi_curve(case, done[0]), ptychi_summary(case, done[0], done[1])
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            result["ptychi"] = f"failed: {error}"
    reference = references[primary][case.box]
    curves = {method: _points(images, reference) for method, images in raw.items()}
    flat = score(np.ones_like(reference), reference, frc_curves=False)
    result.update(runs=runs, curves=curves, time_to_quality=time_to_quality(curves, case.quality_parts, kept=True),
                  flat={k: flat[k] for k in ("ssim_amplitude", "ssim_phase", "phase_correlation")})
    others = {name: ref[case.box] for name, ref in references.items() if name != primary}
    if others:  # the last point of every method against the other reference, and the references against each other
        result["against_other_references"] = {
            name: {"references_ssim": {k: v for k, v in score(other, reference, frc_curves=False).items()
                                       if k in ("ssim_amplitude", "ssim_phase", "phase_correlation")},
                   "final": {method: {k: v for k, v in _points([images[-1]], other)[0].items()
                                      if k.startswith(("ssim", "phase_"))} for method, images in raw.items()}}
            for name, other in others.items()}
    return result


def _compare_to_true_positions(results: dict[str, Any]) -> None:
    """On each position-error case, every method's final SSIM minus its final SSIM at the true positions."""
    for name, case in results.items():
        base = results.get(name.removesuffix("_pos_errors")) if name.endswith("_pos_errors") else None
        if base is None or "curves" not in case or "curves" not in base:
            continue
        case["vs_true_positions"] = {
            method: {part: points[-1][f"ssim_{part}"] - base["curves"][method][-1][f"ssim_{part}"]
                     for part in ("amplitude", "phase")}
            for method, points in case["curves"].items() if method in base["curves"]}


def run(mode: str, *, figures_dir: Path | None = None, stamp: str = "") -> dict[str, Any]:
    """Every case of ``mode``, ours (every algorithm) and pty-chi's; ``figures_dir`` receives the
    SSIM-against-time figure (``solver_time_to_quality.png``)."""
    from ptycho_torch.refinement import ALGORITHMS

    size = SIZES[mode]
    algorithms = [str(a) for a in ALGORITHMS]
    cases = weak_contrast_cases(size["N"], size["side"])
    if size["siemens"]:
        cases += siemens_cases(size["N"])
    tuning = tune_ptychi(cases, size) if size["ptychi"] is not None and ptychi.available() else None
    results: dict[str, Any] = {}
    for case in cases:
        try:
            results[case.name] = run_case(case, mode, size, tuning, algorithms)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:  # the run goes on
            results[case.name] = {"label": case.label, "reference": f"failed: {error}"}
        _compare_to_true_positions(results)
        PARTIAL.parent.mkdir(parents=True, exist_ok=True)
        PARTIAL.write_text(json.dumps(finite_or_none({"cases": results}), default=str))
    setup = {k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()}
    public_tuning = None if tuning is None else {
        "batch_size": tuning["batch_size"], "position_step": tuning["position_step"],
        "batch_trials": [{k: v for k, v in t.items() if k != "result"} for t in tuning["batch_trials"]],
        "position_trials": [{k: v for k, v in t.items() if k != "result"} for t in tuning["position_trials"]]}
    out = {"setup": setup, "algorithms": algorithms, "threads": THREADS, "ptychi_tuning": public_tuning,
           "cases": results}
    if figures_dir is not None:
        from bench.figures import time_to_quality_figure

        out["figure"] = time_to_quality_figure(figures_dir / "solver_time_to_quality.png", results, stamp,
                                               columns=("ssim_amplitude", "ssim_phase", "phase_correlation"))
    return out


def table(result: dict[str, Any]) -> str:
    """Markdown: per case and method, time to 0.95 x best SSIM, the final scores, positions, flat object."""
    lines = ["| case | method | time to 0.95 x best SSIM (s) | at | final SSIM amp / phase, phase corr. | "
             "ran (s, stop) | positions rms (px) | speed-up vs pty-chi | flat-object SSIM amp / phase, phase corr. |",
             "|---|---|---:|---|---|---|---:|---:|---|"]
    for name, case in result["cases"].items():
        if "curves" not in case:
            lines.append(f"| {name} | — | {case.get('reference')} | | | | | | |")
            continue
        ttq, flat = case["time_to_quality"], case["flat"]
        ptychi_hit = ttq["reached"].get(PTYCHI)
        for method, points in case["curves"].items():
            hit, last, run_info = ttq["reached"][method], points[-1], case["runs"][method]
            speed = "—" if method == PTYCHI else speed_up(hit, ptychi_hit)
            stop = (run_info.get("stop_reason") if method != PTYCHI
                    else "converged" if run_info.get("converged") else "epoch cap")
            ran = f"{run_info['seconds']:.1f}, {run_info.get('iterations', run_info.get('epochs'))} " \
                  f"{'it.' if method != PTYCHI else 'epochs'}, {stop}"
            lines.append(
                f"| {name} | {method} | {'not reached' if hit is None else cell(hit['seconds'], '.2f')} | {reached_at(hit)} | "
                f"{last['ssim_amplitude']:.3f} / {last['ssim_phase']:.3f}, {last['phase_correlation']:.3f} | {ran} | "
                f"{cell(run_info.get('positions_rms_px'), '.2f')} | {speed} | "
                f"{flat['ssim_amplitude']:.3f} / {flat['ssim_phase']:.3f}, {flat['phase_correlation']:.3f} |")
    notes = ["Targets (0.95 x best SSIM amp / phase; the time to quality needs the parts named): " + "; ".join(
        f"`{name}` {case['time_to_quality']['target']['amplitude']:.3f} / "
        f"{case['time_to_quality']['target']['phase']:.3f} ({' and '.join(case['time_to_quality']['parts'])}) "
        f"against {case['reference']}" for name, case in result["cases"].items() if "curves" in case) + "."]
    for name, case in result["cases"].items():
        given = next((r.get("given_positions_rms_px") for r in case.get("runs", {}).values()
                      if r.get("given_positions_rms_px") is not None), None)
        if case.get("refine_positions") and given is not None:
            notes.append(f"`{name}`: the given positions are {given:.2f} px rms from the true ones.")
        if case.get("vs_true_positions"):
            notes.append(f"`{name}`, final SSIM minus the same method's at the true positions (amp / phase): " + "; ".join(
                f"{method} {d['amplitude']:+.3f} / {d['phase']:+.3f}" for method, d in case["vs_true_positions"].items()) + ".")
        for other, info in case.get("against_other_references", {}).items():
            refs = info["references_ssim"]
            notes.append(f"`{name}` against {other} instead (the two references: SSIM {refs['ssim_amplitude']:.3f} / "
                         f"{refs['ssim_phase']:.3f}, phase corr. {refs['phase_correlation']:.3f}), final SSIM: " + "; ".join(
                             f"{method} {s['ssim_amplitude']:.3f} / {s['ssim_phase']:.3f}"
                             for method, s in info["final"].items()) + ".")
    tuning = result.get("ptychi_tuning")
    if tuning:
        notes.append("pty-chi batch size: " + ", ".join(
            f"{t['batch_size']}: {cell(t['seconds_to_target'], '.2f')} s to its own target ({t['epochs']} epochs)"
            for t in tuning["batch_trials"]) + f"; used {tuning['batch_size']}. Position step: " + (", ".join(
                f"{t['step_size']:g}: {t['positions_rms_px']:.2f} px rms after {t['epochs']} epochs"
                for t in tuning["position_trials"]) + "; " if tuning["position_trials"] else "") +
            f"used {tuning['position_step']}.")
    if str(result.get("figure", "")).startswith("docs/"):
        notes.append(f"![solver_time_to_quality]({Path(result['figure']).relative_to('docs').as_posix()})")
    return "\n\n".join(["\n".join(lines), *notes])
