"""``ptychopinn reconstruct``: stitched amplitude/phase of a scan, written as PNGs and an NPZ.

In-process path: ``--model`` (a ``wts.h5.zip``, a run folder, a ``.ckpt`` or an MLflow ``runs:/``
URI) is run with torch (:mod:`ptycho_torch.workflows.components`). A remote path (``--server URL``,
numpy + HTTP only) plugs in beside it: add its arguments in :func:`configure` and route to it at
the top of :func:`run`.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the reconstruct arguments."""
    parser.add_argument("--model", required=True,
                        help="RUN/wts.h5.zip, a run folder, a Lightning .ckpt or an MLflow runs:/<id>/model URI")
    parser.add_argument("--data", required=True, help="scan NPZ (contract layout: diffraction, xcoords, ycoords, ...)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs and reconstruction.npz")
    parser.add_argument("--stitch-m", type=int, default=None,
                        help="central crop kept from each patch (default min(20, N/2))")
    parser.add_argument("--scale-policy", choices=("scan", "bundle"), default="scan",
                        help="input normalisation: 'scan' (from this scan's patterns, default) or 'bundle' "
                             "(the training value)")
    parser.add_argument("--batch-size", type=int, default=64, help="patterns per inference batch (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the neighbour draw at gridsize > 1 (default 0)")


def run(args: argparse.Namespace) -> int:
    """Reconstruct the scan and write the outputs; returns 0."""
    return _run_in_process(args)


def _run_in_process(args: argparse.Namespace) -> int:
    from ptycho_torch.config import ModelConfig
    from ptycho_torch.data import RawData
    from ptycho_torch.stitching import DEFAULT_M
    from ptycho_torch.workflows.components import load_inference_bundle_torch, reassemble_torch, save_outputs

    generator, snapshot = load_inference_bundle_torch(args.model)
    model = ModelConfig(N=int(snapshot["N"]), gridsize=int(snapshot["gridsize"]))
    scan = RawData.from_file(args.data)
    grouped = scan.generate_grouped_data(model.N, K=int(snapshot.get("neighbor_count", 4)), n_groups=None,
                                         gridsize=model.gridsize, seed=args.seed)
    scale = None if args.scale_policy == "scan" else float(snapshot["input_scale"])
    M = args.stitch_m if args.stitch_m is not None else min(DEFAULT_M, model.N // 2)
    amplitude, phase, results = reassemble_torch(generator, grouped, M=M, scale=scale, batch_size=args.batch_size)
    paths = save_outputs(amplitude, phase, results, args.out)
    logger.info("reconstructed %d patterns of %s into a %dx%d object: %s", len(scan), args.data,
                *amplitude.shape, ", ".join(str(p) for p in paths.values()))
    return 0
