"""Assemble a bundle directory (and optionally its ``.zip``) from a generator and its training facts."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import subprocess
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch

from export.onnx import convert_fp16, export_onnx
from export.options import DEFAULTS, ExportOptions
from export.torchscript import export_torchscript
from export.triton import write_triton_repository
from export.verify import verification_inputs, verify_exports
from ptycho_torch.bundle import (
    BAD_PIXELS_FILE,
    MANIFEST_FILE,
    NORMALIZATION_RULE,
    ONNX_FILE,
    PARAMS_FILE,
    PROBE_FILE,
    TORCHSCRIPT_FILE,
    Bundle,
    Manifest,
    Normalization,
    Provenance,
    TrainingRecord,
    load_bundle,
    sign_bundle,
    tensor_specs,
)
from ptycho_torch.checkpoint import CheckpointRecord, load_generator
from ptycho_torch.checksums import sha256_file
from ptycho_torch.config import ModelConfig
from ptycho_torch.data import scan_metadata
from ptycho_torch.errors import DataContractError, ExportError, InvalidInput
from ptycho_torch.model import ObjectGenerator
from ptycho_torch.pixel_size import check_pixel_size, scan_pixel_size
from ptycho_torch.run_layout import RunLayout
from ptycho_torch.scan_checks import bad_pixel_mask
from ptycho_torch.stitching import check_stitch_M, default_stitch_M

FP16_FILE = "model.fp16.onnx"


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _package_version() -> str:
    try:
        return importlib.metadata.version("ptychopinn-serve")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def export_bundle(generator: ObjectGenerator, out: Path, *, record: CheckpointRecord, probe: np.ndarray,
                  diffraction: np.ndarray, inputs_label: str, options: ExportOptions = DEFAULTS,
                  checkpoint: str | None = None, training: TrainingRecord | None = None) -> Bundle:
    """Write the bundle of design.md section 4 to ``out`` (a new or empty directory) and load it back.

    ``record``: the checkpoint's facts (configs, scales, training-data hash); ``diffraction``
    ``(B, C, N, N)`` are the real patterns the exported graphs are verified on. Returns the validated bundle.
    """
    config: ModelConfig = generator.config
    stitch_M = default_stitch_M(config.N) if options.stitch_M is None else options.stitch_M
    try:
        check_stitch_M(stitch_M, config.N, name="--stitch-m")  # before anything is written
    except InvalidInput as error:
        raise ExportError(str(error)) from None
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"`--out` must be a new or empty directory, got {out} with content; choose another path")
    out.mkdir(parents=True, exist_ok=True)
    inputs, outputs = tensor_specs(config.N, config.channels)
    onnx_path = export_onnx(generator, out / ONNX_FILE, opset=options.opset)
    ts_path = export_torchscript(generator, out / TORCHSCRIPT_FILE)
    fp16_path = convert_fp16(onnx_path, out / FP16_FILE) if options.fp16 else None
    verification = verify_exports(generator, diffraction, onnx_path=onnx_path, torchscript_path=ts_path,
                                  fp16_path=fp16_path, inputs_label=inputs_label, tolerance=options.tolerance,
                                  fp16_tolerance=options.fp16_tolerance)
    (out / PARAMS_FILE).write_text(json.dumps(record.params_snapshot(), indent=2, sort_keys=True) + "\n")
    np.save(out / PROBE_FILE, np.asarray(probe, dtype=np.complex64), allow_pickle=False)
    if options.bad_pixels is not None:
        np.save(out / BAD_PIXELS_FILE, _read_bad_pixels(options.bad_pixels, config.N), allow_pickle=False)
    write_triton_repository(out, onnx_path, options.name, options.version, inputs, outputs,
                            max_batch_size=options.max_batch_size)
    files = {p.relative_to(out).as_posix(): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = Manifest(
        name=options.name, version=options.version, N=config.N, gridsize=config.gridsize,
        channels=config.channels, opset=options.opset, inputs=inputs, outputs=outputs,
        normalization=Normalization(rule=NORMALIZATION_RULE, training_scale=record.training_scale),
        intensity_scale=record.intensity_scale,
        stitch_M=stitch_M, neighbor_count=record.training.neighbor_count,
        provenance=Provenance(
            package_version=_package_version(), torch_version=torch.__version__, onnx_version=onnx.__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), git_commit=_git_commit(),
            train_data_sha256=record.train_data_sha256 or None, checkpoint=checkpoint,
        ),
        verification=verification, files=files, variants={"fp16": FP16_FILE} if fp16_path else {},
        pixel_size_m=options.pixel_size_m,
        training=training,
    )
    (out / MANIFEST_FILE).write_text(manifest.to_json())
    if options.sign_key is not None:
        sign_bundle(out, options.sign_key)
    if options.zip:
        write_zip(out, out.with_suffix(".zip"))
    return load_bundle(out)


def _read_bad_pixels(path: Path, N: int) -> np.ndarray:
    """The mask in ``path`` as (N, N) bool; :class:`ExportError` naming the problem otherwise."""
    try:
        return bad_pixel_mask(np.load(path, allow_pickle=False), N)
    except (OSError, ValueError) as error:
        raise ExportError(f"`--bad-pixel-mask`: {path} must be a .npy ({N}, {N}) bool mask ({error})") from None


def write_zip(directory: Path, archive: Path) -> Path:
    """Zip a bundle directory with bundle-relative member names (manifest first)."""
    members = sorted((p for p in directory.rglob("*") if p.is_file()), key=lambda p: (p.name != MANIFEST_FILE, p))
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in members:
            zf.write(path, path.relative_to(directory).as_posix())
    return archive



def training_pixel_size(given: float | None, record: CheckpointRecord) -> float | None:
    """The pixel size to record: ``given`` (``--pixel-size-m``), else the training scan's (what the
    checkpoint recorded, or for older checkpoints the scan file's ``_metadata`` when it is at hand);
    raises :class:`ExportError` when both are known and disagree."""
    recorded, train_scan = record.pixel_size_m, record.training.train_data_file
    if recorded is None and train_scan is not None and Path(train_scan).is_file():
        recorded = scan_pixel_size(scan_metadata(train_scan))
    try:
        check_pixel_size(given, recorded, model=f"the training scan {Path(str(train_scan)).name}",
                         subject="the given pixel size")
    except DataContractError as error:
        raise ExportError(f"`--pixel-size-m`: {error}") from None
    return given if given is not None else recorded


def export_checkpoint(checkpoint: Path, out: Path, *, data: Path | None = None,
                      options: ExportOptions = DEFAULTS, held_out_nll: float | None = None) -> Bundle:
    """Export a Lightning checkpoint: load its generator, verify on ``data`` (default: the training
    scan recorded in the checkpoint) and write the bundle to ``out``. ``held_out_nll`` replaces the
    training record's held-out NLL (for runs validated outside Lightning, e.g. ``bench.curves``)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ExportError(f"`--checkpoint` must be an existing .ckpt file, got {checkpoint}; "
                          "point it at RUN/checkpoints/best.ckpt written by `ptychopinn train`")
    generator, record, probe = load_generator(checkpoint)
    train_scan = record.training.train_data_file
    options = dataclasses.replace(options, pixel_size_m=training_pixel_size(options.pixel_size_m, record))
    scan = data or train_scan
    if scan is None or not Path(scan).is_file():
        raise ExportError(f"verification needs real patterns: the training scan {scan!r} is not available; "
                          "pass --data SCAN.npz (a scan at the model's N)")
    config: ModelConfig = generator.config
    diffraction = verification_inputs(Path(scan), config.N, config.gridsize)
    label = f"{'the scan' if data else 'the training scan'} {Path(scan).name}"
    return export_bundle(generator, out, record=record, probe=probe, diffraction=diffraction,
                         inputs_label=label, options=options, checkpoint=str(checkpoint),
                         training=training_record(checkpoint, record, held_out_nll))


def training_record(checkpoint: Path, record: CheckpointRecord, held_out_nll: float | None = None
                    ) -> TrainingRecord | None:
    """The record of the run that wrote ``checkpoint`` (``RunLayout.of_checkpoint``): the checkpoint's
    recipe (:meth:`CheckpointRecord.recipe`, plus ``init_from``) and the run's :class:`RunSummary` (its
    validation loss, unless ``held_out_nll`` is given); None when that run left no summary (e.g. a
    checkpoint copied elsewhere)."""
    layout = RunLayout.of_checkpoint(checkpoint)
    summary = None if layout is None else layout.read_summary()
    if summary is None:
        return None
    recipe = {**record.recipe(), "init_from": None if summary.init_from is None else str(summary.init_from)}
    is_best = summary.best_checkpoint is not None and summary.best_checkpoint.name == Path(checkpoint).name
    nll = held_out_nll if held_out_nll is not None else summary.best_val_loss if is_best \
        else summary.final_metrics.get("val_loss")
    return TrainingRecord(recipe={k: v for k, v in recipe.items() if v is not None}, steps=summary.global_step,
                          wall_s=summary.wall_s, held_out_nll=None if nll is None else float(nll))
