"""MLflow, both ways: a training run logged to a run folder's file store, and a logged model read back.

:func:`log_training_run` (what :func:`~ptycho_torch.workflows.components.run_cdi_example_torch` calls
with ``enable_mlflow``) logs a run's parameters, per-epoch metrics and its ``wts.h5.zip`` as the
artifact folder ``model`` to ``RUN/mlruns``; :func:`download_model` fetches such a folder back from a
``runs:/<run_id>/model`` URI (no Lightning needed), and :func:`file_store_allowed` lets MLflow >= 3.7
use a local file store for one call. The one module of the core that imports MLflow (the ``mlflow``
extra), and only when a function is called.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from ptycho_torch.errors import ModelArchiveError

__all__ = ["ARTIFACT_PATH", "EXPERIMENT", "MLFLOW_URI_PREFIX", "download_model", "file_store_allowed",
           "is_mlflow_uri", "log_training_run", "model_uri", "tracking_uri"]

MLFLOW_URI_PREFIX: Final = "runs:/"
"""How an MLflow run's artifact is named: ``runs:/<run_id>/<artifact path>``."""
EXPERIMENT: Final = "ptychopinn"
"""The experiment training runs are logged under."""
ARTIFACT_PATH: Final = "model"
"""Artifact folder of the archive in an MLflow run: load it back with :func:`model_uri` of the run."""
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


def model_uri(run_id: str) -> str:
    """``runs:/<run_id>/model``: where :func:`log_training_run` put the run's archive."""
    return f"{MLFLOW_URI_PREFIX}{run_id}/{ARTIFACT_PATH}"


def tracking_uri(output_dir: str | Path) -> str:
    """The local MLflow file store of a run directory (``output_dir/mlruns``)."""
    return (Path(output_dir) / "mlruns").resolve().as_uri()


def log_training_run(output_dir: str | Path, parameters: dict[str, Any], metrics: dict[str, list[float]],
                     archive: str | Path) -> str:
    """Log a finished training run to ``output_dir``'s file store: ``parameters`` (values as text, at most
    500 characters), ``metrics`` (name -> value per epoch) and the ``archive`` under ``model/``; returns the
    run id. Raises :class:`ModelArchiveError` when MLflow is not installed."""
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
    except ImportError as error:
        raise ModelArchiveError("`enable_mlflow` needs MLflow, which is not installed; "
                                "pip install 'ptychopinn-serve[mlflow]' or pass enable_mlflow=False") from error
    with file_store_allowed():
        client = MlflowClient(tracking_uri=tracking_uri(output_dir))
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
        run_id = client.create_run(experiment_id, tags={"backend": "pytorch"}).info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)[:500]) for k, v in sorted(parameters.items())])
        client.log_batch(run_id, metrics=[Metric(name, value, 0, step) for name, values in metrics.items()
                                          for step, value in enumerate(values)])
        client.log_artifact(run_id, str(archive), artifact_path=ARTIFACT_PATH)
        client.set_terminated(run_id)
    return run_id
