"""Reconstruction quality and speed: this project (trained, exported, served over HTTP) vs pty-chi.

Cases: (a) a scan simulated from the shipped real probe and object (cdtools' gold-ball
reconstruction; ``data/gold_balls_from_pickle.npz``) at two doses, scored against the
ground-truth object; (b) the shipped real scan (tike's Siemens star), scored against pty-chi's
reconstruction of the full scan. Every case is split spatially (top half trains, bottom half is
held out). This project trains on the top half, exports a bundle, serves it with a real uvicorn
(``ptychopinn serve`` on 127.0.0.1) and reconstructs the held-out half with ``POST /v1/reconstruct``
(inference + stitching, timed end to end: median of repeats after a warm-up). pty-chi (LSQML, CPU)
reconstructs the same held-out patterns at the same positions with the same probe, until its
stated convergence. Both are scored on the region the project's stitched reconstruction covers,
after the same sub-pixel registration, amplitude normalisation and phase-plane removal
(``ptycho_torch.metrics.evaluate_reconstruction``), and by the Poisson NLL of the diffraction they
predict for the held-out patterns. Run with ``python -m bench quality [--quick]``.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import gammaln

from bench import ptychi
from bench.report import cell
from bench.server import running_server
from bench.timing import median_seconds
from export.bundle_writer import export_checkpoint
from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.data import RawData, load_siemens_star, spatial_split
from ptycho_torch.grouping import extract_patches
from ptycho_torch.errors import DataContractError
from ptycho_torch.metrics import evaluate_reconstruction
from ptycho_torch.simulation import far_field_intensity, load_probe, simulate_scan
from serving.client import Client
from training.trainer import train

DATA = Path(__file__).resolve().parents[1] / "data"
GOLD = DATA / "gold_balls_from_pickle.npz"
SIEMENS = DATA / "siemens-star-small.npz.bz2"
GOLD_CENTRE = (155, 160)
"""Row, column of the centre of the well-reconstructed part of the gold-ball object."""

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"N": 32, "n_filters_scale": 1, "epochs": 1, "batch_size": 16, "crop": 72, "step": 4,
              "doses": (1e6,), "siemens": False, "ptychi": None, "repeats": 1},
    "quick": {"N": 32, "n_filters_scale": 1, "epochs": 4, "batch_size": 16, "crop": 112, "step": 4,
              "doses": (1e4, 1e6), "siemens": True, "repeats": 3,
              "ptychi": {"max_epochs": 30, "chunk": 5, "tolerance": 0.01, "batch_size": 96}},
    "full": {"N": 32, "n_filters_scale": 1, "epochs": 60, "batch_size": 16, "crop": 144, "step": 4,
             "doses": (1e4, 1e6), "siemens": True, "repeats": 5,
             "ptychi": {"max_epochs": 200, "chunk": 10, "tolerance": 0.01, "batch_size": 96}},
}
THREADS = 2
MAX_SHIFT_PX = 3.0


@dataclass(frozen=True)
class Case:
    """One scan to reconstruct, its split, and what its reconstructions are scored against."""

    name: str
    label: str
    scan: RawData
    train: RawData
    test: RawData
    object_shape: tuple[int, int]
    truth: np.ndarray | None
    """Ground-truth object on the scan's object grid (simulated cases only)."""


def gold_case(N: int, crop: int, step: int, nphotons: float, seed: int = 0) -> Case:
    """A raster scan of the central ``crop x crop`` of the gold-ball object with its real 3-mode probe."""
    with np.load(GOLD) as npz:
        full = npz["obj"]
    r0, c0 = GOLD_CENTRE[0] - crop // 2, GOLD_CENTRE[1] - crop // 2
    obj = full[r0:r0 + crop, c0:c0 + crop]
    centres = np.arange(N / 2, crop - N / 2 - 1, step, dtype=np.float64)
    x, y = (v.ravel() for v in np.meshgrid(centres, centres))
    scan = simulate_scan(obj, load_probe(GOLD, N), x, y, nphotons=nphotons, seed=seed,
                         metadata={"source": "gold_balls_from_pickle.npz (cdtools; CC0 data)"})
    train_part, test_part = spatial_split(scan, axis="y", fraction=0.5)
    return Case(f"gold_{nphotons:.0e}".replace("+0", ""), f"simulated gold balls, {nphotons:.0e} photons/pattern",
                scan, train_part, test_part, obj.shape, obj)


def siemens_case(N: int) -> Case:
    """The real Siemens-star scan, detector cropped to N (its own measured dose)."""
    scan = load_siemens_star(SIEMENS, n=N)
    shape = (int(np.ceil(scan.ycoords.max() + N / 2)) + 2, int(np.ceil(scan.xcoords.max() + N / 2)) + 2)
    train_part, test_part = spatial_split(scan, axis="y", fraction=0.5)
    return Case("siemens", f"real Siemens star (APS Velociprobe), {scan.metadata['nphotons']:.1e} photons/pattern",
                scan, train_part, test_part, shape, None)


def poisson_nll(patches: np.ndarray, probe: np.ndarray, counts: np.ndarray) -> float:
    """Mean per-pixel Poisson NLL (with log k!) of ``counts`` under ``c * |F(probe * patch)|^2``, ``c``
    the maximum-likelihood global scale (the object's scale is arbitrary for the network)."""
    intensity = far_field_intensity(patches, probe)
    rate = np.maximum(intensity * (counts.sum() / intensity.sum()), 1e-12)
    return float(np.mean(rate - counts * np.log(rate) + gammaln(counts + 1.0)))


def train_export_serve(case: Case, size: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Train on ``case.train``, export, serve, reconstruct ``case.test`` over HTTP."""
    N = size["N"]
    training = TrainingConfig(model=ModelConfig(N=N, n_filters_scale=size["n_filters_scale"]),
                              batch_size=size["batch_size"], nepochs=size["epochs"],
                              nphotons=float(case.scan.metadata["nphotons"]), output_dir=str(workdir / "run"))
    execution = PyTorchExecutionConfig(accelerator="auto", enable_progress_bar=False, seed=0)
    fitted = train(training, execution, train_data=case.train)
    checkpoint = fitted.best_checkpoint or fitted.last_checkpoint
    bundle = export_checkpoint(checkpoint, workdir / "bundle", data=case.train.to_file(workdir / "train.npz"))
    test = case.test
    positions = np.column_stack([test.xcoords, test.ycoords])
    with running_server(bundle.source) as url, Client(url) as client:
        wall_s, rec = median_seconds(lambda: client.reconstruct(test.diff3d, positions, probe=test.probeGuess),
                                     repeat=size["repeats"], warmup=1)
        amplitude, phase = client.infer(bundle.name, test.diff3d[:, None], np.full(len(test), rec.scale, np.float32))
    return {
        "canvas": rec.amplitude * np.exp(1j * rec.phase), "coverage": rec.coverage, "origin": rec.origin,
        "patches": (amplitude[:, 0] * np.exp(1j * phase[:, 0])).astype(np.complex64), "probe": bundle.probe,
        "wall_s": wall_s, "server_timings_s": rec.timings,
        "training": {"wall_s": fitted.summary["wall_s"], "samples_per_s": fitted.summary["samples_per_s"],
                     "steps": fitted.summary["global_step"], "accelerator": fitted.summary["accelerator"]},
    }


def run_ptychi(scan: RawData, object_shape: tuple[int, int], size: dict[str, Any], optimize_probe: bool
               ) -> ptychi.PtychiResult:
    settings = {**size["ptychi"], "threads": THREADS, "optimize_probe": optimize_probe, "seed": 0}
    return ptychi.reconstruct(scan.diff3d.astype(np.float64) ** 2, scan.xcoords, scan.ycoords, scan.probeGuess,
                              object_shape, settings)


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


def score(image: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """SSIM, PSNR, FRC50 (amplitude, phase) and FRC curves. Sub-pixel registration is applied when it
    finds a shift of at most :data:`MAX_SHIFT_PX` (a poor reconstruction can pull the cross-correlation
    peak anywhere); otherwise the images are compared as placed (positions are shared, so they align)."""
    try:
        metrics = evaluate_reconstruction(image, reference, register_first=True)
    except DataContractError:  # the registration shift left no overlap
        metrics = None
    registered = metrics is not None and max(abs(v) for v in metrics["shift"]) <= MAX_SHIFT_PX
    if not registered:
        metrics = evaluate_reconstruction(image, reference, register_first=False)
    out: dict[str, Any] = {f"{key}_{part}": float(metrics[key][i]) for key in ("ssim", "psnr", "frc50")
                           for i, part in enumerate(("amplitude", "phase"))}
    out["registered_shift_px"] = [float(v) for v in metrics["shift"]] if registered else None
    out["frc_curves"] = {"amplitude": np.round(metrics["frc"][0], 4).tolist(),
                         "phase": np.round(metrics["frc"][1], 4).tolist()}
    return out


def run_case(case: Case, size: dict[str, Any], figures_dir: Path | None, stamp: str) -> dict[str, Any]:
    """Reconstruct one case both ways and score it; optionally draw its figure."""
    test = case.test
    counts = test.diff3d.astype(np.float64) ** 2
    with tempfile.TemporaryDirectory() as tmp:
        ours = train_export_serve(case, size, Path(tmp))
    canvas_box, object_box = covered_box(ours["coverage"], ours["origin"], case.object_shape)
    images = {"this project": ours["canvas"][canvas_box]}
    nll = {"this project": poisson_nll(ours["patches"], ours["probe"], counts)}
    result: dict[str, Any] = {
        "label": case.label, "N": size["N"], "positions": len(case.scan), "train_positions": len(case.train),
        "test_positions": len(test), "nphotons": float(case.scan.metadata["nphotons"]),
        "region_px": [object_box[0].stop - object_box[0].start, object_box[1].stop - object_box[1].start],
        "training": ours["training"],
        "wall_s": {"this project (HTTP, end to end)": ours["wall_s"]}, "server_timings_s": ours["server_timings_s"],
    }
    reference, reference_name = (case.truth[object_box], "ground truth") if case.truth is not None else (None, "")
    if case.truth is not None:
        nll["ground truth"] = poisson_nll(extract_patches(case.truth, test.xcoords, test.ycoords, size["N"]),
                                          test.probeGuess, counts)
    if size["ptychi"] is None:
        result["ptychi"] = "skipped in smoke mode"
    elif not ptychi.available():
        result["ptychi"] = ptychi.NOT_INSTALLED
    else:
        optimize_probe = case.truth is None  # the real scan's probe is only a model of the optics
        try:
            held_out = run_ptychi(test, case.object_shape, size, optimize_probe)
            full = run_ptychi(case.scan, case.object_shape, size, optimize_probe) if case.truth is None else None
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            result["ptychi"] = f"failed: {error}"
        else:
            images["pty-chi (held-out part)"] = held_out.object[object_box]
            nll["pty-chi (held-out part)"] = poisson_nll(
                extract_patches(held_out.object, test.xcoords, test.ycoords, size["N"]), held_out.probe, counts)
            result["wall_s"]["pty-chi LSQML (CPU, held-out part)"] = held_out.reconstruction_s
            result["ptychi"] = {"algorithm": "LSQML", "versions": held_out.versions, "settings": size["ptychi"],
                                "optimize_probe": optimize_probe, "epochs": held_out.epochs,
                                "converged": held_out.converged, "process_s": held_out.process_s}
            result["speed_ratio"] = held_out.reconstruction_s / ours["wall_s"]
            if full is not None:
                reference, reference_name = full.object[object_box], "pty-chi (full scan)"
                result["ptychi"]["full_scan"] = {"epochs": full.epochs, "converged": full.converged,
                                                 "reconstruction_s": full.reconstruction_s}
    result["nll"] = nll
    result["reference"] = reference_name or "none (pty-chi unavailable)"
    if reference is not None:
        result["scores"] = {name: score(image, reference) for name, image in images.items()}
        if figures_dir is not None:
            from bench.figures import quality_figure

            result["figure"] = quality_figure(figures_dir / f"quality_{case.name}.png", case.label, stamp,
                                              reference_name, reference, images, result["scores"])
    return result


def run(mode: str, *, figures_dir: Path | None = None, stamp: str = "") -> dict[str, Any]:
    """Every case of ``mode``; ``figures_dir`` receives one PNG per scored case."""
    size = SIZES[mode]
    cases = [gold_case(size["N"], size["crop"], size["step"], dose) for dose in size["doses"]]
    if size["siemens"]:
        cases.append(siemens_case(size["N"]))
    return {"setup": {key: value for key, value in size.items() if key != "doses"} | {"doses": list(size["doses"])},
            "cases": {case.name: run_case(case, size, figures_dir, stamp) for case in cases}}


def table(result: dict[str, Any]) -> str:
    """Markdown tables: image quality, data fit and speed per case."""
    quality = ["| case | reference | method | SSIM amp | SSIM phase | PSNR amp (dB) | PSNR phase (dB) | FRC50 amp | "
               "FRC50 phase |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    fit = ["| case | method | Poisson NLL per pixel (held-out patterns) |", "|---|---|---:|"]
    speed = ["| case | test patterns | this project, HTTP end to end (s) | pty-chi LSQML (s) | pty-chi epochs "
             "(converged) | speed ratio (pty-chi s / ours) | training (samples/s, steps) |", "|---|---:|---:|---:|---|---:|---|"]
    for name, case in result["cases"].items():
        for method, scores in case.get("scores", {}).items():
            quality.append(f"| {name} | {case['reference']} | {method} | " + " | ".join(
                cell(scores[f"{k}_{p}"], spec) for k, spec in (("ssim", ".3f"), ("psnr", ".2f"), ("frc50", ".1f"))
                for p in ("amplitude", "phase")) + " |")
        for method, value in case["nll"].items():
            fit.append(f"| {name} | {method} | {value:.4f} |")
        info = case["ptychi"]
        ours_s = case["wall_s"]["this project (HTTP, end to end)"]
        if isinstance(info, dict):
            theirs = f"{case['wall_s']['pty-chi LSQML (CPU, held-out part)']:.2f}"
            epochs = f"{info['epochs']} ({'yes' if info['converged'] else 'no: cap'})"
            ratio = f"{case['speed_ratio']:.1f}x"
        else:
            theirs, epochs, ratio = info, "—", "—"
        training = case["training"]
        speed.append(f"| {name} | {case['test_positions']} | {ours_s:.3f} | {theirs} | {epochs} | {ratio} | "
                     f"{training['samples_per_s'] or 0:.1f}, {training['steps']} |")
    references = [f"Reference for `{name}`: pty-chi LSQML on all {case['positions']} patterns, "
                  f"{full['epochs']} epochs ({'converged' if full['converged'] else 'hit the cap'}), "
                  f"{full['reconstruction_s']:.2f} s." for name, case in result["cases"].items()
                  if isinstance(case["ptychi"], dict) and (full := case["ptychi"].get("full_scan"))]
    figures = [f"![{name}: amplitude/phase and FRC]({Path(case['figure']).relative_to('docs').as_posix()})"
               for name, case in result["cases"].items() if str(case.get("figure", "")).startswith("docs/")]
    return "\n\n".join(["\n".join(quality), "\n".join(fit), "\n".join(speed), *references, *figures])
