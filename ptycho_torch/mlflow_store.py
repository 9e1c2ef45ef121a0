"""A model logged to MLflow, read back without Lightning: ``runs:/<run_id>/model`` -> a local folder.

:func:`~ptycho_torch.workflows.components.run_cdi_example_torch` logs the run's ``wts.h5.zip`` as the
artifact folder ``model`` of an MLflow run; :func:`download_model` fetches such a folder, and
:func:`file_store_allowed` lets MLflow >= 3.7 use a local file store (``file:///RUN/mlruns``) for one
call. MLflow (the ``mlflow`` extra) is imported when a function is called; nothing else is needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from ptycho_torch.errors import ModelArchiveError

__all__ = ["MLFLOW_URI_PREFIX", "download_model", "file_store_allowed", "is_mlflow_uri"]

MLFLOW_URI_PREFIX: Final = "runs:/"
"""How an MLflow run's artifact is named: ``runs:/<run_id>/<artifact path>``."""
_ALLOW_FILE_STORE: Final = "MLFLOW_ALLOW_FILE_STORE"


def is_mlflow_uri(source: str | Path) -> bool:
    """True for an MLflow ``runs:/<run_id>/...`` URI."""
    return str(source).startswith(MLFLOW_URI_PREFIX)


@contextmanager
def file_store_allowed() -> Iterator[None]:
    """MLflow >= 3.7 refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE`` is set; set it for this block only."""
    previous = os.environ.get(_ALLOW_FILE_STORE)
    os.environ[_ALLOW_FILE_STORE] = "true" if previous is None else previous
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_ALLOW_FILE_STORE, None)


def download_model(uri: str, destination: str | Path, *, tracking_uri: str | None = None) -> Path:
    """Download the artifact ``uri`` (``runs:/<run_id>/model``) into the folder ``destination`` and
    return its local path. ``tracking_uri``: the store (default: MLflow's own setting, e.g.
    ``$MLFLOW_TRACKING_URI``). Raises :class:`ModelArchiveError` when MLflow is not installed or the
    URI cannot be resolved."""
    try:
        import mlflow.artifacts
    except ImportError as error:
        raise ModelArchiveError(f"loading {uri!r} needs MLflow, which is not installed; "
                                "pip install 'ptychopinn-serve[mlflow]' or pass the wts.h5.zip path") from error
    try:
        with file_store_allowed():
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination),
                                                        tracking_uri=tracking_uri)
    except Exception as error:  # MlflowException and OSError: unknown run, missing artifact, no store
        raise ModelArchiveError(
            f"MLflow URI {uri!r} could not be resolved ({error}); check the run id and pass the tracking "
            "store as tracking_uri or $MLFLOW_TRACKING_URI (e.g. file:///RUN/mlruns)"
        ) from error
    return Path(local)
