"""``ptychopinn reconstruct``: stitched amplitude/phase of a scan, written as PNGs and an NPZ.

Two paths, one output format (:func:`ptycho_torch.outputs.save_outputs`):

* ``--model`` (a ``wts.h5.zip``, a run folder, a ``.ckpt`` or an MLflow ``runs:/`` URI) runs the
  network in-process with torch (:mod:`ptycho_torch.workflows.components`);
* ``--server URL`` sends the scan to a ``ptychopinn serve`` instance (numpy + HTTP only, no torch).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ptycho_torch.data import RawData

logger = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the reconstruct arguments."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model",
                        help="RUN/wts.h5.zip, a run folder, a Lightning .ckpt or an MLflow runs:/<id>/model URI")
    source.add_argument("--server", help="URL of a `ptychopinn serve` instance, e.g. http://127.0.0.1:8000")
    parser.add_argument("--data", required=True,
                        help="scan file: a contract NPZ, or the tike layout (e.g. siemens-star-small.npz.bz2)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs and reconstruction.npz")
    parser.add_argument("--n", type=int, default=None,
                        help="patch size N: tike-layout scans are cropped to it (e.g. 64); a contract NPZ must already be at N")
    parser.add_argument("--split", choices=("all", "train", "test"), default="all",
                        help="reconstruct the whole scan or one half of the spatial split along y "
                             "(train = top half, test = bottom half; default all)")
    parser.add_argument("--stitch-m", type=int, default=None,
                        help="central crop kept from each patch (default min(20, N/2))")
    parser.add_argument("--scale-policy", choices=("scan", "bundle"), default="scan",
                        help="input normalisation: 'scan' (from this scan's patterns, default) or 'bundle' "
                             "(the training value)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="patterns per inference batch, in-process path (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the neighbour draw at gridsize > 1 (default 0)")
    parser.add_argument("--token-file", type=Path, default=None, help="bearer token for --server (a file)")
    parser.add_argument("--timeout", type=float, default=300.0, help="HTTP timeout in seconds for --server")


def run(args: argparse.Namespace) -> int:
    """Reconstruct the scan and write the outputs; returns 0."""
    scan = _load_scan(args)
    if args.server:
        amplitude, phase, results = _reconstruct_remote(args, scan)
    else:
        amplitude, phase, results = _reconstruct_in_process(args, scan)

    from ptycho_torch.outputs import save_outputs

    paths = save_outputs(amplitude, phase, results, args.out)
    logger.info("reconstructed %d patterns of %s (%s) into a %dx%d object: %s", len(scan), args.data, args.split,
                *amplitude.shape, ", ".join(str(p) for p in paths.values()))
    return 0


def _load_scan(args: argparse.Namespace) -> RawData:
    from ptycho_torch.data import load_scan, spatial_split

    scan = load_scan(args.data, n=args.n)
    if args.split == "all":
        return scan
    train, test = spatial_split(scan, axis="y", fraction=0.5)
    return train if args.split == "train" else test


def _reconstruct_remote(args: argparse.Namespace, scan: RawData):
    import numpy as np

    from serving.cli import read_token_file
    from serving.client import Client

    token = read_token_file(args.token_file) if args.token_file is not None else None
    options = {"scale_policy": args.scale_policy, "stitch_M": args.stitch_m, "seed": args.seed}
    with Client(args.server, token=token, timeout_s=args.timeout) as client:
        result = client.reconstruct(scan.diff3d, np.column_stack([scan.xcoords, scan.ycoords]),
                                    probe=scan.probeGuess, options=options)
    logger.info("server timings (s): %s",
                ", ".join(f"{stage} {seconds:.3f}" for stage, seconds in result.timings.items()))
    return result.amplitude, result.phase, {"coverage": result.coverage, "origin": result.origin}


def _reconstruct_in_process(args: argparse.Namespace, scan: RawData):
    from ptycho_torch.config import ModelConfig
    from ptycho_torch.stitching import DEFAULT_M
    from ptycho_torch.workflows.components import group_for_inference, load_inference_bundle_torch, reassemble_torch

    generator, snapshot = load_inference_bundle_torch(args.model)
    model = ModelConfig(N=int(snapshot["N"]), gridsize=int(snapshot["gridsize"]))
    grouped = group_for_inference(scan, model, neighbor_count=int(snapshot.get("neighbor_count", 4)), seed=args.seed)
    scale = None if args.scale_policy == "scan" else float(snapshot["input_scale"])
    M = args.stitch_m if args.stitch_m is not None else min(DEFAULT_M, model.N // 2)
    return reassemble_torch(generator, grouped, M=M, scale=scale, batch_size=args.batch_size)
