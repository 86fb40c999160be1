"""Settings added for reliability: local path roots, per-phase watchdog limits, bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import DEFAULT_PHASE_TIMEOUTS_SECONDS, HttpSettings, Settings, SettingsError


def test_local_path_roots_default_to_the_working_directory_and_the_runs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"BERT_RUNS_DIR": str(tmp_path / "runs")})
    assert settings.local_path_roots == (tmp_path, tmp_path / "runs")


def test_local_path_roots_from_the_environment() -> None:
    settings = Settings.from_env({"BERT_LOCAL_PATH_ROOTS": "/data/team-a::/models/"})
    assert settings.local_path_roots == (Path("/data/team-a"), Path("/models"))


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("data:/models", "'data' is not an absolute path"), (" : ", "lists no folder")],
)
def test_bad_local_path_roots_are_refused(value: str, fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env({"BERT_LOCAL_PATH_ROOTS": value})


def test_phase_timeouts_override_the_defaults_one_phase_at_a_time() -> None:
    settings = Settings.from_env({"BERT_PHASE_TIMEOUTS_SECONDS": "evaluating=600, saving=120"})
    assert settings.phase_timeouts_seconds == {
        **DEFAULT_PHASE_TIMEOUTS_SECONDS,
        "evaluating": 600,
        "saving": 120,
    }
    # The older variable still sets the training step limit.
    legacy = Settings.from_env({"BERT_STEP_STALL_TIMEOUT_SECONDS": "900"})
    assert legacy.phase_timeouts_seconds["training"] == 900


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("evaluation=600", "unknown phase 'evaluation'; phases are loading_data"),
        ("saving=soon", "'saving=soon' needs whole seconds >= 10"),
        ("saving=3", "'saving=3' needs whole seconds >= 10"),
    ],
)
def test_bad_phase_timeouts_are_refused(value: str, fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env({"BERT_PHASE_TIMEOUTS_SECONDS": value})


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0", "BERT_GATE_QUEUE_TIMEOUT_SECONDS=0 must be at least 1"),
        ("604801", "BERT_GATE_QUEUE_TIMEOUT_SECONDS=604801 must be at most 604800"),
        ("soon", "'soon' is not an integer"),
    ],
)
def test_the_gate_queue_timeout_is_bounded(value: str, fragment: str) -> None:
    assert Settings.from_env({}).gate_queue_timeout_seconds == 600
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env({"BERT_GATE_QUEUE_TIMEOUT_SECONDS": value})


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0", "BERT_HTTP_MAX_BATCH_TEXTS=0 must be at least 1"),
        ("4097", "BERT_HTTP_MAX_BATCH_TEXTS=4097 must be at most 4096"),
    ],
)
def test_the_http_batch_limit_is_bounded(value: str, fragment: str) -> None:
    defaults = HttpSettings.from_env({"BERT_HTTP_PORT": "8080"})
    assert (defaults.batch_window_ms, defaults.max_batch_texts) == (0.0, 256)
    with pytest.raises(SettingsError, match=fragment):
        HttpSettings.from_env({"BERT_HTTP_PORT": "8080", "BERT_HTTP_MAX_BATCH_TEXTS": value})
