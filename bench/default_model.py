"""Score a bundle on the real Siemens star's held-out half, served over HTTP, against a converged
probe-refined reconstruction of the full scan.

The reference is this project's solver on the **full** real scan at N=64 (``bench.cases.siemens_scan``):
``rpie`` from a flat object with the probe refined, :data:`REFERENCE_ITERATIONS` iterations (the
amplitude error has long stopped moving: ``auto`` stops the same run after about 60), cached in
``runs/star_reference_solver.npz``. pty-chi's converged full-scan reconstruction agrees with it on the
phase (SSIM 0.983, correlation 0.990; docs/benchmarks.md "Solver"). The bundle is served by a real
``ptychopinn serve`` (``bench.server.running_server``) and reconstructs the bottom half of the scan
with ``POST /v1/reconstruct``; the result is scored on the region it fully covers
(``bench.scoring.score``: registration of at most 3 px, amplitude normalisation, phase plane
removal, the phase correlation) together with the flat object's scores on the same region.

    python -m bench.default_model serving/default_bundle [OTHER_BUNDLE ...]
    python -m bench.default_model --curves tf=runs/default-tf smooth=runs/default-smooth   # NLL per epoch
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.cases import siemens_scan
from bench.quality import covered_box
from bench.report import ROOT
from bench.scoring import score
from bench.server import running_server
from ptycho_torch.data import spatial_split
from serving.client import Client

N = 64
REFERENCE = ROOT / "runs" / "star_reference_solver.npz"
REFERENCE_ITERATIONS = 300


def reference(path: Path = REFERENCE) -> np.ndarray:
    """The solver's converged reconstruction of the full real scan (computed once, then read from ``path``)."""
    if path.is_file():
        with np.load(path) as npz:
            return npz["object"]
    from ptycho_torch.refinement.solver import RefineSettings, refine
    from ptycho_torch.refinement.stitched import canvas_model

    scan, shape = siemens_scan(N)
    settings = RefineSettings(iterations=REFERENCE_ITERATIONS, refine_probe=True)
    model = canvas_model(scan.diff3d, scan.positions, scan.probeGuess, shape, (0, 0), settings)
    last = collections.deque(refine(model, model.grow(np.ones(shape, np.complex64), 1.0), settings), maxlen=1)[0]
    obj = np.asarray(model.crop(last.object))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, object=obj, probe=last.probe, iterations=last.iteration)
    return obj


def evaluate(bundle: Path, images: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Reconstruct the held-out half over HTTP with ``bundle`` and score it (see the module docstring);
    ``images`` (when given) receives the scored phase under the bundle's path and the reference's under
    ``"reference"``."""
    scan, shape = siemens_scan(N)
    _, test = spatial_split(scan, axis="y", fraction=0.5)
    ref = reference()
    with running_server(bundle) as url, Client(url) as client:
        rec = client.reconstruct(test.diff3d, test.positions, probe=test.probeGuess)
    canvas_box, object_box = covered_box(rec.coverage, rec.origin, shape)
    image = (rec.amplitude * np.exp(1j * rec.phase))[canvas_box]
    region = ref[object_box]
    if images is not None:
        images[str(bundle)], images["reference"] = np.angle(image), np.angle(region)
    out: dict[str, Any] = {"bundle": str(bundle), "region_px": list(region.shape)}
    for name, candidate in (("model", image), ("flat", np.ones_like(region))):
        scores = score(candidate, region)
        scores.pop("frc_curves")
        out[name] = scores
    return out


CURVES = ROOT / "bench" / "results" / "default_model_curves.json"
CURVES_FIGURE = ROOT / "docs" / "figures" / "default_model_curves.png"


def held_out_curve(run_dir: Path) -> dict[int, float]:
    """Epoch -> held-out NLL (``val_loss``) of a ``python -m export.default_bundle`` run, from its CSV
    logs (every ``logs/version_*`` of a resumed run, later versions winning)."""
    import csv

    curve: dict[int, float] = {}
    for metrics in sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda f: int(f.parent.name[8:])):
        with metrics.open() as f:
            curve.update({int(row["epoch"]) + 1: float(row["val_loss"]) for row in csv.DictReader(f) if row["val_loss"]})
    return dict(sorted(curve.items()))


def draw_curves(runs: dict[str, Path], results: Path = CURVES, path: Path = CURVES_FIGURE) -> Path:
    """Held-out NLL per epoch of each run (label -> run folder) into ``results`` (JSON) and a PNG."""
    from bench.figures import save_figure  # first: it selects the Agg backend

    # isort: split
    import matplotlib.pyplot as plt

    curves = {label: held_out_curve(run_dir) for label, run_dir in runs.items()}
    results.write_text(json.dumps({label: {str(k): v for k, v in c.items()} for label, c in curves.items()}) + "\n")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), label=label)
    ax.set_ylim(top=-430)
    ax.set_xlabel("epoch (17 steps of 16 patterns)")
    ax.set_ylabel("held-out Poisson NLL per pixel")
    ax.set_title("real Siemens star, held-out bottom half (258 patterns)", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return path


def phase_figure(images: dict[str, np.ndarray], path: Path) -> Path:
    """The held-out phase of each bundle above the reference's (plane removed), one panel each."""
    from bench.figures import save_figure  # first: it selects the Agg backend

    # isort: split
    import matplotlib.pyplot as plt

    from ptycho_torch.metrics import align_phase

    fig, axes = plt.subplots(len(images), 1, figsize=(6, 2.4 * len(images)), squeeze=False)
    for ax, (label, phase) in zip(axes[:, 0], images.items(), strict=True):
        ax.imshow(align_phase(phase), cmap="gray")
        ax.set_title(label if label != "reference" else "reference: solver, full scan, probe refined", fontsize=8)
        ax.axis("off")
    save_figure(fig, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.default_model", description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", type=Path, help="bundles to score")
    parser.add_argument("--curves", nargs="+", default=[], metavar="LABEL=RUN_DIR",
                        help=f"draw the held-out NLL per epoch of `export.default_bundle` runs ({CURVES_FIGURE.name})")
    parser.add_argument("--figure", type=Path, default=None, help="PNG of the held-out phases beside the reference")
    args = parser.parse_args(argv)
    images: dict[str, np.ndarray] = {}
    for bundle in args.bundles:
        print(json.dumps(evaluate(bundle, images)), flush=True)
    if args.figure is not None and images:
        images["reference"] = images.pop("reference")  # last
        print(phase_figure(images, args.figure))
    if args.curves:
        print(draw_curves({label: Path(run) for label, run in (item.split("=", 1) for item in args.curves)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
