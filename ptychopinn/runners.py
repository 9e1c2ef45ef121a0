"""Where ``ptychopinn reconstruct`` runs the network: one factory, :func:`runner_for`, for every source.

============================================  ===================================================
source                                        runner
============================================  ===================================================
an exported bundle (folder or ``.zip``)       :class:`serving.engine.Engine`: onnxruntime here, no torch
a server URL (``--server``)                   :class:`serving.client.RemoteRunner`: the server's OIP infer
a Lightning ``.ckpt``                         :class:`~ptycho_torch.torch_runner.TorchRunner`: torch here
a ``wts.h5.zip``                              the torch runner of the archive's checkpoint
a run folder (``ptychopinn train``)           its :meth:`~ptycho_torch.run_layout.RunLayout.model_file`
an MLflow ``runs:/<run_id>/model`` URI        the ``wts.h5.zip`` logged there (``$MLFLOW_TRACKING_URI``)
============================================  ===================================================

Every runner's ``model`` is a :class:`~ptycho_torch.model_facts.ModelFacts`, with the training probe
where the source holds one (a server does not publish it), so a caller builds its
:class:`~ptycho_torch.plan.ReconstructOptions` once and runs :func:`ptycho_torch.pipeline.reconstruct`
the same way for every source (refinement and data fit included). torch is imported only for the
torch sources, so a serving-only install reconstructs a bundle or a server; no source needs
Lightning or writes the global ``params.cfg``.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from serving.config import DEFAULTS

if TYPE_CHECKING:
    from ptycho_torch.pipeline import Runner
    from ptycho_torch.torch_runner import TorchRunner

__all__ = ["DEFAULT_SERVER_MODEL", "LoadedRunner", "RunnerSettings", "is_bundle", "runner_for"]

DEFAULT_SERVER_MODEL: Final = "ptychopinn"
"""The name ``ptychopinn export`` gives a bundle by default (and the shipped default bundle's)."""


@dataclass(frozen=True, kw_only=True)
class RunnerSettings:
    """How a runner runs, whatever its source; each setting applies only where it says."""

    batch_size: int = DEFAULTS.max_batch_size
    """Groups per inference batch in this process (a bundle or a torch source)."""
    server_model: str = DEFAULT_SERVER_MODEL
    """The model's name on a server."""
    chunk_size: int = 256
    """Groups per request to a server (256 groups of 64x64 float32 are 4 MiB)."""
    progress: bool = False
    """A progress bar for a server's requests."""
    token: str | None = None
    """Bearer token for a server."""
    timeout_s: float = 300.0
    """HTTP timeout for a server, in seconds."""

    def __post_init__(self) -> None:
        from ptycho_torch.errors import ConfigError

        for flag, value in (("--batch-size", self.batch_size), ("--chunk-size", self.chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"`{flag}` must be a positive number of groups, got {value!r}")
        if not self.timeout_s > 0:
            raise ConfigError(f"`--timeout` must be a positive number of seconds, got {self.timeout_s!r}")


@dataclass(frozen=True)
class LoadedRunner:
    """A source's runner, with the names it goes by."""

    runner: Runner
    """Satisfies :class:`ptycho_torch.pipeline.Runner`; ``runner.model`` holds the model's facts."""
    label: str
    """The model as the products name it: a bundle's name, ``NAME at URL``, or the path or URI given."""
    description: str
    """One line for the log: what runs, and where."""


@contextmanager
def runner_for(source: str, *, server: bool = False,
               settings: RunnerSettings = RunnerSettings()) -> Iterator[LoadedRunner]:
    """The runner of ``source``: a server URL when ``server``, else a model (see the module docstring).
    A server's connection stays open inside the ``with`` block. Raises a
    :class:`~ptycho_torch.errors.PtychoError` with a one-line message naming the source and the fix."""
    if server:
        with _remote(source, settings) as loaded:
            yield loaded
    elif is_bundle(source):
        yield _bundle(source, settings)
    else:
        yield _torch(source, settings)


def is_bundle(path: str | Path) -> bool:
    """True for a folder or ``.zip`` written by ``ptychopinn export``, whole or damaged (its
    ``manifest.json`` beside ``model.onnx``, or one that says it is a bundle's), so the bundle reader names
    what is wrong with it; False for training archives (whose manifest is not a bundle's), run folders,
    checkpoints and URIs."""
    from ptycho_torch.bundle import FORMAT, MANIFEST_FILE, ONNX_FILE

    names, manifest = _top_files(Path(path), MANIFEST_FILE)
    if manifest is None:
        return False
    try:
        return ONNX_FILE in names or json.loads(manifest).get("format") == FORMAT
    except (ValueError, AttributeError):  # not JSON, or not an object: not a bundle's manifest
        return False


def _top_files(path: Path, wanted: str) -> tuple[set[str], bytes | None]:
    """The names at the top of a folder or zip at ``path``, and the bytes of its file ``wanted`` (None when
    it has none, or ``path`` is neither)."""
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        return names, (path / wanted).read_bytes() if wanted in names else None
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            return names, archive.read(wanted) if wanted in names else None
    return set(), None


def _bundle(path: str, settings: RunnerSettings) -> LoadedRunner:
    from ptycho_torch.bundle import load_bundle
    from serving.engine import Engine

    bundle = load_bundle(path)
    engine = Engine(bundle, max_batch_size=settings.batch_size)
    return LoadedRunner(engine, label=bundle.name, description=f"bundle {bundle.name} v{bundle.version} in this "
                                                               f"process on {', '.join(engine.providers)}")


@contextmanager
def _remote(url: str, settings: RunnerSettings) -> Iterator[LoadedRunner]:
    from ptycho_torch.errors import ConfigError
    from serving.client import Client, RemoteRunner
    from serving.errors import ModelNotFound

    with Client(url, token=settings.token, timeout_s=settings.timeout_s) as client:
        try:
            facts = client.model_facts(settings.server_model)
        except ModelNotFound as error:
            raise ConfigError(f"`--server-model` must name a model served at {url}, got {settings.server_model!r} "
                              f"({error}); `ptychopinn serve` logs the name at start-up") from None
        runner = RemoteRunner(facts, client, batch_size=settings.chunk_size, progress=settings.progress)
        yield LoadedRunner(runner, label=f"{settings.server_model} at {url}",
                           description=f"{facts.name} v{facts.version} at {url}")


def _torch(source: str, settings: RunnerSettings) -> LoadedRunner:
    """The torch runner of a checkpoint, a ``wts.h5.zip``, a run folder or an MLflow URI."""
    with _local_copy(source) as given:
        path = _model_file(given)
        runner = _load_torch(path, source, settings.batch_size)
    inside = "" if path == given else f" ({path.relative_to(given)})"
    device = next(runner.generator.parameters()).device
    return LoadedRunner(runner, label=source, description=f"{source}{inside} in this process with torch on {device}")


@contextmanager
def _local_copy(source: str) -> Iterator[Path]:
    """``source`` as a local path: itself, or an MLflow URI's artifact folder, downloaded for the block."""
    from ptycho_torch.mlflow_store import download_model, is_mlflow_uri

    if not is_mlflow_uri(source):
        yield Path(source)
        return
    with tempfile.TemporaryDirectory(prefix="ptychopinn-mlflow-") as tmp:
        yield download_model(source, tmp)


def _model_file(path: Path) -> Path:
    """The checkpoint or archive ``--model`` names: the file itself, or what a run folder holds."""
    from ptycho_torch.errors import ConfigError
    from ptycho_torch.run_layout import ARCHIVE_NAME, RunLayout

    accepted = (f"pass an exported bundle (folder or .zip), a run folder of `ptychopinn train`, a .ckpt, a "
                f"{ARCHIVE_NAME} or an MLflow runs:/<run_id>/model URI")
    if not path.exists():
        raise ConfigError(f"`--model` {str(path)!r} does not exist; {accepted}")
    found = path if path.is_file() else RunLayout(path).model_file()
    if found is None:
        raise ConfigError(f"`--model` folder {str(path)!r} holds no bundle (manifest.json, model.onnx), no "
                          f"{ARCHIVE_NAME} and no checkpoints/best.ckpt or last.ckpt; {accepted}")
    return found


def _load_torch(path: Path, name: str, batch_size: int) -> TorchRunner:
    """A ``.ckpt`` or a ``wts.h5.zip`` as a torch runner named ``name``, with the training probe it holds."""
    from ptycho_torch.errors import ConfigError
    from ptycho_torch.run_layout import ARCHIVE_NAME
    from ptycho_torch.torch_runner import TorchRunner

    if path.suffix == ".ckpt":
        return TorchRunner.from_checkpoint(path, batch_size=batch_size, name=name)
    from ptycho_torch.model_manager import MANIFEST, TorchModelManager

    if zipfile.is_zipfile(path) and _top_files(path, MANIFEST)[1] is None:  # e.g. a scan's .npz
        raise ConfigError(f"`--model` {str(path)!r} is a zip but neither a bundle nor a {ARCHIVE_NAME} (it has no "
                          f"{MANIFEST}): pass what `ptychopinn export` or `ptychopinn train` wrote")
    model = TorchModelManager.load(path, restore_params=False)
    return TorchRunner.from_record(model.generator, model.record, model.probe, batch_size=batch_size, name=name)
