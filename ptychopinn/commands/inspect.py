"""``ptychopinn inspect``: summarise a scan file and draw a PNG overview.

Accepts contract NPZ scans and the tike layout of the shipped real scan (``.npz.bz2``). What a
path is gets decided in one place, :func:`_handler_for`; every kind of input has one handler.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptycho_torch.errors import DataContractError

Handler = Callable[[Path, argparse.Namespace], int]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the inspect arguments."""
    parser.add_argument("path", help="scan file (contract .npz, or the tike-layout .npz.bz2 real scan), "
                                     "or a bundle folder/.zip written by `ptychopinn export`")
    parser.add_argument("--png", default=None, help="write an overview figure to this PNG path")
    parser.add_argument("--n", type=int, default=None,
                        help="central detector crop for tike-layout scans (default: full detector)")


def run(args: argparse.Namespace) -> int:
    """Print the summary of ``args.path`` (and write ``--png``); returns 0."""
    path = Path(args.path)
    return _handler_for(path)(path, args)


def _handler_for(path: Path) -> Handler:
    """The single dispatch point: map a path to the handler for its kind."""
    if path.is_file() and (path.suffix == ".npz" or path.name.endswith(".npz.bz2")):
        return _inspect_scan
    if (path / "manifest.json").is_file() or (path.is_file() and path.suffix == ".zip"):
        return _inspect_bundle
    raise DataContractError(
        f"`path` must be an existing scan file (.npz or .npz.bz2) or bundle (folder or .zip), got {str(path)!r}; "
        "check the path or simulate one with `ptychopinn simulate --out scan.npz`"
    )


def _inspect_scan(path: Path, args: argparse.Namespace) -> int:
    from ptycho_torch.data import load_scan

    raw = load_scan(path, n=args.n, strict=False)
    print(format_summary(scan_summary(raw), title=str(path)))
    print(format_findings(raw.metadata["scan_report"]))
    if args.png:
        write_overview_png(raw, Path(args.png), title=path.name)
        print(f"overview: {args.png}")
    return 0


def _inspect_bundle(path: Path, args: argparse.Namespace) -> int:
    from ptycho_torch.bundle import load_bundle, summarize

    bundle = load_bundle(path)
    print(summarize(bundle))
    if args.png:
        write_bundle_png(bundle, Path(args.png))
        print(f"overview: {args.png}")
    return 0


def scan_summary(raw: Any) -> dict[str, Any]:
    """Return counts, shapes, value ranges, position extent and step, and probe facts of a scan."""
    import numpy as np
    from scipy.spatial import cKDTree

    from ptycho_torch.normalization import input_scale

    counts = np.einsum("shw,shw->s", raw.diff3d, raw.diff3d, dtype=np.float64)
    points = raw.positions
    step = np.zeros(1)  # a single position has no neighbour
    if len(raw) > 1:
        distances, _ = cKDTree(points).query(points, k=2)
        step = np.asarray(distances)[:, 1]
    probe = raw.probeGuess.reshape(-1, raw.N, raw.N)
    return {
        "patterns": f"{len(raw)} x {raw.N} x {raw.N} {raw.diff3d.dtype} amplitudes (sqrt counts, fftshifted)",
        "amplitude range": f"{raw.diff3d.min():.4g} .. {raw.diff3d.max():.4g}",
        "counts per pattern": f"mean {counts.mean():.4g}, min {counts.min():.4g}, max {counts.max():.4g}",
        "zero pixels": f"{np.count_nonzero(raw.diff3d == 0) / raw.diff3d.size:.1%}",
        "input_scale": f"{input_scale(raw.diff3d):.6g}",
        "x (column) range": f"{raw.xcoords.min():.2f} .. {raw.xcoords.max():.2f} px (patch centres)",
        "y (row) range": f"{raw.ycoords.min():.2f} .. {raw.ycoords.max():.2f} px",
        "nearest-neighbour step": f"median {np.median(step):.3g} px, min {step.min():.3g}, max {step.max():.3g}",
        "probe": f"{probe.shape[0]} mode(s) x {raw.N} x {raw.N} complex64, "
                 f"energy {np.sum(np.abs(probe) ** 2):.4g}, peak |P| {np.abs(probe).max():.4g}",
        "objectGuess": "none" if raw.objectGuess is None else f"{raw.objectGuess.shape[0]} x {raw.objectGuess.shape[1]}",
        "scan ids": ", ".join(str(i) for i in np.unique(raw.scan_index)[:10]),
        "metadata": ", ".join(f"{k}={v}" for k, v in raw.metadata.items() if k != "scan_report") or "none",
    }


def format_findings(report: dict[str, Any]) -> str:
    """Render the scan checks' findings (a :class:`~ptycho_torch.scan_checks.ScanReport` as JSON):
    why reconstruct/train would refuse the scan, then the warnings."""
    refusals, warnings = report.get("refusals", []), report["warnings"]
    lines = ["scan checks: " + ("REFUSED by reconstruct/train" if refusals else
                                f"pass ({len(warnings)} warning(s))")]
    lines += [f"  refused: {message}" for message in refusals]
    lines += [f"  warning: {message}" for message in warnings]
    return "\n".join(lines)


def format_summary(summary: dict[str, Any], *, title: str) -> str:
    """Render a summary as aligned ``key: value`` lines under ``title``."""
    width = max(len(key) for key in summary)
    return "\n".join([title, *(f"  {key.ljust(width)} : {value}" for key, value in summary.items())])


def write_bundle_png(bundle: Any, path: Path) -> Path:
    """Draw a bundle's training probe (amplitude of all modes, phase of mode 0) and its measured
    export errors per engine against the tolerance (log scale) to PNG."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    m = bundle.manifest
    probe = bundle.probe
    fig = Figure(figsize=(13.5, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    fig.colorbar(axes[0].imshow(np.sqrt((np.abs(probe) ** 2).sum(axis=0)), cmap="gray"), ax=axes[0], shrink=0.8,
                 label="|P|")
    axes[0].set_title(f"training probe amplitude ({probe.shape[0]} mode(s))")
    fig.colorbar(axes[1].imshow(np.angle(probe[0]), cmap="twilight", vmin=-np.pi, vmax=np.pi), ax=axes[1],
                 shrink=0.8, label="phase [rad]")
    axes[1].set_title("probe phase (mode 0)")
    engines = sorted(m.verification.errors)
    worst = [max(m.verification.errors[e].amplitude, m.verification.errors[e].phase, 1e-12) for e in engines]
    axes[2].barh(engines, worst, color="tab:blue")
    axes[2].axvline(m.verification.tolerance, color="tab:red", linestyle="--", label=f"tolerance {m.verification.tolerance:g}")
    axes[2].set(xscale="log", xlabel="max |difference| to torch eager (0 drawn at 1e-12)",
                title=f"export parity on {m.verification.n_samples} samples")
    axes[2].legend(loc="lower right")
    pixel = "unknown" if bundle.pixel_size_m is None else f"{bundle.pixel_size_m:.4g} m"
    fig.suptitle(f"{m.name} v{m.version}: N={m.N}, gridsize={m.gridsize}, training scale "
                 f"{m.normalization.training_scale:.4g}, object pixel {pixel}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path


def write_overview_png(raw: Any, path: Path, *, title: str = "") -> Path:
    """Draw mean pattern (log scale), scan positions, probe amplitude/phase (and the object) to PNG."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    mean_counts = np.mean(np.square(raw.diff3d, dtype=np.float64), axis=0)
    probe = raw.probeGuess.reshape(-1, raw.N, raw.N)
    panels = 5 if raw.objectGuess is not None else 4
    fig = Figure(figsize=(4.2 * panels, 4.2), layout="constrained")
    axes = fig.subplots(1, panels)
    positive = mean_counts[mean_counts > 0]
    vmin = positive.min() if positive.size else 1e-12
    image = axes[0].imshow(np.maximum(mean_counts, vmin), norm=LogNorm(vmin=vmin), cmap="magma")
    axes[0].set_title("mean pattern (counts, log)")
    fig.colorbar(image, ax=axes[0], shrink=0.8)
    axes[1].scatter(raw.xcoords, raw.ycoords, s=4, c=np.arange(len(raw)), cmap="viridis")
    axes[1].set_aspect("equal")
    axes[1].invert_yaxis()
    axes[1].set(title=f"{len(raw)} positions (x=col, y=row)", xlabel="x [px]", ylabel="y [px]")
    fig.colorbar(axes[2].imshow(np.sqrt((np.abs(probe) ** 2).sum(axis=0)), cmap="gray"), ax=axes[2], shrink=0.8)
    axes[2].set_title(f"probe amplitude ({probe.shape[0]} mode(s))")
    fig.colorbar(axes[3].imshow(np.angle(probe[0]), cmap="twilight", vmin=-np.pi, vmax=np.pi), ax=axes[3], shrink=0.8)
    axes[3].set_title("probe phase (mode 0)")
    if raw.objectGuess is not None:
        fig.colorbar(axes[4].imshow(np.abs(raw.objectGuess), cmap="gray"), ax=axes[4], shrink=0.8)
        axes[4].set_title("objectGuess amplitude")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path
