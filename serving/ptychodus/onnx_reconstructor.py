"""``PtychoPINN-Serve`` > ``ONNX``: run a bundle in-process with onnxruntime (no torch, no server).

Trainable in Ptychodus' sense: the model file is the bundle ``.zip`` (Load/Save Model, and
``model.zip`` in a ``ptychodus -b`` input directory is loaded automatically), Export Training Data
writes the project's NPZ contract, and Train runs ``ptychopinn train`` + ``ptychopinn export`` in
subprocesses (torch stays out of this process; progress is streamed, Stop ends the run) and then
loads the new bundle. Errors are also logged, so they appear in Ptychodus' log panel.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ptychodus.api.product import LossValue
from ptychodus.api.reconstruct import ReconstructInput, ReconstructOutput, TrainableReconstructor, TrainOutput

from ptycho_torch.bundle import Bundle, load_bundle
from ptycho_torch.choices import RefineStart
from ptycho_torch.errors import ConfigError
from ptycho_torch.pipeline import reconstruct
from ptycho_torch.plan import ReconstructOptions
from serving.engine import Engine
from serving.ptychodus.adapter import (
    ObjectGrid,
    Scan,
    check_model_geometry,
    raw_data_from_input,
    refine_outputs,
    scan_from_input,
)
from serving.ptychodus.reporting import reported
from serving.ptychodus.settings import BUNDLE_FILE_FILTER, GROUP, PtychoPINNServeSettings, bundle_location
from serving.ptychodus.training import train_bundle

__all__ = ["OnnxReconstructor"]

log = logging.getLogger(__name__)


class OnnxReconstructor(TrainableReconstructor):
    """Reconstruct with the bundle named by ``[PtychoPINNServe] BundlePath``."""

    def __init__(self, settings: PtychoPINNServeSettings) -> None:
        self._settings = settings
        self._engine: Engine | None = None
        self._engine_key: tuple[Path, tuple[str, ...] | None] | None = None
        self._training_goal: int | None = None

    @property
    def name(self) -> str:
        return "ONNX"

    def get_progress_goal(self) -> int:
        """A reconstruction: the network, then each refinement iteration; a training: ``TrainEpochs + 1``
        (the epochs, then the export)."""
        if self._training_goal is not None:
            return self._training_goal
        return 1 + self._settings.refine_steps()

    def _bundle_path(self) -> Path:
        path = self._settings.bundle()
        if path is None:
            raise ConfigError(
                f"`[{GROUP}] BundlePath` must name a bundle .zip or folder, got nothing; use Load Model "
                "(or set BundlePath in settings.ini, or put model.zip in the -b input directory)"
            )
        return path

    def engine(self) -> Engine:
        """The onnxruntime engine for the configured bundle (rebuilt when the settings change)."""
        providers = self._settings.provider_list()
        key = (self._bundle_path(), None if providers is None else tuple(providers))
        if self._engine is None or key != self._engine_key:
            self._engine = Engine(load_bundle(key[0]), providers=providers, warmup=False)
            self._engine_key = key
            log.info("loaded bundle %s (N=%d, gridsize=%d)", key[0], self._engine.bundle.N,
                     self._engine.bundle.gridsize)
        return self._engine

    def reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        """The network's object (progress 1), then with ``RefineIterations`` (a number or ``auto``) one refined
        object per iteration, with the refined probe and positions when ``RefineProbe``/``RefinePositions`` ask
        (``RefineStart`` flat skips the network). Errors are also logged (Ptychodus' log panel)."""
        self._training_goal = None
        return reported(self._reconstruct(parameters), "Reconstruction")

    def _reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        scan = scan_from_input(parameters)
        options = self._settings.options()
        grid = ObjectGrid(parameters)
        if options.refine_start == RefineStart.NETWORK:
            yield self._network(scan, grid, options)
        yield from refine_outputs(grid, scan, options, progress=1)

    def _network(self, scan: Scan, grid: ObjectGrid, options: ReconstructOptions) -> ReconstructOutput:
        """The network's object on ``grid``, its amplitude error (the refinement's loss) as the loss of iteration 0."""
        engine = self.engine()
        bundle: Bundle = engine.bundle
        check_model_geometry(scan, N=bundle.N, gridsize=bundle.gridsize, model=f"{bundle.name} v{bundle.version}",
                             pixel_size_m=bundle.pixel_size_m)
        result = reconstruct(engine, scan.amplitudes, scan.positions, probe=scan.probe,
                             options=options.network_only())  # refinement runs on Ptychodus' grid
        log.info("reconstructed %d patterns in %.2f s (scale %.4g, %s policy, probe differs from the training "
                 "probe by %.0f%%)", result.n_patterns, result.timings["total"], result.scale, result.scale_policy,
                 100 * (result.probe_difference or 0.0))
        grid.add(result.amplitude, result.phase, result.coverage, result.origin)
        fit = result.data_fit
        losses = [LossValue(epoch=0, value=fit["iterations"][0]["amplitude_error"])] if fit else None
        return ReconstructOutput(grid.product(losses=losses), progress=1)

    # --- trainable -------------------------------------------------------------------------------

    def is_model_loaded(self) -> bool:
        return self._settings.bundle() is not None

    def get_model_file_filter(self) -> str:
        return BUNDLE_FILE_FILTER

    def get_model_file_extension(self) -> str:
        return ".zip"

    def load_model_from_file(self, file_path: Path) -> None:
        """Use the bundle at ``file_path``: a ``.zip``, a bundle folder, or a folder's ``manifest.json``."""
        path = bundle_location(Path(file_path))
        bundle = load_bundle(path)  # validate now, so a bad file fails at Load Model, not at Reconstruct
        self._settings.bundle_path.set_value(path)
        log.info("model %s v%s (N=%d, gridsize=%d) from %s", bundle.name, bundle.version, bundle.N, bundle.gridsize,
                 path)

    def save_model(self, file_path: Path) -> None:
        source = self._bundle_path()
        target = Path(file_path).with_suffix(".zip")
        if source.is_dir():
            with tempfile.TemporaryDirectory() as tmp:
                archive = shutil.make_archive(str(Path(tmp) / "bundle"), "zip", root_dir=source)
                shutil.move(archive, target)
        else:
            shutil.copyfile(source, target)

    def get_training_data_file_filter(self) -> str:
        return "PtychoPINN scan NPZ (*.npz)"

    def export_training_data(self, file_path: Path, parameters: ReconstructInput) -> None:
        raw_data_from_input(parameters).to_file(file_path)

    def train(self, input_path: Path, output_path: Path) -> Iterator[TrainOutput]:
        """Train in a subprocess, yielding its progress (Stop ends it), then load the exported bundle."""
        self._training_goal = self._settings.train_epochs.get_value() + 1
        return reported(self._train(Path(input_path), Path(output_path)), "Training")

    def _train(self, input_path: Path, output_path: Path) -> Iterator[TrainOutput]:
        bundle_path = yield from train_bundle(input_path, output_path, self._settings)
        self.load_model_from_file(bundle_path)
