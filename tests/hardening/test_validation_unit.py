"""Pure validation, no Temporal: types, run ids, containment, converter, settings, secrets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.exceptions import ApplicationError

from shared.converter import data_converter
from shared.errors import INVALID_CONFIG, RUN_NOT_FOUND, describe_validation_error
from shared.runs import require_complete_run, resolve_run_dir
from shared.settings import SettingsError, TemporalSettings
from shared.types import (
    BertExperimentInput,
    BertInferenceRequest,
    is_safe_run_id,
    make_run_id,
)

SAFE = ["exp-run-0-bert-base-uncased", "a", "A.b_c-1", "x" * 255]
UNSAFE = [
    "",
    ".",
    "..",
    "../x",
    "/etc",
    "a/b",
    "a\\b",
    ".hidden",
    "a\x00b",
    "a\nb",
    "x" * 256,
    "caf\u00e9",
    "a b",
]


@pytest.mark.parametrize("run_id", SAFE)
def test_safe_run_ids(run_id: str) -> None:
    assert is_safe_run_id(run_id)


@pytest.mark.parametrize("run_id", UNSAFE)
def test_unsafe_run_ids_are_refused_everywhere(run_id: str, tmp_path: Path) -> None:
    assert not is_safe_run_id(run_id)
    with pytest.raises(ValidationError) as err:
        BertInferenceRequest(run_id=run_id, texts=["x"])
    assert "run_id" in describe_validation_error(err.value)
    with pytest.raises(ApplicationError) as failure:
        resolve_run_dir(tmp_path, run_id)
    assert failure.value.type == INVALID_CONFIG and failure.value.non_retryable


@pytest.mark.parametrize(
    ("model_name", "sanitized"),
    [
        ("google/bert_uncased_L-2_H-128_A-2", "google_bert_uncased_L-2_H-128_A-2"),
        ("/models/tiny", "_models_tiny"),
        ("../../etc/passwd", ".._.._etc_passwd"),
        ("a b\tc\u00e9", "a_b_c_"),
    ],
)
def test_run_id_is_always_one_safe_component(model_name: str, sanitized: str) -> None:
    run_id = make_run_id("exp", 0, model_name)
    assert run_id == f"exp-run-0-{sanitized}"
    assert is_safe_run_id(run_id)


def test_symlink_inside_the_root_pointing_out_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir()
    (outside / "run").mkdir(parents=True)
    (outside / "run" / "run.json").write_text("{}")
    (root / "sneaky").symlink_to(outside / "run")
    with pytest.raises(ApplicationError) as err:
        require_complete_run(root, "sneaky")
    assert err.value.type == INVALID_CONFIG
    assert "outside BERT_RUNS_DIR" in err.value.message


def test_symlinked_runs_root_itself_is_allowed(tmp_path: Path) -> None:
    """A runs root that is itself a symlink (a mounted volume) is fine: runs stay inside it."""
    real = tmp_path / "volume"
    (real / "r1").mkdir(parents=True)
    (real / "r1" / "run.json").write_text("{}")
    (tmp_path / "runs").symlink_to(real)
    assert require_complete_run(tmp_path / "runs", "r1") == (real / "r1").resolve()


def test_missing_and_incomplete_runs(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    for run_id, fragment in (("nope", "does not exist"), ("half", "incomplete")):
        with pytest.raises(ApplicationError) as err:
            require_complete_run(tmp_path, run_id)
        assert err.value.type == RUN_NOT_FOUND and fragment in err.value.message


def _decode(data: bytes, type_hint: type) -> object:
    payload = Payload(metadata={"encoding": b"json/plain"}, data=data)
    return data_converter.payload_converter.from_payloads([payload], [type_hint])[0]


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (b"{not json", ["not valid JSON"]),
        (b'{"experiment_name": "e", "runs": [{"epochs": 3}]}', ["runs[0].epochs", "unknown"]),
        (b'{"experiment_name": "e/../x", "runs": [{}]}', ["experiment_name", "pattern"]),
        (b'{"experiment_name": "e", "runs": null}', ["runs", "must be a list"]),
    ],
)
def test_converter_turns_bad_json_into_invalid_config(data: bytes, fragments: list[str]) -> None:
    with pytest.raises(ApplicationError) as err:
        _decode(data, BertExperimentInput)
    assert err.value.type == INVALID_CONFIG and err.value.non_retryable
    for fragment in fragments:
        assert fragment in err.value.message


def test_converter_round_trips_a_good_experiment() -> None:
    value = {"experiment_name": "ok", "runs": [{"train_file": "t.csv"}]}
    decoded = _decode(json.dumps(value).encode(), BertExperimentInput)
    assert isinstance(decoded, BertExperimentInput)
    assert decoded.run_ids() == ["ok-run-0-bert-base-uncased"]


def test_error_messages_are_truncated_below_the_payload_limit() -> None:
    with pytest.raises(ValidationError) as err:
        BertExperimentInput.model_validate(
            {"experiment_name": "e", "runs": [{"bogus_" + str(i): 1 for i in range(5000)}]}
        )
    from shared.errors import invalid_config

    assert len(invalid_config(err.value).message) <= 2000


API_KEY = "sk-very-secret-api-key-123"


def test_tls_and_api_key_settings_are_parsed_and_never_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key, ca = (tmp_path / n for n in ("client.pem", "client.key", "ca.pem"))
    for path in (cert, key, ca):
        path.write_text(f"-----BEGIN {path.name}-----\n")
    settings = TemporalSettings.from_env(
        {
            "TEMPORAL_ADDRESS": "prod.tmprl.cloud:7233",
            "TEMPORAL_NAMESPACE": "ml.prod",
            "TEMPORAL_API_KEY": API_KEY,
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(cert),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(key),
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(ca),
            "TEMPORAL_TLS_SERVER_NAME": "prod.tmprl.cloud",
        }
    )
    assert settings.address == "prod.tmprl.cloud:7233"
    assert settings.namespace == "ml.prod"
    assert settings.uses_tls and settings.uses_api_key
    tls = settings.connect_config["tls"]
    assert tls.client_cert == cert.read_bytes() and tls.client_private_key == key.read_bytes()
    assert tls.server_root_ca_cert == ca.read_bytes() and tls.domain == "prod.tmprl.cloud"
    assert settings.connect_config["api_key"] == API_KEY
    shown = repr(settings) + str(settings)
    assert API_KEY not in shown and "client.key" not in shown and "BEGIN" not in shown
    from shared.logging import get_logger

    with caplog.at_level(logging.INFO):
        get_logger("test").info("temporal.connecting", settings=settings, api_key=API_KEY)
    assert API_KEY not in caplog.text


def test_plain_settings_default_to_local_without_tls() -> None:
    settings = TemporalSettings.from_env({})
    assert (settings.address, settings.namespace) == ("localhost:7233", "default")
    assert not settings.uses_tls and not settings.uses_api_key
    assert "api_key=unset" in repr(settings)


def test_tls_can_be_enabled_without_client_certificates() -> None:
    settings = TemporalSettings.from_env({"TEMPORAL_TLS": "true", "TEMPORAL_API_KEY": API_KEY})
    assert settings.uses_tls and API_KEY not in repr(settings)


def test_bad_tls_settings_fail_without_echoing_secrets(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        TemporalSettings.from_env(
            {
                "TEMPORAL_API_KEY": API_KEY,
                "TEMPORAL_TLS_CLIENT_CERT_PATH": str(tmp_path / "missing.pem"),
                "TEMPORAL_TLS_CLIENT_KEY_PATH": str(tmp_path / "missing.key"),
            }
        )
    assert API_KEY not in str(err.value)
