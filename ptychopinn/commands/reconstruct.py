"""``ptychopinn reconstruct``: the stitched object of a scan, written as the files of
:mod:`ptycho_torch.outputs` (PNGs with colour and scale bars, TIFFs, NPZ, CXI/HDF5).

One path for every place the network can run: load the scan, take the source's runner
(:func:`ptychopinn.runners.runner_for`), build the :class:`~ptycho_torch.plan.ReconstructOptions`
once from the flags, run :func:`ptycho_torch.pipeline.reconstruct`, log the timings and the data
fit, write the products. The sources:

* ``--model BUNDLE`` (a folder or ``.zip`` written by ``ptychopinn export``) runs the bundle's ONNX
  graph in this process with onnxruntime: no server, no torch;
* ``--model`` a run folder, a Lightning ``.ckpt``, a ``wts.h5.zip`` or an MLflow ``runs:/`` URI runs
  the generator with torch in this process (its training probe included; no Lightning);
* ``--server URL`` runs the network on a ``ptychopinn serve`` instance: grouping and stitching run
  here, and the scan goes out as Open Inference Protocol requests of at most ``--chunk-size``
  groups (with a progress bar), so a scan of any size stays under the server's request limit.

``--refine N`` adds N iterations of refinement against the measured patterns after the network,
with the scan's probe (in this process, whatever the source, on ``$PTYCHOPINN_REFINE_BACKEND``, checked
before the model loads); ``--refine auto`` refines until the data fit stops improving, and
``--refine-time-limit SECONDS`` (300 unless given) bounds either. ``--refine-probe`` refines the probe
with the object and ``--refine-positions`` corrects the scan positions; the products then carry the refined probe
and positions (NPZ ``probe``/``positions``, CXI ``image_2`` and ``positions_px``). Why the
refinement stopped and the data fit of the result (per-pattern Poisson NLL, R-factor, outliers) are
logged and kept in the CXI.

A scan whose ``_metadata`` records ``pixel_size_m`` is checked against the model's training pixel
size (:mod:`ptycho_torch.pixel_size`), and the products carry the pixel size.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ptycho_torch.choices import NAMED_SCALE_POLICIES, RefineAlgorithm, RefineStart, values
from ptychopinn.runners import LoadedRunner, RunnerSettings, runner_for

if TYPE_CHECKING:
    from ptycho_torch.data import RawData
    from ptycho_torch.outputs import ProductInfo
    from ptycho_torch.pipeline import Reconstruction
    from ptycho_torch.plan import ReconstructOptions, RefineIterations

logger = logging.getLogger(__name__)


def refine_iterations(text: str) -> RefineIterations:
    """``--refine``'s value: a whole number of iterations, or ``auto`` (the options check the range)."""
    from ptycho_torch.refinement import AUTO

    if text.strip().casefold() == AUTO:
        return AUTO
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if number.is_integer():  # 3 and 3.0 alike
        return int(number)
    raise argparse.ArgumentTypeError(f"must be a whole number of iterations or {AUTO!r} (until the data fit "
                                     f"stops improving), got {text!r}")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the reconstruct arguments."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model",
                        help="an exported bundle (folder or .zip: onnxruntime in this process, no server), or "
                             "RUN/wts.h5.zip, a run folder, a Lightning .ckpt or an MLflow runs:/<id>/model URI (torch)")
    source.add_argument("--server", help="URL of a `ptychopinn serve` instance, e.g. http://127.0.0.1:8000")
    parser.add_argument("--data", required=True,
                        help="scan file: a contract NPZ, or the tike layout (e.g. siemens-star-small.npz.bz2)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs, TIFFs, reconstruction.npz and .cxi")
    parser.add_argument("--n", type=int, default=None,
                        help="patch size N: tike-layout scans are cropped to it (e.g. 64); a contract NPZ must already be at N")
    parser.add_argument("--split", choices=("all", "train", "test"), default="all",
                        help="reconstruct the whole scan or one half of the spatial split along y "
                             "(train = top half, test = bottom half; default all)")
    parser.add_argument("--stitch-m", type=int, default=None,
                        help="central crop kept from each patch (default: the model's, min(20, N/2))")
    parser.add_argument("--scale-policy", choices=NAMED_SCALE_POLICIES, default=None,
                        help="input normalisation: 'scan' (from this scan's patterns) or 'bundle' (the training "
                             "value); default: the model's own (a bundle's manifest says which, usually scan)")
    parser.add_argument("--batch-size", type=int, default=RunnerSettings.batch_size,
                        help=f"groups per inference batch in this process (--model; default {RunnerSettings.batch_size})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the neighbour draw at gridsize > 1 (default 0)")
    parser.add_argument("--server-model", default=RunnerSettings.server_model,
                        help=f"model name on --server (default {RunnerSettings.server_model}; `ptychopinn serve` logs it)")
    parser.add_argument("--chunk-size", type=int, default=RunnerSettings.chunk_size,
                        help=f"groups per request to --server (default {RunnerSettings.chunk_size}: 4 MiB at N=64)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar for --server")
    parser.add_argument("--refine", type=refine_iterations, default=0, metavar="N|auto",
                        help="N iterations of refinement against the measured patterns after the network, with the "
                             "scan's probe, or 'auto': until the data fit stops improving (default 0: the network's "
                             "result as it is)")
    parser.add_argument("--refine-algorithm", choices=values(RefineAlgorithm), default=None,
                        help="refinement update: 'er' (whole scan at once), 'rpie' (mini-batches) or 'mpie' (rPIE "
                             "with momentum); default: er for the object alone, rpie with --refine-probe or "
                             "--refine-positions")
    parser.add_argument("--refine-start", choices=values(RefineStart), default=RefineStart.NETWORK.value,
                        help="refine the network's object (default) or start from a flat object without the network")
    parser.add_argument("--refine-probe", action="store_true",
                        help="refine the probe with the object (needs --refine); the products carry the refined probe")
    parser.add_argument("--refine-positions", action="store_true",
                        help="correct the scan positions with the object (needs --refine); the products carry them")
    parser.add_argument("--refine-time-limit", type=float, default=None, metavar="SECONDS",
                        help="stop refining after the iteration that passes this many seconds (needs --refine; "
                             "default 300); the log says when it stopped for time")
    parser.add_argument("--token-file", type=Path, default=None, help="bearer token for --server (a file)")
    parser.add_argument("--timeout", type=float, default=RunnerSettings.timeout_s,
                        help="HTTP timeout in seconds for --server")


def run(args: argparse.Namespace) -> int:
    """Reconstruct the scan and write the outputs; returns 0."""
    from ptycho_torch.outputs import save_outputs
    from ptycho_torch.pipeline import reconstruct
    from ptycho_torch.pixel_size import scan_pixel_size

    if args.refine != 0:  # where refinements run is this host's setting: checked before the model loads
        from serving.cli import require_refine_backend

        require_refine_backend(None)
    scan = _load_scan(args)
    options = _options(args, scan_pixel_size(scan.metadata))
    with runner_for(args.server or args.model, server=bool(args.server), settings=_settings(args)) as loaded:
        _require_patch_size(args, scan, loaded.runner.model.N)
        logger.info("running %s", loaded.description)
        result = reconstruct(loaded.runner, scan.diff3d, scan.positions, probe=scan.probeGuess, options=options)
    logger.info("timings (s): %s", ", ".join(f"{stage} {seconds:.3f}" for stage, seconds in result.timings.items()))
    _log_refinement(result)
    _log_data_fit(result)
    stitch = {"coverage": result.coverage, "origin": result.origin}
    paths = save_outputs(result.amplitude, result.phase, stitch, args.out,
                         info=_product_info(args, scan, loaded, result))
    logger.info("reconstructed %d patterns of %s (%s) into a %dx%d object: %s", len(scan), args.data, args.split,
                *result.amplitude.shape, ", ".join(str(p) for p in paths.values()))
    return 0


def _load_scan(args: argparse.Namespace) -> RawData:
    from ptycho_torch.data import load_scan, spatial_split

    scan = load_scan(args.data, n=args.n)
    if args.split == "all":
        return scan
    train, test = spatial_split(scan, axis="y", fraction=0.5)
    return train if args.split == "train" else test


def _settings(args: argparse.Namespace) -> RunnerSettings:
    from serving.cli import read_token_file

    return RunnerSettings(batch_size=args.batch_size, server_model=args.server_model, chunk_size=args.chunk_size,
                          progress=not args.no_progress, timeout_s=args.timeout,
                          token=None if args.token_file is None else read_token_file(args.token_file))


def _options(args: argparse.Namespace, pixel_size_m: float | None) -> ReconstructOptions:
    from ptycho_torch.plan import ReconstructOptions

    time_limit = {} if args.refine_time_limit is None else {"refine_time_limit_s": args.refine_time_limit}
    return ReconstructOptions(scale_policy=args.scale_policy, stitch_M=args.stitch_m, seed=args.seed,
                              pixel_size_m=pixel_size_m, refine_iterations=args.refine,
                              refine_algorithm=args.refine_algorithm, refine_start=args.refine_start,
                              refine_probe=args.refine_probe, refine_positions=args.refine_positions, **time_limit)


def _log_refinement(result: Reconstruction) -> None:
    from ptycho_torch.pipeline import describe_refinement

    if result.refinement is None:
        return
    logger.info("%s", describe_refinement(result.refinement))
    for warning in result.refinement["warnings"]:
        logger.warning("%s", warning)


def _log_data_fit(result: Reconstruction) -> None:
    fit = result.data_fit
    if fit is None:
        return
    logger.info("data fit: Poisson NLL per pixel median %.4g (p95 %.4g), R-factor median %.3f (p95 %.3f), "
                "%d outlier patterns%s", fit["nll_median"], fit["nll_p95"], fit["r_factor_median"], fit["r_factor_p95"],
                fit["n_outliers"], f" {fit['outliers'][:20]}" if fit["outliers"] else "")


def _product_info(args: argparse.Namespace, scan: RawData, loaded: LoadedRunner,
                  result: Reconstruction) -> ProductInfo:
    from ptycho_torch.outputs import ProductInfo

    extra = {"scale": result.scale, "scale_policy": result.scale_policy,
             "refine_iterations": (result.refinement or {}).get("iterations", 0),  # done
             "refine_iterations_requested": args.refine}  # a number, or "auto"
    return ProductInfo(pixel_size_m=result.pixel_size_m,
                       probe=scan.probeGuess if result.probe is None else result.probe,
                       positions=scan.positions if result.positions is None else result.positions,
                       model=loaded.label, model_version=loaded.runner.model.version, source=str(args.data),
                       extra=extra, data_fit=result.data_fit, refinement=result.refinement)


def _require_patch_size(args: argparse.Namespace, scan: RawData, N: int) -> None:
    """Refuse a scan whose patterns are not the model's ``N x N``, naming the flag that fixes it."""
    from ptycho_torch.errors import ConfigError

    if scan.N == N:
        return
    fix = (f"add `--n {N}` to crop the central {N}x{N} of its detector" if "detector_crop" in scan.metadata else
           f"simulate or crop it at N={N} (`--n` crops only tike-layout scans)")
    raise ConfigError(f"`--data` {args.data} has {scan.N}x{scan.N} patterns but the model takes N={N}: {fix}, "
                      f"or use a model trained at N={scan.N}")
