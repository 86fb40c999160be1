"""Tracking is opt-in by configuration: without it nothing MLflow- or TensorBoard-related is
imported; its settings are validated; the MLflow client ships with the trainer only."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from shared.settings import Settings, SettingsError
from tests.conftest import SentimentData, tiny_config
from tests.durability.harness import REPO_ROOT

UNTRACKED_RUN = """
import json, os, sys
from pathlib import Path
from temporalio.testing import ActivityEnvironment
from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.run_folder.paths import LocalPathRoots
from shared.settings import Settings
from services.trainer.tracking.trackers import TrackingConfig
from shared.types import BertFineTuneConfig, BertFineTuneRequest
from tests.helpers.gateway import OfflineGateway

tracking = TrackingConfig.from_settings(Settings.from_env({}))
# The test's files are in the temp folder: the trainer may read there (tests/conftest.py).
roots = Settings.from_env(os.environ).local_path_roots
request = BertFineTuneRequest(
    run_id="plain-run-0-tiny", config=BertFineTuneConfig.model_validate(json.loads(sys.argv[2]))
)
activities = TrainingActivities(
    Path(sys.argv[1]),
    OfflineGateway(),
    tracking=tracking,
    local_path_roots=LocalPathRoots.of(roots),
)
ActivityEnvironment().run(activities.fine_tune_bert, request)
loaded = sorted(
    name for name in sys.modules if name.split(".")[0] in {"mlflow", "tensorboard", "tensorboardX"}
)
print(json.dumps(loaded))
"""


def test_without_tracking_settings_nothing_is_imported(
    tiny_model: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    config = tiny_config(tiny_model, sentiment_csv, num_epochs=1)
    result = subprocess.run(
        [sys.executable, "-c", UNTRACKED_RUN, str(runs_root), json.dumps(config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    run_dir = runs_root / "plain-run-0-tiny"
    assert (run_dir / "run.json").is_file()
    assert not (run_dir / "tracking.json").exists() and not (run_dir / "tensorboard").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}, "tracking server's http(s)://"),
        ({"MLFLOW_TRACKING_URI": "./mlruns"}, "tracking server's http(s)://"),
        ({"BERT_TENSORBOARD": "maybe"}, "BERT_TENSORBOARD='maybe' must be true or false"),
    ],
)
def test_bad_tracking_settings_are_refused_with_the_fix(env: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


def test_tracking_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "MLFLOW_TRACKING_URI": "http://mlflow.mlops:5000",
            "BERT_TENSORBOARD": "1",
            "BERT_MLFLOW_REGISTERED_MODEL": "sentiment",
        }
    )
    assert settings.mlflow_tracking_uri == "http://mlflow.mlops:5000"
    assert settings.tensorboard is True
    assert settings.mlflow_registered_model == "sentiment"
    unset = Settings.from_env({"MLFLOW_TRACKING_URI": "  "})
    assert (unset.mlflow_tracking_uri, unset.tensorboard, unset.mlflow_registered_model) == (
        None,
        False,
        None,
    )


def test_the_mlflow_client_ships_with_the_trainer_only() -> None:
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def names(extra: str) -> set[str]:
        return {req.split("[")[0].split("=")[0].split(">")[0].strip() for req in extras[extra]}

    assert {"mlflow-skinny", "tensorboard"} <= names("trainer")
    assert "mlflow" not in names("trainer")  # no server, UI or SQL stack in the GPU image
    assert not {"mlflow", "mlflow-skinny", "tensorboard"} & names("inferencer")
    assert "mlflow" in names("local")  # the server `bert-finetune dev --mlflow` runs
