"""Score a bundle on the real Siemens star's held-out half, served over HTTP, against pty-chi.

The reference is pty-chi's LSQML reconstruction (probe refined) of the **full** real scan at N=64
(``bench.quality.siemens_scan`` and ``run_ptychi`` with the quick benchmark's settings),
cached in ``runs/star_reference.npz``. The bundle is served by a real ``ptychopinn serve``
(``bench.server.running_server``) and reconstructs the bottom half of the scan with
``POST /v1/reconstruct``; the result is scored on the region it fully covers
(``bench.quality.score``: registration of at most 3 px, amplitude normalisation, phase plane
removal) together with the phase correlation (Pearson, after the same alignment) and the flat
object's scores on the same region.

    python -m bench.default_model serving/default_bundle [OTHER_BUNDLE ...]
    python -m bench.default_model --curves tf=runs/default-tf smooth=runs/default-smooth   # NLL per epoch
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench import ptychi
from bench.quality import SIZES, covered_box, run_ptychi, score, siemens_scan
from bench.report import ROOT
from bench.server import running_server
from ptycho_torch.data import spatial_split
from ptycho_torch.metrics import align_phase, register
from serving.client import Client

N = 64
REFERENCE = ROOT / "runs" / "star_reference.npz"


def reference(path: Path = REFERENCE) -> np.ndarray:
    """pty-chi's reconstruction of the full real scan (computed once, then read from ``path``)."""
    if path.is_file():
        with np.load(path) as npz:
            return npz["object"]
    if not ptychi.available():
        raise SystemExit(f"pty-chi is not installed ({ptychi.NOT_INSTALLED}); it provides the reference")
    scan, shape = siemens_scan(N)
    settings = SIZES["quick"]["ptychi"]
    result = run_ptychi(scan, shape, settings, settings["batch_sizes"][-1], optimize_probe=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, object=result.object, epochs=result.epochs, converged=result.converged)
    return result.object


def phase_correlation(image: np.ndarray, ref: np.ndarray) -> float:
    """Pearson correlation of the plane-aligned phases (after the sub-pixel registration)."""
    moved, ref, _ = register(image, ref)
    a, b = align_phase(np.angle(moved)), align_phase(np.angle(ref))
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def evaluate(bundle: Path) -> dict[str, Any]:
    """Reconstruct the held-out half over HTTP with ``bundle`` and score it (see the module docstring)."""
    scan, shape = siemens_scan(N)
    _, test = spatial_split(scan, axis="y", fraction=0.5)
    ref = reference()
    with running_server(bundle) as url, Client(url) as client:
        rec = client.reconstruct(test.diff3d, test.positions, probe=test.probeGuess)
    canvas_box, object_box = covered_box(rec.coverage, rec.origin, shape)
    image = (rec.amplitude * np.exp(1j * rec.phase))[canvas_box]
    region = ref[object_box]
    flat = np.ones_like(region)
    out = {"bundle": str(bundle), "region_px": list(region.shape)}
    for name, candidate in (("model", image), ("flat", flat)):
        scores = score(candidate, region)
        scores.pop("frc_curves")
        out[name] = scores
    out["model"]["phase_correlation"] = phase_correlation(image, region)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.default_model", description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", type=Path, help="bundles to score")
    parser.add_argument("--curves", nargs="+", default=[], metavar="LABEL=RUN_DIR",
                        help=f"draw the held-out NLL per epoch of `export.default_bundle` runs ({CURVES_FIGURE.name})")
    args = parser.parse_args(argv)
    for bundle in args.bundles:
        print(json.dumps(evaluate(bundle)), flush=True)
    if args.curves:
        print(draw_curves({label: Path(run) for label, run in (item.split("=", 1) for item in args.curves)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
