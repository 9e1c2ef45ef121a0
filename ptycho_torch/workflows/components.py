"""Workflow entry points with the names and returns of PtychoPINN's TensorFlow ones (hoidn/PtychoPINN).

Scripts, notebooks and Ptychodus-style integrations written against
``ptycho.workflows.components`` switch to this backend by changing the import:

* :func:`train_cdi_model_torch` -- train with Lightning (``training.trainer.train``), return ``results``;
* :func:`reassemble_torch` -- predict every patch of a grouped scan and stitch it (numpy stitcher);
* :func:`run_cdi_example_torch` -- both, save ``wts.h5.zip``, optionally track the run with MLflow;
* :func:`load_inference_bundle_torch` -- the generator from a checkpoint, a ``wts.h5.zip`` or ``runs:/``;
* :func:`save_outputs` -- amplitude/phase PNGs and an NPZ.

Every entry point calls ``update_legacy_dict(params.cfg, config)`` first, as PtychoPINN's do.
Unlike PtychoPINN's torch helper, gridsize > 1 patches are not averaged into one per group: each
channel's patch is stitched at its own scan position.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from ptycho_torch import params
from ptycho_torch.checkpoint import load_generator
from ptycho_torch.config import (
    ModelConfig,
    PyTorchExecutionConfig,
    TrainingConfig,
    dataclass_to_legacy_dict,
    update_legacy_dict,
)
from ptycho_torch.data import RawData
from ptycho_torch.errors import DataContractError, ModelArchiveError
from ptycho_torch.group_merge import merge_groups
from ptycho_torch.grouping import GroupedScan
from ptycho_torch.mlflow_store import download_model, is_mlflow_uri, log_training_run, model_uri
from ptycho_torch.model import ObjectGenerator
from ptycho_torch.model_manager import DEFAULT_MODEL, TorchModelManager
from ptycho_torch.outputs import save_outputs
from ptycho_torch.run_layout import ARCHIVE_NAME, RunLayout
from ptycho_torch.stitching import DEFAULT_M, StitchResult, complex_patches, stitch_patches
from ptycho_torch.torch_runner import TorchRunner

__all__ = [
    "group_for_inference",
    "load_inference_bundle_torch",
    "predict_patches",
    "reassemble_torch",
    "run_cdi_example_torch",
    "save_outputs",
    "train_cdi_model_torch",
]

logger = logging.getLogger(__name__)

class _History(L.Callback):
    """Per-epoch scalar metrics as a Keras-style ``history`` (dict of lists)."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = {k.removesuffix("_epoch"): float(v) for k, v in trainer.callback_metrics.items()
                 if v.numel() == 1 and not k.endswith("_step")}
        for name, value in epoch.items():
            self.history.setdefault(name, []).append(value)


def group_for_inference(data: RawData, model: ModelConfig, *, neighbor_count: int, seed: int) -> GroupedScan:
    """Group ``data`` with every position as a group seed (so the whole scan is stitched)."""
    return data.generate_grouped_data(model.N, K=neighbor_count, n_groups=None, gridsize=model.gridsize, seed=seed)


def train_cdi_model_torch(
    train_data: RawData,
    test_data: RawData | None,
    config: TrainingConfig,
    execution_config: PyTorchExecutionConfig | None = None,
) -> dict[str, Any]:
    """Train PtychoPINN on ``train_data`` (validating on ``test_data``) into ``config.output_dir``.

    Returns ``history`` (dict of per-epoch lists; ``loss`` aliases ``train_loss``), ``history_epochs``,
    ``checkpoint`` (best checkpoint path, else the last), ``last_checkpoint``, ``backend='pytorch'``,
    ``intensity_scale``, ``input_scale`` (training normalisation), ``models``
    (``{'diffraction_to_obj': generator}``), ``train_container`` and ``test_container``
    (:class:`~ptycho_torch.grouping.GroupedScan`, every position a group seed; ``None`` without test data) and
    ``summary`` (the run's :class:`~ptycho_torch.run_layout.RunSummary`).
    """
    from training.datamodule import group_scan
    from training.trainer import train

    update_legacy_dict(params.cfg, config)
    execution = execution_config or PyTorchExecutionConfig()
    history = _History()
    run = train(config, execution, train_data=train_data, test_data=test_data, callbacks=[history])
    if "train_loss" in history.history:
        history.history["loss"] = history.history["train_loss"]
    checkpoint = run.best_checkpoint or run.last_checkpoint
    generator = run.module.generator.eval()
    assert config.neighbor_count is not None  # resolved by TrainingConfig.__post_init__
    return {
        "history": history.history,
        "history_epochs": list(range(1, len(next(iter(history.history.values()), [])) + 1)),
        "checkpoint": checkpoint,
        "last_checkpoint": run.last_checkpoint,
        "backend": "pytorch",
        "intensity_scale": float(run.module.intensity_scale),
        "input_scale": float(run.module.hparams["input_scale"]),
        "models": {DEFAULT_MODEL: generator},
        "train_container": group_scan(train_data, config, seed=execution.seed),
        "test_container": None if test_data is None else group_for_inference(
            test_data, config.model, neighbor_count=config.neighbor_count, seed=execution.seed),
        "summary": run.summary,
    }


def predict_patches(
    model: ObjectGenerator, diffraction: np.ndarray, scale: float, *, batch_size: int = 64
) -> np.ndarray:
    """Complex object patches ``(B, C, N, N)`` for raw amplitudes ``diffraction`` ``(B, C, N, N)``
    (batched by the :class:`~ptycho_torch.torch_runner.TorchRunner` every torch path uses)."""
    runner = TorchRunner(model, training_scale=scale, batch_size=batch_size)
    return complex_patches(*runner.infer(diffraction, np.full(len(diffraction), scale, np.float32)))


def reassemble_torch(
    model: ObjectGenerator,
    test_container: GroupedScan,
    *,
    flip_x: bool = False,
    flip_y: bool = False,
    transpose: bool = False,
    M: int = DEFAULT_M,
    coord_scale: float = 1.0,
    scale: float | None = None,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Predict every patch of a grouped scan and stitch them: ``(recon_amp, recon_phase, results)``
    (a grouped model's patches merged per group first, :func:`~ptycho_torch.group_merge.merge_groups`).

    ``test_container`` is a grouped scan (``RawData.generate_grouped_data``). ``scale`` is the input
    normalisation fed to the network (default: the container's own ``input_scale``, i.e. the scan
    policy). ``flip_x``/``flip_y`` negate x/y positions, ``transpose`` swaps each patch's axes,
    ``coord_scale`` scales positions. ``results``: ``obj_tensor_full`` (K, N, N) complex patches,
    ``global_offsets`` (K, 2) ``[x, y]``, ``recon_amp``, ``recon_phase``, ``stitched``
    (:class:`~ptycho_torch.stitching.StitchResult`).
    """
    diffraction = test_container.channels_first
    scale = float(test_container.input_scale if scale is None else scale)
    patches = predict_patches(model, diffraction, scale, batch_size=batch_size)
    if patches.shape[1] > 1:  # a grouped model's output is its merged groups, as in pipeline.infer_patches
        patches = merge_groups(patches, test_container.coords_relative[:, 0].transpose(0, 2, 1))
    N = patches.shape[-1]
    patches = patches.reshape(-1, N, N)
    if transpose:
        patches = patches.transpose(0, 2, 1)
    positions = test_container.member_positions * coord_scale  # (B*C, 2)
    positions = positions * np.array([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0])
    stitched: StitchResult = stitch_patches(patches, positions, M=M)
    amplitude, phase = stitched.amplitude, stitched.phase
    return amplitude, phase, {
        "obj_tensor_full": patches,
        "global_offsets": positions,
        "recon_amp": amplitude,
        "recon_phase": phase,
        "stitched": stitched,
    }


def run_cdi_example_torch(
    train_data: RawData,
    test_data: RawData | None,
    config: TrainingConfig,
    flip_x: bool = False,
    flip_y: bool = False,
    transpose: bool = False,
    M: int = DEFAULT_M,
    do_stitching: bool = False,
    execution_config: PyTorchExecutionConfig | None = None,
    *,
    enable_mlflow: bool = False,
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """Train, save ``config.output_dir/wts.h5.zip``, and (``do_stitching``) reconstruct ``test_data``.

    Returns ``(amplitude, phase, results)``; amplitude and phase are None unless stitching ran.
    ``results`` holds everything of :func:`train_cdi_model_torch`, ``archive`` (the saved
    ``wts.h5.zip``), and after stitching the keys of :func:`reassemble_torch`. With
    ``enable_mlflow`` the run is tracked in the local file store ``output_dir/mlruns`` (params,
    per-epoch history, the archive under ``model/``) and ``results['run_id']`` and
    ``results['model_uri']`` (``runs:/<id>/model``) are set.
    """
    update_legacy_dict(params.cfg, config)
    if do_stitching and test_data is None:
        raise DataContractError("`test_data` must be given when do_stitching=True, got None; pass a test scan "
                                "or do_stitching=False")
    results = train_cdi_model_torch(train_data, test_data, config, execution_config)
    results["archive"] = TorchModelManager.save(results["checkpoint"], config.output_dir)
    amplitude = phase = None
    if do_stitching:
        amplitude, phase, reassembly = reassemble_torch(
            results["models"][DEFAULT_MODEL], results["test_container"],
            flip_x=flip_x, flip_y=flip_y, transpose=transpose, M=M,
        )
        results.update(reassembly)
    if enable_mlflow:
        metrics = {**results["history"], **{name: [float(results[name])] for name in ("intensity_scale", "input_scale")}}
        results["run_id"] = log_training_run(config.output_dir, dataclass_to_legacy_dict(config), metrics,
                                             results["archive"])
        results["model_uri"] = model_uri(results["run_id"])
    return amplitude, phase, results


def load_inference_bundle_torch(
    model_dir: str | Path,
    model_name: str = DEFAULT_MODEL,
    *,
    tracking_uri: str | None = None,
) -> tuple[ObjectGenerator, dict[str, Any]]:
    """The generator (eval mode, CPU) and the ``params.cfg`` snapshot it was trained with.

    ``model_dir``: a run folder holding ``wts.h5.zip`` (or ``checkpoints/best.ckpt``), a
    ``wts.h5.zip``, a Lightning ``.ckpt``, or an MLflow ``runs:/<run_id>/model`` URI (resolved with
    ``tracking_uri``, default MLflow's own setting). ``params.cfg`` is updated from the snapshot,
    as PtychoPINN's loader does.
    """
    if is_mlflow_uri(model_dir):
        with tempfile.TemporaryDirectory(prefix="ptychopinn-mlflow-") as tmp:
            return load_inference_bundle_torch(download_model(str(model_dir), tmp, tracking_uri=tracking_uri),
                                               model_name)
    path = Path(model_dir)
    if path.is_dir():
        model_file = RunLayout(path).model_file()
        if model_file is not None:
            return load_inference_bundle_torch(model_file, model_name)
        raise ModelArchiveError(
            f"`model_dir` {str(path)!r} holds neither {ARCHIVE_NAME} nor checkpoints/best.ckpt or last.ckpt; "
            "pass a run folder written by `ptychopinn train`, a wts.h5.zip or a .ckpt"
        )
    if path.suffix == ".ckpt":
        generator, record, _ = load_generator(path)
        snapshot = record.params_snapshot()
        params.cfg.update(snapshot)
        return generator, snapshot
    loaded = TorchModelManager.load(path, model_name)
    return loaded.generator, dict(loaded.params)
