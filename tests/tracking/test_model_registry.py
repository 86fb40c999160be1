"""Promotion mirrored into MLflow's Model Registry: one version per run, the same alias,
the run's model files as the version's artifacts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from temporalio.testing import ActivityEnvironment

from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.activities.promotion import PromotionActivities
from services.trainer.run_folder.paths import LocalPathRoots
from services.trainer.tracking.model_registry import mirror_promotion, mlflow_alias
from services.trainer.tracking.trackers import TrackingConfig
from shared import metrics
from shared.runs import file_sha256
from shared.temporal import free_loopback_port
from shared.types import (
    BertFineTuneConfig,
    BertFineTuneRequest,
    BertFineTuneResult,
    BertPromoteInput,
)
from tests.conftest import TEST_LOCAL_PATH_ROOTS, SentimentData, tiny_config
from tests.helpers.gateway import OfflineGateway
from tests.tracking.conftest import MlflowServer

MODEL = "bert-finetune-test"

ROOTS = LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)


def _train(
    runs_root: Path, tracking: TrackingConfig, run_id: str, config: dict
) -> BertFineTuneResult:
    request = BertFineTuneRequest(run_id=run_id, config=BertFineTuneConfig.model_validate(config))
    return ActivityEnvironment().run(
        TrainingActivities(
            runs_root, OfflineGateway(), tracking=tracking, local_path_roots=ROOTS
        ).fine_tune_bert,
        request,
    )


def test_promotions_become_registry_versions_with_the_same_alias(
    mlflow_server: MlflowServer,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
    tmp_path: Path,
) -> None:
    tracking = TrackingConfig(mlflow_server.uri)
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=1)
    first = _train(runs_root, tracking, "promo-run-0-tiny", config)
    second = _train(runs_root, tracking, "promo-run-1-tiny", {**config, "seed": 7})

    one = mirror_promotion(mlflow_server.uri, first.run_id, "prod", first.model_dir, MODEL)
    again = mirror_promotion(mlflow_server.uri, first.run_id, "prod", first.model_dir, MODEL)
    assert one is not None and again == one  # idempotent: a retried promotion changes nothing
    two = mirror_promotion(mlflow_server.uri, second.run_id, "prod", second.model_dir, MODEL)
    assert two is not None and two.version != one.version

    client = mlflow_server.client()
    assert client.get_model_version_by_alias(MODEL, "prod").version == two.version
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert sorted(v.tags["bert_finetune.run_id"] for v in versions) == [
        first.run_id,
        second.run_id,
    ]
    # The version's files are the run's model, byte for byte (the tracking key stays behind).
    downloaded = Path(
        client.download_artifacts(two.mlflow_run_id, "model", str(tmp_path / "download"))
    )
    local = {p.name for p in Path(second.model_dir).iterdir() if p.is_file()} - {"tracking.json"}
    assert {p.name for p in downloaded.iterdir()} == local
    assert "model.safetensors" in local and "run.json" in local
    for name in local:
        assert file_sha256(downloaded / name) == file_sha256(Path(second.model_dir) / name)


def test_untracked_runs_and_an_unreachable_registry_mirror_nothing(
    tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=1)
    untracked = _train(runs_root, TrackingConfig(), "plain-run-0-tiny", config)
    closed = f"http://127.0.0.1:{free_loopback_port()}"
    assert mirror_promotion(closed, untracked.run_id, "prod", untracked.model_dir, MODEL) is None

    # Another seed: the same config would be reused from the first run, not trained.
    tracked_offline = _train(
        runs_root, TrackingConfig(closed), "plain-run-1-tiny", {**config, "seed": 7}
    )
    assert not tracked_offline.reused
    errors = metrics.TRACKING_ERRORS.labels(tracker="mlflow")._value.get()
    assert (
        mirror_promotion(closed, tracked_offline.run_id, "prod", tracked_offline.model_dir, MODEL)
        is None
    )
    assert metrics.TRACKING_ERRORS.labels(tracker="mlflow")._value.get() > errors


def test_aliases_map_to_names_mlflow_accepts() -> None:
    assert mlflow_alias("prod") == "prod"
    assert mlflow_alias("sst2.best") == "sst2_best"
    assert mlflow_alias("v2") == "v2_alias"  # MLflow reserves v<N> and latest
    assert mlflow_alias("latest") == "latest_alias"


async def test_the_promotion_activity_mirrors_in_the_background(
    mlflow_server: MlflowServer,
    tiny_model: Path,
    sentiment_csv: SentimentData,
    runs_root: Path,
) -> None:
    tracking = TrackingConfig(mlflow_server.uri, registered_model=MODEL + "-activity")
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=1)
    trained = _train(runs_root, tracking, "mirror-run-0-tiny", config)

    promote = PromotionActivities(runs_root, tracking).promote_alias
    output = await ActivityEnvironment().run(
        promote, BertPromoteInput(run_id=trained.run_id, alias="staging")
    )
    assert output.run_id == trained.run_id  # the alias moved at once, mirroring goes on after

    client = mlflow_server.client()
    deadline = time.monotonic() + 120
    while True:
        try:
            version = client.get_model_version_by_alias(MODEL + "-activity", "staging")
            break
        except Exception:  # not mirrored yet: MLflow raises for a missing model or alias
            assert time.monotonic() < deadline, "the promotion was never mirrored"
            await asyncio.sleep(1)
    assert version.tags["bert_finetune.run_id"] == trained.run_id
