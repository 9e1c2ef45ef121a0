"""``ptychopinn corpus``: simulate a sharded training corpus through a probe (ptycho_torch.corpus)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the corpus arguments."""
    parser.add_argument("--out", required=True, help="corpus folder to write")
    parser.add_argument("--probe", default="default",
                        help="'default' or an NPZ with probeGuess/probe (the instrument's probe), e.g. "
                             "data/gold_balls_from_pickle.npz")
    parser.add_argument("--n", type=int, default=64, help="pattern and probe size N in pixels (default 64)")
    parser.add_argument("--scans", type=int, default=128, help="scans to simulate, one object each (default 128)")
    parser.add_argument("--positions", type=int, default=256, help="random positions per scan (default 256)")
    parser.add_argument("--doses", type=float, nargs="+", default=[1e5, 1e6, 1e7],
                        help="photons per pattern, one drawn per scan (default 1e5 1e6 1e7)")
    parser.add_argument("--objects", nargs="+", default=["lines", "grf"], choices=("gold", "lines", "grf"),
                        help="object kinds, cycled over the scans (default lines grf; gold needs --gold-source)")
    parser.add_argument("--gold-source", help="NPZ whose objectGuess/obj the 'gold' objects are cropped from")
    parser.add_argument("--gold-rows", help="only these rows of the source, START:STOP (keep held-out regions out)")
    parser.add_argument("--object-size", type=int, default=None, help="object side in pixels (default 2*N)")
    parser.add_argument("--scans-per-shard", type=int, default=16, help="scans per shard file set (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _gold_source(path: str | None, rows: str | None) -> np.ndarray | None:
    import numpy as np

    from ptycho_torch.errors import DataContractError

    if path is None:
        return None
    with np.load(path, allow_pickle=False) as npz:
        key = next((k for k in ("objectGuess", "obj") if k in npz.files), None)
        if key is None:
            raise DataContractError(f"`gold_source` {path} must hold objectGuess or obj, got keys {npz.files}")
        source = npz[key]
    if rows:
        start, _, stop = rows.partition(":")
        source = source[int(start or 0):int(stop) if stop else None]
    return source


def run(args: argparse.Namespace) -> int:
    """Write the corpus; returns 0."""
    from ptycho_torch.corpus import write_corpus
    from ptycho_torch.simulation import default_probe, load_probe

    probe = default_probe(args.n) if args.probe == "default" else load_probe(args.probe, args.n)
    corpus = write_corpus(args.out, probe=probe, probe_origin=str(args.probe), scans=args.scans,
                          positions_per_scan=args.positions, doses=args.doses, objects=args.objects,
                          gold_source=_gold_source(args.gold_source, args.gold_rows), object_size=args.object_size,
                          scans_per_shard=args.scans_per_shard, seed=args.seed)
    logger.info("wrote %s: %d patterns %dx%d in %d shards", corpus.root, corpus.patterns, corpus.N, corpus.N,
                len(corpus.shards))
    return 0
