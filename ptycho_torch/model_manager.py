"""The ``wts.h5.zip`` model archive: Lightning checkpoints + ``params.cfg`` snapshots + a JSON manifest.

Layout (paths inside the zip)::

    manifest.json                 {"models": [...], "version": "1.0", "backend": "pytorch",
                                   "torch_version", "lightning_version", "package_version", "created",
                                   "files": {member: sha256}}
    <model>/model.ckpt            the Lightning checkpoint (training/module.py contract)
    <model>/params.json           the params.cfg snapshot (+ intensity_scale, input_scale, _version)

Same outer structure as PtychoPINN's TensorFlow archive (hoidn/PtychoPINN), with
JSON where it has dill: nothing is ever unpickled, and checkpoints load with ``weights_only=True``.
This is the training-side archive; the deployment artifact is the bundle (design.md section 4).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import numpy as np

from ptycho_torch import params
from ptycho_torch.checkpoint import CheckpointRecord, load_generator
from ptycho_torch.errors import ModelArchiveError
from ptycho_torch.model import ObjectGenerator
from ptycho_torch.run_layout import ARCHIVE_NAME, RunLayout

__all__ = ["DEFAULT_MODEL", "FORMAT_VERSION", "LoadedModel", "TorchModelManager"]

MANIFEST: Final = "manifest.json"
FORMAT_VERSION: Final = "1.0"
BACKEND: Final = "pytorch"
DEFAULT_MODEL: Final = "diffraction_to_obj"
CHECKPOINT_MEMBER: Final = "model.ckpt"
PARAMS_MEMBER: Final = "params.json"

_RESAVE = ("re-create it with TorchModelManager.save(checkpoint, RUN), or pass the `ptychopinn train` run folder "
           "or its .ckpt instead")


@dataclass(frozen=True)
class LoadedModel:
    """One model restored from an archive."""

    name: str
    generator: ObjectGenerator
    """The inference network, eval mode, CPU."""
    record: CheckpointRecord
    """The checkpoint's configs and scales."""
    probe: np.ndarray
    """The normalised training probe, complex64 ``(P, N, N)``."""
    params: dict[str, Any]
    """The ``params.cfg`` snapshot stored with the model."""


def _json_value(key: str, value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(key, v) for v in value]
    raise ModelArchiveError(
        f"params.cfg[{key!r}] must be a JSON value (str, number, bool, None, list) to be archived, got "
        f"{type(value).__name__}; store arrays such as the probe in the checkpoint, not in params.cfg"
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _archive_path(target: str | Path) -> Path:
    target = Path(target)
    return target if target.suffix == ".zip" else RunLayout(target).archive


class TorchModelManager:
    """Save and load ``wts.h5.zip`` archives (static methods; mirrors PtychoPINN's ``ModelManager``)."""

    @staticmethod
    def save(
        checkpoints: Mapping[str, str | Path] | str | Path,
        output: str | Path,
        *,
        params_snapshot: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``output/wts.h5.zip`` (or ``output`` itself when it ends in ``.zip``); return its path.

        ``checkpoints``: one Lightning checkpoint (stored as ``diffraction_to_obj``) or a mapping
        model name -> checkpoint. ``params_snapshot`` defaults to the checkpoint's own
        (:meth:`CheckpointRecord.params_snapshot`); the checkpoint's ``intensity_scale`` and
        ``input_scale`` are added to a given one. Each checkpoint is loaded once first, so an
        unreadable one fails here rather than at load time.
        """
        models = {DEFAULT_MODEL: checkpoints} if isinstance(checkpoints, (str, Path)) else dict(checkpoints)
        if not models:
            raise ModelArchiveError("`checkpoints` must name at least one checkpoint, got an empty mapping")
        members: dict[str, bytes] = {}
        for name, checkpoint in models.items():
            if not name or "/" in name or name.startswith("."):
                raise ModelArchiveError(f"model name must be a plain folder name, got {name!r}")
            record = load_generator(checkpoint)[1]
            snapshot = record.params_snapshot() if params_snapshot is None else dict(params_snapshot)
            model_params = {
                **{k: _json_value(k, v) for k, v in snapshot.items()},
                "intensity_scale": record.intensity_scale,
                "input_scale": record.training_scale,
                "_version": FORMAT_VERSION,
            }
            members[f"{name}/{CHECKPOINT_MEMBER}"] = Path(checkpoint).read_bytes()
            members[f"{name}/{PARAMS_MEMBER}"] = json.dumps(model_params, indent=2, sort_keys=True).encode()
        manifest = {
            "models": list(models),
            "version": FORMAT_VERSION,
            "backend": BACKEND,
            **_versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": {member: _sha256(data) for member, data in members.items()},
        }
        path = _archive_path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2))
            for member, data in members.items():
                archive.writestr(member, data)
        partial.replace(path)  # never leave a half-written archive under the real name
        return path

    @staticmethod
    def load(
        archive: str | Path, model_name: str = DEFAULT_MODEL, *, restore_params: bool = True
    ) -> LoadedModel:
        """Load ``model_name`` from ``archive`` (a ``wts.h5.zip`` or the folder holding one).

        With ``restore_params`` the stored snapshot is written into ``params.cfg`` (as PtychoPINN's
        loader does). Raises :class:`ModelArchiveError` naming the archive, the member and the fix.
        """
        path = _archive_path(archive)
        with _open(path) as zf:
            manifest = _manifest(zf, path)
            if model_name not in manifest["models"]:
                raise ModelArchiveError(
                    f"`model_name` must be one of {manifest['models']} for archive {path}, got {model_name!r}"
                )
            checkpoint = _member(zf, path, f"{model_name}/{CHECKPOINT_MEMBER}", manifest)
            snapshot_bytes = _member(zf, path, f"{model_name}/{PARAMS_MEMBER}", manifest)
        try:
            snapshot = json.loads(snapshot_bytes)
        except ValueError as error:
            raise ModelArchiveError(
                f"member `{model_name}/{PARAMS_MEMBER}` of {path} is not valid JSON ({error}); {_RESAVE}"
            ) from error
        with tempfile.TemporaryDirectory(prefix="ptychopinn-archive-") as tmp:
            ckpt = Path(tmp) / CHECKPOINT_MEMBER
            ckpt.write_bytes(checkpoint)
            try:
                generator, record, probe = load_generator(ckpt)
            except ModelArchiveError as error:
                raise ModelArchiveError(
                    f"member `{model_name}/{CHECKPOINT_MEMBER}` of {path} is not a loadable checkpoint "
                    f"({error}); {_RESAVE}"
                ) from error
        if restore_params:
            params.cfg.update(snapshot)
        return LoadedModel(name=model_name, generator=generator, record=record, probe=probe, params=snapshot)


def _versions() -> dict[str, str]:
    import torch

    from ptycho_torch import __version__

    return {"torch_version": torch.__version__, "lightning_version": _installed("lightning"),
            "package_version": __version__}


def _installed(distribution: str) -> str:
    """The installed version of ``distribution`` (read from its metadata, not by importing it), or ``unknown``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _open(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise ModelArchiveError(
            f"model archive must be an existing file, got {str(path)!r}; pass RUN/{ARCHIVE_NAME} or the run folder"
        )
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ModelArchiveError(
            f"{path} is not a readable zip archive ({error}): the file is corrupt or truncated "
            f"(an interrupted copy?); copy it again or {_RESAVE}"
        ) from error


def _manifest(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    names = set(zf.namelist())
    if MANIFEST not in names:
        if "manifest.dill" in names:
            kind = ("a pickle-based PtychoPINN PyTorch archive (manifest.dill, model.pth)"
                    if any(n.endswith("model.pth") for n in names)
                    else "a TensorFlow PtychoPINN archive (manifest.dill, model.keras)")
            raise ModelArchiveError(
                f"{path} is {kind}, not a backend 'pytorch' archive of ptychopinn-serve (manifest.json); "
                f"its dill/pickle members are never unpickled here. Load it with PtychoPINN's own backend, "
                f"or retrain with `ptychopinn train` to get a {ARCHIVE_NAME} this package reads"
            )
        raise ModelArchiveError(
            f"{path} has no member `{MANIFEST}` (members: {sorted(names)[:8]}); it is not a model archive "
            f"of ptychopinn-serve; {_RESAVE}"
        )
    try:
        manifest = json.loads(zf.read(MANIFEST))
    except (ValueError, zipfile.BadZipFile, OSError) as error:
        raise ModelArchiveError(f"member `{MANIFEST}` of {path} is unreadable ({error}); {_RESAVE}") from error
    backend = manifest.get("backend") if isinstance(manifest, dict) else None
    if backend != BACKEND:
        raise ModelArchiveError(
            f"`backend` in {path}:{MANIFEST} must be {BACKEND!r}, got {backend!r}; this archive was written "
            f"for another backend; load it there, or retrain with `ptychopinn train`"
        )
    if manifest.get("version") != FORMAT_VERSION:
        raise ModelArchiveError(
            f"`version` in {path}:{MANIFEST} must be {FORMAT_VERSION!r}, got {manifest.get('version')!r}; "
            f"use the ptychopinn-serve release that wrote it, or {_RESAVE}"
        )
    if not isinstance(manifest.get("models"), list) or not manifest["models"]:
        raise ModelArchiveError(f"`models` in {path}:{MANIFEST} must be a non-empty list, got "
                                f"{manifest.get('models')!r}; {_RESAVE}")
    return manifest


def _member(zf: zipfile.ZipFile, path: Path, member: str, manifest: dict[str, Any]) -> bytes:
    try:
        data = zf.read(member)
    except KeyError:
        raise ModelArchiveError(
            f"{path} (backend {BACKEND!r}) has no member `{member}` although its manifest lists "
            f"model {member.split('/')[0]!r}: the archive is incomplete; {_RESAVE}"
        ) from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:  # bad CRC, bad deflate stream, truncated
        raise ModelArchiveError(
            f"member `{member}` of {path} (backend {BACKEND!r}) is corrupt ({error}); copy the archive "
            f"again or {_RESAVE}"
        ) from error
    expected = manifest.get("files", {}).get(member)
    if expected is not None and _sha256(data) != expected:
        raise ModelArchiveError(
            f"member `{member}` of {path} (backend {BACKEND!r}) does not match its sha256 in "
            f"{MANIFEST}: it was modified after saving; {_RESAVE}"
        )
    return data
