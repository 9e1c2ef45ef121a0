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
        rec = client.reconstruct(test.diff3d, np.column_stack([test.xcoords, test.ycoords]), probe=test.probeGuess)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.default_model", description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for bundle in args.bundles:
        print(json.dumps(evaluate(bundle)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
