"""Time to quality: SSIM against wall time for the network, network + refinement, refinement from a
flat object, and pty-chi LSQML, on the same held-out patterns.

Cases: the gold-ball object with its real 3-mode probe (``data/gold_balls_from_pickle.npz``)
simulated at 1e4 and 1e6 photons per pattern, each on a dense raster (4 px step) and a sparse one
(step N/2), scored against the ground truth; the real Siemens-star scan (tike), scored against
pty-chi's reconstruction of the whole scan; and the gold-ball 1e6 dense scan sent to a network
trained on a different instrument (the Siemens star), the case of a beamline with a poor model.
Every one of these scans is split spatially: the top half trains the network, the bottom half is
reconstructed. The **weak-contrast** case (:func:`bench.cases.weak_contrast_scan`, the solver
benchmark's scan: a GRF object of amplitude 0.9-1 and phase +-0.15 rad, the Siemens star's probe, a
20x20 raster at N/8 with jitter, 1e6 photons) is sent whole (400 patterns) to a network trained
offline on simulated objects of that instrument only (:data:`WEAK_BUNDLE`), with the true probe in
the request and ``refine_probe`` on every refining request (as :mod:`bench.solver` refines it); its
question is whether the network's start reaches the target sooner than a flat one (issue 22). Without
that bundle the case is reported as not shipped; the smoke size serves it (at N=32) with the smoke's
own gold network as a stand-in, to keep the path running.
``epochs`` > 0 trains a gold-ball network per dose on the dense top half (the smoke test does, at
N=32); ``epochs`` = 0 (quick and full) serves a model trained offline: the gold-ball bundle
:data:`GOLD_BUNDLE` (``python -m bench.curves export``, trained to its plateau on a simulated
gold-ball corpus that never sees the held-out region) for the gold-ball cases, the shipped default
model for the Siemens star, and the shipped model again for the gold balls as the model of another
instrument.

This project's numbers are end to end over HTTP: a real ``ptychopinn serve`` (uvicorn on
127.0.0.1) and ``POST /v1/reconstruct`` with ``refine_iterations = k`` and ``refine_start`` =
``network`` or ``flat``, one request per ``k``, timed by the client. pty-chi runs its LSQML in its
own venv (bench/ptychi.py) with the batch size tuned for speed on the first case, snapshots of the
object every few epochs, until its stated convergence; its time is task construction + epochs
(interpreter start and imports not counted). Everything is scored on the region the network's
stitched result covers (``ptycho_torch.metrics.evaluate_reconstruction``: sub-pixel registration
when it finds a shift of at most 3 px, amplitude scaled to the reference mean, phase offset and
ramp removed). The target of a case is 0.95 x the best SSIM any method reaches (amplitude and
phase separately); each method's time to quality is its first point at or above both targets.
Run with ``python -m bench quality [--quick|--smoke]``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import ptychi
from bench.cases import siemens_scan, weak_contrast_scan
from bench.report import ROOT, cell, finite_or_none
from bench.scoring import TARGET, reached_at, score, speed_up, time_to_quality
from bench.server import running_server
from export.bundle_writer import export_checkpoint
from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.data import RawData, spatial_split
from ptycho_torch.simulation import load_probe, simulate_scan
from serving.client import Client, ServerUnreachable
from serving.errors import ServingError
from training.trainer import train

DATA = ROOT / "data"
GOLD = DATA / "gold_balls_from_pickle.npz"
DEFAULT_BUNDLE = ROOT / "serving" / "default_bundle"
GOLD_BUNDLE = ROOT / "bench" / "models" / "gold_balls"
"""The gold-ball network of the benchmark (bench/models/README.md says how it was trained)."""
WEAK_BUNDLE = ROOT / "bench" / "models" / "weak_contrast"
"""The weak-contrast instrument's network (``python -m bench.curves run fno-weakcorpus``, then
``python -m bench.curves export fno-weakcorpus bench/models/weak_contrast``; bench/models/README.md)."""
WEAK_REFINE = {"refine_probe": True}
"""What every refining request of the weak-contrast case adds: the true probe is sent and refined, as
``bench solver`` refines it on this case (the algorithm is the server's default for it, ``rpie``)."""
GOLD_CENTRE = (155, 160)
"""Row, column of the centre of the well-reconstructed part of the gold-ball object."""

WEAK_ITERATIONS = (1, 2, 3, 4, 6, 8, 10, 15, 20, 30)
"""The weak-contrast case's k: dense where a refinement from flat reaches its target (6 iterations
in ``bench solver``), so that a 2x difference in time to quality shows."""
SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"N": 32, "epochs": 1, "dense_crop": 72, "sparse_crop": 0, "doses": (1e6,), "siemens": False,
              "unseen": False, "iterations": (1, 3), "weak": {"side": 8, "iterations": (1, 3)}, "ptychi": None},
    "quick": {"N": 64, "epochs": 0, "dense_crop": 144, "sparse_crop": 224, "doses": (1e6,), "siemens": False,
              "unseen": True, "iterations": (1, 2, 5, 10, 20), "weak": {"side": 20, "iterations": WEAK_ITERATIONS},
              "ptychi": {"max_epochs": 60, "chunk": 10, "tolerance": 0.01, "snapshot_every": 2,
                         "batch_sizes": (48, 96)}},
    "full": {"N": 64, "epochs": 0, "dense_crop": 176, "sparse_crop": 288, "doses": (1e6, 1e4), "siemens": True,
             "unseen": True, "iterations": (2, 5, 10, 20, 40), "weak": {"side": 20, "iterations": WEAK_ITERATIONS},
             "ptychi": {"max_epochs": 60, "chunk": 10, "tolerance": 0.01, "snapshot_every": 2,
                        "batch_sizes": (96,)}},
}
THREADS = 2
PARTIAL = ROOT / "out" / "bench-quality-partial.json"
"""The cases finished so far, rewritten after each one (a long run that is stopped keeps them)."""
NETWORK, REFINED, FLAT, PTYCHI = "network only", "network + k iterations", "refinement from flat", "pty-chi LSQML"
SHIPPED = "shipped default model (trained on the Siemens star's top half)"
GOLD_MODEL = "gold-ball model (bench/models/gold_balls, trained offline on a simulated gold-ball corpus)"
WEAK_MODEL = ("weak-contrast model (bench/models/weak_contrast, trained offline on simulated GRF objects through "
              "the star probe)")
NOT_SHIPPED = (f"model not shipped yet ({WEAK_BUNDLE.relative_to(ROOT).as_posix()}: python -m bench.curves run "
               "fno-weakcorpus, then python -m bench.curves export fno-weakcorpus bench/models/weak_contrast)")


@dataclass(frozen=True)
class Case:
    """One held-out scan to reconstruct, the network that serves it, and what it is scored against."""

    name: str
    label: str
    test: RawData
    object_shape: tuple[int, int]
    network: str
    """Key of the bundle that serves it (see :func:`run`)."""
    truth: np.ndarray | None = None
    """Ground-truth object on the scan's object grid (simulated cases only)."""
    full_scan: RawData | None = None
    """The whole scan, for a pty-chi reference when there is no ground truth."""
    notes: list[str] = field(default_factory=list)
    refine: dict[str, Any] = field(default_factory=dict)
    """Options every refining request adds (e.g. ``refine_probe``); pty-chi then refines the probe too."""
    iterations: tuple[int, ...] | None = None
    """The k of the refining requests (None: the mode's ``iterations``)."""


def gold_scan(N: int, crop: int, step: float, nphotons: float, seed: int = 0) -> tuple[RawData, np.ndarray]:
    """A raster scan of the central ``crop x crop`` of the gold-ball object with its real 3-mode probe."""
    with np.load(GOLD) as npz:
        full = npz["obj"]
    r0, c0 = GOLD_CENTRE[0] - crop // 2, GOLD_CENTRE[1] - crop // 2
    obj = full[r0:r0 + crop, c0:c0 + crop]
    centres = np.arange(N / 2, crop - N / 2 - 1, step, dtype=np.float64)
    x, y = (v.ravel() for v in np.meshgrid(centres, centres))
    scan = simulate_scan(obj, load_probe(GOLD, N), x, y, nphotons=nphotons, seed=seed,
                         metadata={"source": "gold_balls_from_pickle.npz (cdtools; CC0 data)"})
    return scan, obj


def train_bundle(scan: RawData, size: dict[str, Any], workdir: Path) -> tuple[Path, dict[str, Any]]:
    """Train on ``scan`` (a training half), export; the bundle directory and training figures."""
    training = TrainingConfig(model=ModelConfig(N=size["N"], n_filters_scale=1), batch_size=16,
                              nepochs=size["epochs"], nphotons=float(scan.metadata["nphotons"]),
                              output_dir=str(workdir / "run"))
    execution = PyTorchExecutionConfig(accelerator="auto", enable_progress_bar=False, seed=0)
    fitted = train(training, execution, train_data=scan)
    checkpoint = fitted.best_checkpoint or fitted.last_checkpoint
    bundle = export_checkpoint(checkpoint, workdir / "bundle", data=scan.to_file(workdir / "train.npz"))
    return bundle.source, {"wall_s": fitted.summary.wall_s, "steps": fitted.summary.global_step,
                           "train_positions": len(scan), "epochs": size["epochs"]}


def covered_box(coverage: np.ndarray, origin: tuple[float, float], object_shape: tuple[int, int]
                ) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(canvas window, object window) of the bounding box of pixels a stitched result fully covers."""
    rows, cols = np.nonzero(coverage >= 1.0)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    x0, y0 = (int(round(v)) for v in origin)
    top, left = max(r0 - y0, 0), max(c0 - x0, 0)
    bottom, right = min(r1 - y0, object_shape[0]), min(c1 - x0, object_shape[1])
    return ((slice(top + y0, bottom + y0), slice(left + x0, right + x0)),
            (slice(top, bottom), slice(left, right)))


def http_curves(case: Case, url: str, iterations: tuple[int, ...]
                ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], dict[str, np.ndarray]]:
    """Network only, network + k and flat + k over HTTP (one timed request each, after one warm-up).

    Returns the curves (each point holds its image until scored), the network result's geometry
    (``box``: canvas and object windows of the covered region) and data fit, and the last image of
    each method."""
    test = case.test
    positions = test.positions
    curves: dict[str, list[dict[str, Any]]] = {NETWORK: [], REFINED: [], FLAT: []}
    images: dict[str, np.ndarray] = {}
    geometry: dict[str, Any] = {}
    requests = [(NETWORK, 0, "network")] + [(REFINED, k, "network") for k in iterations] + [
        (FLAT, k, "flat") for k in iterations]
    with Client(url, timeout_s=1800) as client:
        client.reconstruct(test.diff3d, positions, probe=test.probeGuess)  # warm-up
        for method, k, start in requests:
            options = {"refine_iterations": k, "refine_start": start, **case.refine} if k else {}
            t0 = time.perf_counter()
            rec = client.reconstruct(test.diff3d, positions, probe=test.probeGuess, options=options)
            seconds = time.perf_counter() - t0
            if not geometry:
                geometry = {"box": covered_box(rec.coverage, rec.origin, case.object_shape), "data_fit": rec.data_fit}
            image = (rec.amplitude * np.exp(1j * rec.phase))[geometry["box"][0]]
            images[method] = image
            fit = rec.data_fit or {}
            curves[method].append({"seconds": seconds, "iterations": k, "server_timings_s": rec.timings,
                                   "nll_median": fit.get("nll_median"), "r_factor_median": fit.get("r_factor_median"),
                                   "n_outliers": fit.get("n_outliers"), "image": image})
    return curves, geometry, images


_PTYCHI_RUNS: dict[tuple[int, int, bool], ptychi.PtychiResult] = {}
"""pty-chi results by (scan, batch size, probe refined): the batch-size trial on a case is its run."""


def run_ptychi(scan: RawData, object_shape: tuple[int, int], settings: dict[str, Any], batch_size: int,
               optimize_probe: bool) -> ptychi.PtychiResult:
    """pty-chi LSQML on ``scan`` with ``batch_size`` (the other settings in ``settings``)."""
    key = (id(scan), batch_size, optimize_probe)
    if key not in _PTYCHI_RUNS:
        options = {key: value for key, value in settings.items() if key != "batch_sizes"}
        options.update(batch_size=min(batch_size, len(scan)), threads=THREADS, optimize_probe=optimize_probe, seed=0)
        _PTYCHI_RUNS[key] = ptychi.reconstruct(scan.diff3d.astype(np.float64) ** 2, scan.xcoords, scan.ycoords,
                                               scan.probeGuess, object_shape, options)
    return _PTYCHI_RUNS[key]


def run_case(case: Case, url: str, size: dict[str, Any], batch_size: int | None, figures_dir: Path | None,
             stamp: str) -> dict[str, Any]:
    """Curves of every method on one case, its flat-object score and time to quality; optionally a
    figure of each method's last image."""
    result: dict[str, Any] = {"label": case.label, "network": case.network, "test_positions": len(case.test),
                              "N": size["N"], "notes": list(case.notes), "refine_options": dict(case.refine)}
    reference, reference_name = case.truth, "ground truth"
    # the real scan's probe is only a model of the optics; a case that refines the probe has pty-chi refine it too
    optimize_probe = case.truth is None or bool(case.refine.get("refine_probe"))
    ptychi_result = None
    if size["ptychi"] is None:
        result["ptychi"] = "skipped in smoke mode"
    elif not ptychi.available():
        result["ptychi"] = ptychi.NOT_INSTALLED
    else:
        try:
            if case.full_scan is not None:
                full = run_ptychi(case.full_scan, case.object_shape, size["ptychi"], batch_size, optimize_probe)
                reference, reference_name = full.object, "pty-chi (full scan)"
                result["reference_run"] = {"epochs": full.epochs, "converged": full.converged,
                                           "seconds": full.reconstruction_s}
            ptychi_result = run_ptychi(case.test, case.object_shape, size["ptychi"], batch_size, optimize_probe)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            result["ptychi"] = f"failed: {error}"
    if reference is None:
        result["reference"] = "none (pty-chi unavailable)"
        return result
    iterations = case.iterations or size["iterations"]
    curves, geometry, images = http_curves(case, url, iterations)
    _, object_box = geometry["box"]
    ref = reference[object_box]
    k = iterations[-1]
    images = {NETWORK: images[NETWORK], f"network + {k} it.": images[REFINED], f"flat + {k} it.": images[FLAT]}
    for points in curves.values():
        for point in points:
            point.update({k: v for k, v in score(point.pop("image"), ref).items()
                          if k.startswith(("ssim", "psnr", "phase_"))})
    if ptychi_result is not None:
        curves[PTYCHI] = [{"seconds": float(s), "epochs": int(e), **{k: v for k, v in score(o[object_box], ref).items()
                                                                      if k.startswith(("ssim", "psnr", "phase_"))}}
                          for o, e, s in zip(ptychi_result.snapshots, ptychi_result.snapshot_epochs,
                                             ptychi_result.snapshot_s, strict=True)]
        images[f"pty-chi ({ptychi_result.epochs} epochs)"] = ptychi_result.object[object_box]
        result["ptychi"] = {"algorithm": "LSQML", "versions": ptychi_result.versions, "batch_size": batch_size,
                            "optimize_probe": optimize_probe, "epochs": ptychi_result.epochs,
                            "converged": ptychi_result.converged, "seconds": ptychi_result.reconstruction_s,
                            "process_s": ptychi_result.process_s}
    flat = score(np.ones_like(ref), ref)
    result.update(reference=reference_name, region_px=list(ref.shape), iterations=list(iterations), curves=curves,
                  flat={"ssim_amplitude": flat["ssim_amplitude"], "ssim_phase": flat["ssim_phase"]},
                  network_data_fit={k: v for k, v in (geometry["data_fit"] or {}).items()
                                    if k in ("nll_median", "nll_p95", "r_factor_median", "r_factor_p95",
                                             "n_outliers")},
                  time_to_quality=time_to_quality(curves))
    if figures_dir is not None:
        from bench.figures import quality_figure

        result["figure"] = quality_figure(figures_dir / f"quality_{case.name}.png", case.label, stamp, reference_name,
                                          ref, images, {name: score(image, ref) for name, image in images.items()})
    return result


def tune_ptychi_batch(case: Case, size: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """The batch size (of ``size['ptychi']['batch_sizes']``) with which pty-chi reaches
    ``TARGET`` x its own best SSIM soonest on ``case``; and the trials."""
    trials = []
    assert case.truth is not None, "the batch size is tuned on a case with ground truth"
    margin = 10  # scored where the scan is: the positions' box plus half a stitching crop
    x, y = case.test.xcoords, case.test.ycoords
    box = (slice(max(int(y.min()) - margin, 0), int(y.max()) + margin),
           slice(max(int(x.min()) - margin, 0), int(x.max()) + margin))
    for batch_size in size["ptychi"]["batch_sizes"]:
        run = run_ptychi(case.test, case.object_shape, size["ptychi"], batch_size, False)
        scores = [score(o[box], case.truth[box]) for o in run.snapshots]
        amp = [s["ssim_amplitude"] for s in scores]
        phase = [s["ssim_phase"] for s in scores]
        ok = [i for i in range(len(amp)) if amp[i] >= TARGET * max(amp) and phase[i] >= TARGET * max(phase)]
        trials.append({"batch_size": batch_size, "epochs": run.epochs, "converged": run.converged,
                       "seconds": run.reconstruction_s, "best_ssim": [max(amp), max(phase)],
                       "seconds_to_target": float(run.snapshot_s[ok[0]]) if ok else None})
    usable = [t for t in trials if t["seconds_to_target"] is not None]
    best = min(usable, key=lambda t: t["seconds_to_target"]) if usable else trials[0]
    return int(best["batch_size"]), trials


def _gold_cases(size: dict[str, Any], workdir: Path, bundles: dict[str, Path],
                training: dict[str, Any]) -> list[Case]:
    """The gold-ball cases of each dose (dense, and sparse when the mode has them); each one's network is
    added to ``bundles`` (trained in ``workdir`` when the mode trains, its record then in ``training``)."""
    N = size["N"]
    cases: list[Case] = []
    for dose in size["doses"]:
        tag = f"{dose:.0e}".replace("+0", "")
        scan, obj = gold_scan(N, size["dense_crop"], 4.0, dose)
        train_part, test_part = spatial_split(scan, axis="y", fraction=0.5)
        if size["epochs"]:
            key = f"gold {tag} (trained on the dense top half)"
            bundles[key], training[key] = train_bundle(train_part, size, workdir / f"gold_{tag}")
        elif (GOLD_BUNDLE / "manifest.json").is_file() and N == 64:
            key = GOLD_MODEL
            bundles[key] = GOLD_BUNDLE
        else:  # no gold-ball model: the shipped model of another instrument (the Siemens star)
            key = SHIPPED
            bundles[key] = DEFAULT_BUNDLE
        cases.append(Case(f"gold_{tag}_dense", f"gold balls, {tag} photons, 4 px step", test_part, obj.shape,
                          key, truth=obj))
        if size["sparse_crop"]:
            sparse, sparse_obj = gold_scan(N, size["sparse_crop"], N / 2, dose, seed=1)
            cases.append(Case(f"gold_{tag}_sparse", f"gold balls, {tag} photons, {N // 2} px step",
                              spatial_split(sparse, axis="y", fraction=0.5)[1], sparse_obj.shape, key,
                              truth=sparse_obj))
    return cases


def weak_case(size: dict[str, Any], stand_in: str | None = None) -> Case | str:
    """The weak-contrast case of a mode (see the module docstring), served by :data:`WEAK_BUNDLE` (N = 64),
    else by the network ``stand_in`` (a key of the run's bundles: a mode that trains, as the smoke
    does at N = 32, has its own); the reason it cannot be run when neither is there (:data:`NOT_SHIPPED`)."""
    N, spec = size["N"], size["weak"]
    if (WEAK_BUNDLE / "manifest.json").is_file() and N == 64:
        key, notes = WEAK_MODEL, ["served by a network that never saw this object (trained on simulated GRF "
                                  "objects through this probe)"]
    elif stand_in is not None:
        missing = "shipped" if N == 64 else f"at N={N}"
        key, notes = stand_in, [f"served by a stand-in, {stand_in} (no weak-contrast model {missing})"]
    else:
        return NOT_SHIPPED
    weak = weak_contrast_scan(N, spec["side"])
    label = (f"weak contrast (GRF, amplitude 0.9-1, phase +-0.15 rad), star probe, {N // 8} px step, "
             f"{len(weak.scan)} patterns, 1e6 photons, the whole scan, true probe sent and refined")
    return Case("weak_contrast", label, weak.scan, weak.truth.shape, key, truth=weak.truth,
                notes=notes, refine=dict(WEAK_REFINE),
                iterations=tuple(spec["iterations"]))


def _cases(size: dict[str, Any], workdir: Path
           ) -> tuple[list[Case], dict[str, Path], dict[str, Any], dict[str, dict[str, Any]]]:
    """Every case of a mode, cheap ones first; the bundle of each network; the training records; the
    cases that cannot run (their result: label and reason)."""
    bundles: dict[str, Path] = {}
    training: dict[str, Any] = {}
    unavailable: dict[str, dict[str, Any]] = {}
    cases = _gold_cases(size, workdir, bundles, training)
    weak = weak_case(size, next(iter(training), None))  # a mode that trains serves it with its own network
    if isinstance(weak, Case):
        bundles.setdefault(weak.network, WEAK_BUNDLE)
        cases.append(weak)
    else:
        unavailable["weak_contrast"] = {"label": "weak contrast (GRF), star probe, the whole scan", "reference": weak}
    if size["siemens"]:
        scan, shape = siemens_scan(size["N"])
        bundles[SHIPPED] = DEFAULT_BUNDLE
        cases.append(Case("siemens", "real Siemens star (APS Velociprobe)",
                          spatial_split(scan, axis="y", fraction=0.5)[1], shape, SHIPPED, full_scan=scan))
    if size["unseen"] and all(c.network != SHIPPED for c in cases if c.truth is not None):
        # the gold balls served by the shipped model too: a model of another instrument
        key = SHIPPED
        bundles[key] = DEFAULT_BUNDLE
        dense = next(c for c in cases if c.name.endswith("1e6_dense"))
        cases.append(Case("gold_1e6_unseen_instrument", "gold balls, 1e6 photons, 4 px step, served by a model "
                          "trained on another instrument (the Siemens star)", dense.test, dense.object_shape, key,
                          truth=dense.truth))
    # cheap cases first, so a run stopped early on a loaded machine still has them
    cases.sort(key=lambda case: (case.name == "siemens", case.name.endswith("1e4_dense")))
    return cases, bundles, training, unavailable


def _serve_cases(cases: list[Case], bundles: dict[str, Path], size: dict[str, Any], batch_size: int | None,
                 tuning: list[Any], figures_dir: Path | None, stamp: str) -> dict[str, Any]:
    """Each case against a server of its network's bundle (a failed case is recorded, the run goes on);
    what is done so far is written to :data:`PARTIAL` after each case."""
    results: dict[str, Any] = {}
    for key, bundle in bundles.items():
        with running_server(bundle, intra_op_threads=THREADS) as url:
            for case in (case for case in cases if case.network == key):
                try:
                    results[case.name] = run_case(case, url, size, batch_size, figures_dir, stamp)
                except (ServingError, ServerUnreachable, RuntimeError, OSError) as error:  # the run goes on
                    results[case.name] = {"label": case.label, "reference": f"failed: {error}"}
                PARTIAL.parent.mkdir(parents=True, exist_ok=True)  # what is done so far, case by case
                PARTIAL.write_text(json.dumps(finite_or_none({"ptychi_batch_tuning": tuning,
                                                              "ptychi_batch_size": batch_size,
                                                              "cases": results}), default=str))
    return results


def run(mode: str, *, figures_dir: Path | None = None, stamp: str = "") -> dict[str, Any]:
    """Every case of ``mode``; ``figures_dir`` receives the time-to-quality figure."""
    size = SIZES[mode]
    with tempfile.TemporaryDirectory() as tmp:
        cases, bundles, training, unavailable = _cases(size, Path(tmp))
        batch_size, tuning = None, []
        if size["ptychi"] is not None and ptychi.available():
            batch_size, tuning = tune_ptychi_batch(next(c for c in cases if c.name.endswith("1e6_dense")), size)
        results = {**_serve_cases(cases, bundles, size, batch_size, tuning, figures_dir, stamp), **unavailable}
    setup = {k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()}
    out = {"setup": setup, "training": training, "ptychi_batch_tuning": tuning, "ptychi_batch_size": batch_size,
           "cases": results}
    if figures_dir is not None:
        from bench.figures import time_to_quality_figure

        out["figure"] = time_to_quality_figure(figures_dir / "time_to_quality.png", results, stamp)
    return out


def table(result: dict[str, Any]) -> str:
    """Markdown: per case, each method's time to quality, its best SSIM, and the flat-object SSIM."""
    lines = ["| case | method | time to 0.95 x best SSIM (s) | at | best SSIM amp / phase (at s) | "
             "speed-up vs pty-chi at equal quality | speed-up vs refinement from flat | flat-object SSIM amp / phase |",
             "|---|---|---:|---|---|---:|---:|---|"]
    for name, case in result["cases"].items():
        if "curves" not in case:
            lines.append(f"| {name} | — | {case.get('reference')} | | | | | |")
            continue
        ttq = case["time_to_quality"]
        flat = case["flat"]
        ptychi_hit, flat_hit = ttq["reached"].get(PTYCHI), ttq["reached"].get(FLAT)
        for method, points in case["curves"].items():
            hit = ttq["reached"][method]
            best = max(points, key=lambda p: p["ssim_amplitude"] + p["ssim_phase"])
            at = "network" if method == NETWORK and hit is not None else reached_at(hit)
            speed = "—" if method == PTYCHI else speed_up(hit, ptychi_hit)
            network_speed = speed_up(hit, flat_hit) if method in (NETWORK, REFINED) else "—"
            lines.append(f"| {name} | {method} | {'not reached' if hit is None else cell(hit['seconds'], '.2f')} | "
                         f"{at} | {best['ssim_amplitude']:.3f} / {best['ssim_phase']:.3f} ({best['seconds']:.2f}) | "
                         f"{speed} | {network_speed} | {flat['ssim_amplitude']:.3f} / {flat['ssim_phase']:.3f} |")
    stopped = [f"**This run was stopped before its last cases**: {result['stopped_early']}."] \
        if result.get("stopped_early") else []
    notes = stopped + ["Targets (0.95 x best): " + "; ".join(
        f"`{name}` {case['time_to_quality']['target']['amplitude']:.3f} / {case['time_to_quality']['target']['phase']:.3f}"
        f" against {case['reference']}" for name, case in result["cases"].items() if "curves" in case) + "."]
    if result.get("ptychi_batch_tuning"):
        notes.append("pty-chi batch size tuned on the first gold 1e6 case: " + ", ".join(
            f"{t['batch_size']}: {cell(t['seconds_to_target'], '.2f')} s to its own target "
            f"({t['epochs']} epochs, {'converged' if t['converged'] else 'cap'})"
            for t in result["ptychi_batch_tuning"]) + f"; used {result['ptychi_batch_size']}.")
    for name, case in result["cases"].items():
        if case.get("refine_options") and "curves" in case:
            notes.append(f"`{name}`: k = {', '.join(str(k) for k in case['iterations'])}; every refining request adds "
                         + ", ".join(f"`{key} = {json.dumps(value)}`" for key, value in case["refine_options"].items())
                         + "; " + "; ".join(case["notes"]) + ".")
        info = case.get("ptychi")
        if isinstance(info, dict):
            notes.append(f"`{name}`: pty-chi {info['epochs']} epochs "
                         f"({'converged' if info['converged'] else 'hit the cap'}), {info['seconds']:.2f} s.")
    figures = [result.get("figure", "")] + [case.get("figure", "") for case in result["cases"].values()]
    notes += [f"![{Path(f).stem}]({Path(f).relative_to('docs').as_posix()})" for f in figures if f.startswith("docs/")]
    return "\n\n".join(["\n".join(lines), *notes])


def run_weak_contrast(mode: str = "quick") -> dict[str, Any]:
    """The weak-contrast case alone (no pty-chi, which never reaches its target there: ``bench solver``):
    network + k against flat + k over HTTP. ``python -m bench.quality`` prints its table and writes
    ``bench/results/<date>-weak_contrast.json``."""
    size = {**SIZES[mode], "ptychi": None}
    case = weak_case(size)
    if not isinstance(case, Case):
        raise SystemExit(case)
    with running_server(WEAK_BUNDLE, intra_op_threads=THREADS) as url:
        return {"setup": {"mode": mode, "threads": THREADS}, "cases": {case.name: run_case(case, url, size, None,
                                                                                          None, "")}}


if __name__ == "__main__":
    from datetime import date

    from bench.machine import machine_info

    weak = run_weak_contrast()
    path = ROOT / "bench" / "results" / f"{date.today().isoformat()}-weak_contrast.json"
    path.write_text(json.dumps(finite_or_none({"machine": machine_info(), **weak}), indent=1, default=str) + "\n")
    print(table(weak))
