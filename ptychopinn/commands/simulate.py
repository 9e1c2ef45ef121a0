"""``ptychopinn simulate``: write a simulated scan as a contract NPZ (see ptycho_torch.simulation)."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the simulate arguments."""
    parser.add_argument("--object", choices=("lines", "grf"), default="lines", help="synthetic object (default lines)")
    parser.add_argument("--n", type=int, default=64, help="pattern and probe size N in pixels (default 64)")
    parser.add_argument("--positions", type=int, default=2000, help="number of scan positions (default 2000)")
    parser.add_argument("--nphotons", type=float, default=1e6, help="mean photons per pattern (default 1e6)")
    parser.add_argument("--probe", default="default",
                        help="'default' (disk-like probe) or an NPZ with probeGuess/probe, e.g. "
                             "data/gold_balls_from_pickle.npz")
    parser.add_argument("--scan", choices=("random", "raster"), default="random", help="scan path (default random)")
    parser.add_argument("--object-size", type=int, default=None, help="object side in pixels (default 4*N)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--pixel-size-m", type=float, default=None,
                        help="object pixel size in metres to record in the scan's _metadata (a model trained on "
                             "it records it, and refuses scans at another pixel size); default: none")
    parser.add_argument("--out", required=True, help="output NPZ path")


def run(args: argparse.Namespace) -> int:
    """Simulate and write the scan; returns 0."""
    from ptycho_torch.pixel_size import METADATA_KEY, valid_pixel_size
    from ptycho_torch.simulation import simulate

    pixel_size_m = valid_pixel_size(args.pixel_size_m, what="`--pixel-size-m`")  # before the work
    raw = simulate(object_kind=args.object, N=args.n, n_positions=args.positions, nphotons=args.nphotons,
                   probe=args.probe, scan=args.scan, object_size=args.object_size, seed=args.seed)
    if pixel_size_m is not None:
        raw.metadata[METADATA_KEY] = pixel_size_m
    path = raw.to_file(args.out)
    counts = float((raw.diff3d.astype("float64") ** 2).sum(axis=(1, 2)).mean())
    logger.info("wrote %s: %d patterns %dx%d, object %s, mean %.4g photons per pattern",
                path, len(raw), raw.N, raw.N, None if raw.objectGuess is None else raw.objectGuess.shape, counts)
    return 0
