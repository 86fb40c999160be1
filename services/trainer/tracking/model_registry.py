"""Mirror a promotion into MLflow's Model Registry (opt-in: ``BERT_MLFLOW_REGISTERED_MODEL``).

The runs volume stays what the inferencer serves from; the registry gets a copy for people
who browse and load models through MLflow: the promoted run's model files become the
artifacts ``model/`` of its MLflow run (uploaded once), that folder becomes a version of
the registered model (one version per run), and the promotion's alias points at it.
Best effort: a failure is logged and counted, never raised, so a promotion never fails
because MLflow is away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from services.trainer.tracking.mlflow_logger import CLIENT_ENV_DEFAULTS, TRACKING_KEY_TAG
from services.trainer.tracking.trackers import TRACKING_FILE, read_tracking_file
from shared import metrics
from shared.logging import get_logger
from shared.manifests import TrackingRecord

log = get_logger(__name__)

MODEL_ARTIFACT_DIR = "model"
_RESERVED_ALIAS = re.compile(r"^([vV]\d+|latest)$", re.IGNORECASE)


@dataclass(frozen=True)
class MirroredVersion:
    registered_model: str
    version: str
    alias: str
    mlflow_run_id: str


def mlflow_alias(alias: str) -> str:
    """Our alias as an MLflow alias: only letters, digits, ``_`` and ``-``; not reserved."""
    name = re.sub(r"[^\w-]", "_", alias)
    return f"{name}_alias" if _RESERVED_ALIAS.match(name) else name


def mirror_promotion(
    tracking_uri: str, run_id: str, alias: str, model_dir: str | Path, registered_model: str
) -> MirroredVersion | None:
    """Give ``registered_model`` a version holding ``run_id``'s model, aliased ``alias``.

    None when nothing was mirrored: the run was not tracked in MLflow, or MLflow failed
    (logged as ``registry.mirror_failed`` and counted in ``bert_tracking_errors_total``).
    """
    import os

    model_dir = Path(model_dir)
    tracking = read_tracking_file(model_dir)
    if tracking is None:
        log.warning("registry.run_not_tracked", run_id=run_id, alias=alias)
        return None
    for name, value in CLIENT_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        mirrored = _mirror(tracking_uri, run_id, alias, model_dir, registered_model, tracking)
    except Exception as err:
        metrics.TRACKING_ERRORS.labels(tracker="mlflow").inc()
        log.warning(
            "registry.mirror_failed",
            run_id=run_id,
            alias=alias,
            error_type=type(err).__name__,
            error=str(err).splitlines()[0][:300] if str(err) else "",
        )
        return None
    if mirrored is not None:
        log.info(
            "registry.mirrored",
            run_id=run_id,
            registered_model=registered_model,
            version=mirrored.version,
            alias=mirrored.alias,
        )
    return mirrored


def _mirror(
    tracking_uri: str,
    run_id: str,
    alias: str,
    model_dir: Path,
    registered_model: str,
    tracking: TrackingRecord,
) -> MirroredVersion | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(tracking.experiment or "")
    runs = (
        client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{TRACKING_KEY_TAG}` = '{tracking.tracking_key}'",
            max_results=1,
        )
        if experiment is not None
        else []
    )
    if not runs:
        log.warning("registry.mlflow_run_missing", run_id=run_id)
        return None
    mlflow_run_id = runs[0].info.run_id

    # Upload what is missing (a mirror cut short earlier resumes where it stopped).
    uploaded = {Path(f.path).name for f in client.list_artifacts(mlflow_run_id, MODEL_ARTIFACT_DIR)}
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and path.name != TRACKING_FILE and path.name not in uploaded:
            client.log_artifact(mlflow_run_id, str(path), MODEL_ARTIFACT_DIR)

    try:
        client.create_registered_model(registered_model)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    existing = client.search_model_versions(
        f"name = '{registered_model}' and run_id = '{mlflow_run_id}'"
    )
    version = (
        existing[0].version
        if existing
        else client.create_model_version(
            registered_model,
            f"runs:/{mlflow_run_id}/{MODEL_ARTIFACT_DIR}",
            run_id=mlflow_run_id,
            tags={"bert_finetune.run_id": run_id},
        ).version
    )
    target = mlflow_alias(alias)
    client.set_registered_model_alias(registered_model, target, str(version))
    return MirroredVersion(registered_model, str(version), target, mlflow_run_id)
