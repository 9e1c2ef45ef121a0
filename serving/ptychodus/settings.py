"""The ``[PtychoPINNServe]`` settings group: shown in Ptychodus' Settings view, saved in settings.ini."""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from ptychodus.api.parameters import StringParameter
from ptychodus.api.settings import SettingsRegistry

from ptycho_torch.choices import NAMED_SCALE_POLICIES, RefineAlgorithm, RefineStart, ScalePolicy, parse, values
from ptycho_torch.errors import ConfigError, InvalidInput
from ptycho_torch.plan import MAX_REFINE_ITERATIONS, ReconstructOptions, RefineIterations
from ptycho_torch.refinement import AUTO
from serving.cli import DEFAULT_BUNDLE

__all__ = ["BUNDLE_FILE_FILTER", "GROUP", "PER_CASE", "REFINE_ALGORITHMS", "REFINE_STARTS", "PtychoPINNServeSettings",
           "bundle_location"]

E = TypeVar("E", bound=StrEnum)

GROUP = "PtychoPINNServe"
PER_CASE = "default"
"""The ``RefineAlgorithm`` setting's value for the solver's per-case default (``er`` for the object alone,
``rpie`` with the probe or positions refined)."""
REFINE_ALGORITHMS = (PER_CASE, *values(RefineAlgorithm))
REFINE_STARTS = values(RefineStart)
MANIFEST = "manifest.json"
BUNDLE_FILE_FILTER = f"PtychoPINN bundle: a .zip, or a bundle folder's {MANIFEST} (*.zip {MANIFEST})"
"""File-dialog filter for Load Model and the bundle chooser: a file dialog cannot pick a folder, so a
folder bundle is chosen by its manifest."""


def bundle_location(path: Path) -> Path:
    """The bundle a chosen path names: a folder bundle's ``manifest.json`` stands for its folder."""
    path = Path(path)
    return path.parent if path.name == MANIFEST else path


class PtychoPINNServeSettings:
    """Every setting of both reconstructors (values are read when a reconstruction starts)."""

    def __init__(self, registry: SettingsRegistry) -> None:
        group = registry.create_group(GROUP)
        # both
        self.scale_policy = group.create_string_parameter("ScalePolicy", ScalePolicy.SCAN.value)
        """Input normalisation: ``scan`` (this scan's own patterns) or ``bundle`` (the training value)."""
        # ONNX (in-process)
        self.bundle_path = group.create_path_parameter("BundlePath", DEFAULT_BUNDLE)
        """Bundle ``.zip`` or folder (or its ``manifest.json``) written by ``ptychopinn export``; set by
        Load Model. Default: the model shipped with the package (a folder)."""
        self.providers = group.create_string_parameter("Providers", "auto")
        """onnxruntime providers, comma-separated (``cuda,cpu``), or ``auto`` for the best available."""
        # HTTP (remote `ptychopinn serve`)
        self.server_url = group.create_string_parameter("ServerURL", "http://127.0.0.1:8000")
        self.server_model = group.create_string_parameter("ServerModel", "")
        """Model name on the server; empty: the server's only model."""
        self.api_token = group.create_string_parameter("ApiToken", "")
        """Bearer token, if the server was started with one."""
        self.timeout_s = group.create_real_parameter("TimeoutSeconds", 60.0, minimum=0.1)
        self.chunk_size = group.create_integer_parameter("ChunkSize", 256, minimum=1)
        """Patterns per request; one progress step (and one chance to stop) per chunk."""
        # physics refinement after the network (both reconstructors; runs in this process, numpy only)
        self.refine_iterations = group.create_string_parameter("RefineIterations", "0")
        """Refinement iterations against the measured patterns after the network: a whole number (0: none,
        at most :data:`MAX_REFINE_ITERATIONS`) or ``auto`` (until the data fit stops improving); one progress
        step and one chance to stop per iteration, the amplitude error shown as the losses."""
        self.refine_algorithm = group.create_string_parameter("RefineAlgorithm", PER_CASE)
        """``er`` (whole scan per update), ``rpie`` (mini-batches) or ``mpie`` (rPIE with momentum)."""
        self.refine_start = group.create_string_parameter("RefineStart", RefineStart.NETWORK.value)
        """``network`` (refine the network's object) or ``flat`` (skip the network: a scan it was not trained for)."""
        self.refine_probe = group.create_boolean_parameter("RefineProbe", False)
        """Refine the probe with the object; the product returned carries the refined probe."""
        self.refine_positions = group.create_boolean_parameter("RefinePositions", False)
        """Correct the scan positions with the object; the product returned carries the corrected positions."""
        # training (ONNX reconstructor's Train button / `ptychodus -b train`)
        self.train_epochs = group.create_integer_parameter("TrainEpochs", 20, minimum=1)
        self.train_batch_size = group.create_integer_parameter("TrainBatchSize", 16, minimum=1)
        self.train_gridsize = group.create_integer_parameter("TrainGridSize", 1, minimum=1, maximum=4)

    def options(self) -> ReconstructOptions:
        """The reconstruct options these settings ask for (scale policy and refinement; both
        reconstructors resolve their plan from them); raises :class:`ConfigError` naming the setting."""
        policy = _choice(self.scale_policy, "ScalePolicy", ScalePolicy, NAMED_SCALE_POLICIES)
        try:
            return ReconstructOptions(scale_policy=policy, refine_iterations=self.iterations(),
                                      refine_algorithm=self.algorithm(),
                                      refine_start=_choice(self.refine_start, "RefineStart", RefineStart),
                                      refine_probe=self.refine_probe.get_value(),
                                      refine_positions=self.refine_positions.get_value())
        except InvalidInput as error:
            raise ConfigError(f"`[{GROUP}]` settings: {error} (RefineIterations, RefineStart, RefineProbe, "
                              "RefinePositions)") from None

    def algorithm(self) -> RefineAlgorithm | None:
        """``RefineAlgorithm`` as the option ``refine_algorithm``: None for :data:`PER_CASE`; raises
        :class:`ConfigError` naming the accepted values for anything else."""
        if self.refine_algorithm.get_value().strip().casefold() == PER_CASE:
            return None
        return _choice(self.refine_algorithm, "RefineAlgorithm", RefineAlgorithm, REFINE_ALGORITHMS)

    def iterations(self) -> RefineIterations:
        """``RefineIterations`` as the option ``refine_iterations``: a whole number or ``auto``; raises
        :class:`ConfigError` for anything else (the options check the range)."""
        value = str(self.refine_iterations.get_value()).strip().casefold()
        if value == AUTO:
            return AUTO
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if number.is_integer():  # "3" and "3.0" alike, as the HTTP option and the CLI take them
            return int(number)
        raise ConfigError(f"`[{GROUP}] RefineIterations` must be a whole number of iterations in "
                          f"[0, {MAX_REFINE_ITERATIONS}] or {AUTO!r} (until the data fit stops improving), "
                          f"got {value!r}")

    def refine_steps(self) -> int:
        """Progress steps the refinement may take: its iterations, the cap of ``auto`` (it usually stops
        sooner); 0 when none is asked for or the settings are wrong (reconstructing says how)."""
        try:
            refinement = self.options().refinement()
        except ConfigError:
            return 0
        return 0 if refinement is None else refinement.iteration_cap

    def bundle(self) -> Path | None:
        """The configured bundle (``.zip`` or folder), or None when set to nothing."""
        path = self.bundle_path.get_value()
        return None if path == Path() else bundle_location(path)

    def provider_list(self) -> list[str] | None:
        """Providers for :class:`serving.engine.Engine` (None: automatic)."""
        value = self.providers.get_value().strip()
        if value.casefold() in ("", "auto"):
            return None
        return [p.strip() for p in value.split(",") if p.strip()]


def _choice(parameter: StringParameter, key: str, choice: type[E], allowed: tuple[str, ...] | None = None) -> E:
    """A string setting's value (stripped, case-folded) as a member of ``choice`` (only ``allowed`` ones when
    given); else :class:`ConfigError` "`[GROUP] key` must be one of [...], got 'x'"."""
    value = parameter.get_value().strip().casefold()
    if allowed is not None and value not in allowed:
        raise ConfigError(f"`[{GROUP}] {key}` must be one of {list(allowed)}, got {value!r}")
    return parse(choice, f"[{GROUP}] {key}", value, ConfigError)
