"""The ``[PtychoPINNServe]`` settings group: shown in Ptychodus' Settings view, saved in settings.ini."""

from __future__ import annotations

from pathlib import Path

from ptychodus.api.parameters import StringParameter
from ptychodus.api.settings import SettingsRegistry

from ptycho_torch.errors import ConfigError
from ptycho_torch.plan import MAX_REFINE_ITERATIONS
from ptycho_torch.choices import RefineAlgorithm, RefineStart, values
from ptycho_torch.refinement import RefineSettings
from serving.cli import DEFAULT_BUNDLE

__all__ = ["BUNDLE_FILE_FILTER", "GROUP", "REFINE_ALGORITHMS", "REFINE_STARTS", "SCALE_POLICIES",
           "PtychoPINNServeSettings", "bundle_location"]

GROUP = "PtychoPINNServe"
SCALE_POLICIES = ("scan", "bundle")
REFINE_ALGORITHMS = values(RefineAlgorithm)
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
        self.scale_policy = group.create_string_parameter("ScalePolicy", "scan")
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
        self.refine_iterations = group.create_integer_parameter("RefineIterations", 0, minimum=0,
                                                                maximum=MAX_REFINE_ITERATIONS)
        """Known-probe refinement iterations against the measured patterns after the network (0: none);
        one progress step and one chance to stop per iteration, the data fit shown as the losses."""
        self.refine_algorithm = group.create_string_parameter("RefineAlgorithm", "er")
        """``er`` (whole scan per update) or ``rpie`` (mini-batches)."""
        self.refine_start = group.create_string_parameter("RefineStart", "network")
        """``network`` (refine the network's object) or ``flat`` (skip the network: a scan it was not trained for)."""
        # training (ONNX reconstructor's Train button / `ptychodus -b train`)
        self.train_epochs = group.create_integer_parameter("TrainEpochs", 20, minimum=1)
        self.train_batch_size = group.create_integer_parameter("TrainBatchSize", 16, minimum=1)
        self.train_gridsize = group.create_integer_parameter("TrainGridSize", 1, minimum=1, maximum=4)

    def refine_settings(self) -> RefineSettings | None:
        """The refinement to run (None: ``RefineIterations`` is 0); raises :class:`ConfigError` on a bad
        algorithm or start."""
        iterations = int(self.refine_iterations.get_value())
        algorithm = _choice(self.refine_algorithm, "RefineAlgorithm", REFINE_ALGORITHMS,
                            f"one of {list(REFINE_ALGORITHMS)}")
        if self.start() == RefineStart.FLAT and iterations == 0:
            raise ConfigError(f"`[{GROUP}] RefineStart` flat needs `RefineIterations` >= 1; set e.g. 20")
        return RefineSettings(iterations=iterations, algorithm=algorithm) if iterations else None  # type: ignore[arg-type]

    def start(self) -> str:
        """``network`` or ``flat``; raises :class:`ConfigError` otherwise."""
        return _choice(self.refine_start, "RefineStart", REFINE_STARTS, "network or flat",
                       "; flat skips the network and refines from a flat object")

    def bundle(self) -> Path | None:
        """The configured bundle (``.zip`` or folder), or None when set to nothing."""
        path = self.bundle_path.get_value()
        return None if path == Path() else bundle_location(path)

    def policy(self) -> str:
        """``scan`` or ``bundle``; raises :class:`ConfigError` otherwise."""
        return _choice(self.scale_policy, "ScalePolicy", SCALE_POLICIES, "scan or bundle",
                       "; scan normalises by the scan's own patterns, bundle by the value measured on the training data")

    def provider_list(self) -> list[str] | None:
        """Providers for :class:`serving.engine.Engine` (None: automatic)."""
        value = self.providers.get_value().strip()
        if value.casefold() in ("", "auto"):
            return None
        return [p.strip() for p in value.split(",") if p.strip()]


def _choice(parameter: StringParameter, key: str, allowed: tuple[str, ...], expected: str, hint: str = "") -> str:
    """A string setting's value (stripped, case-folded) if it is one of ``allowed``; else
    :class:`ConfigError` "`[GROUP] key` must be {expected}, got 'x'{hint}"."""
    value = parameter.get_value().strip().casefold()
    if value not in allowed:
        raise ConfigError(f"`[{GROUP}] {key}` must be {expected}, got {value!r}{hint}")
    return value
