"""Run identity, the legacy checkpoint digest and run.json records: pure functions."""

from __future__ import annotations

import json
from pathlib import Path

from shared.run_record import (
    SCHEMA_VERSION,
    RunRecord,
    identity_fields,
    run_identity,
    schema_1_checkpoint_digest,
)
from shared.runs import list_runs, write_record
from shared.types import BertFineTuneConfig
from tests.helpers.runs import sample_record

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v1"
LEGACY_FINISHED = FIXTURES / "runs" / "legacy-run-0-tiny-bert"
LEGACY_PARTIAL = FIXTURES / "runs" / "legacy-run-1-tiny-bert"

BASE = {"model_name": "tiny-bert", "train_file": "train.csv", "num_epochs": 2}


def test_identity_ignores_execution_settings_and_fields_at_their_default() -> None:
    plain = BertFineTuneConfig(**BASE)
    explicit = BertFineTuneConfig(**BASE, weight_decay=0.0, warmup_ratio=0.0)
    elsewhere = BertFineTuneConfig(**BASE, use_gpu=False, checkpoint_steps=7)
    assert run_identity(plain, "data") == run_identity(explicit, "data")
    assert run_identity(plain, "data") == run_identity(elsewhere, "data")
    assert "weight_decay" not in identity_fields(explicit)
    assert "use_gpu" not in identity_fields(elsewhere)


def test_identity_changes_with_what_is_learned_and_the_data() -> None:
    plain = BertFineTuneConfig(**BASE)
    assert run_identity(plain, "data") != run_identity(plain, "other data")
    for change in ({"learning_rate": 1e-3}, {"weight_decay": 0.01}, {"num_epochs": 3}):
        changed = BertFineTuneConfig(**{**BASE, **change})
        assert run_identity(changed, "data") != run_identity(plain, "data"), change


def test_schema_1_checkpoint_digest_reproduces_the_sealed_fixture() -> None:
    """The digest version 1 sealed the fixture's checkpoint with, from today's config type."""
    manifest = json.loads(
        (
            LEGACY_PARTIAL / "checkpoints/attempt-1/checkpoint-13/bert_finetune_checkpoint.json"
        ).read_text()
    )
    finished = RunRecord.from_json((LEGACY_FINISHED / "run.json").read_bytes())
    partial_config = finished.config.model_copy(update={"num_epochs": 3})
    digest = schema_1_checkpoint_digest(partial_config, finished.data_fingerprint)
    assert digest == manifest["config_digest"]
    # A config using a field version 1 did not have cannot match any version 1 checkpoint.
    assert (
        schema_1_checkpoint_digest(
            partial_config.model_copy(update={"warmup_ratio": 0.1}), finished.data_fingerprint
        )
        is None
    )


def test_a_schema_1_record_reads_as_a_record_without_its_duplicate_metrics_block() -> None:
    raw = json.loads((LEGACY_FINISHED / "run.json").read_text())
    assert "metrics" in raw and "schema_version" not in raw
    record = RunRecord.from_json(json.dumps(raw))
    assert record.schema_version == 1
    assert record.global_step == raw["metrics"]["global_step"] == 20
    assert record.epochs_completed == record.trained_epochs() == 2
    assert record.result.train_loss == raw["result"]["train_loss"]
    # Trained before group_by_length existed: it counts as false (shared.run_record).
    assert record.identity == run_identity(
        BertFineTuneConfig.model_validate({**raw["config"], "group_by_length": False}),
        raw["data_fingerprint"],
    )


def _record(run_id: str) -> RunRecord:
    return sample_record(run_id, ["a", "b"])


def test_new_records_carry_the_schema_version_and_round_trip(tmp_path: Path) -> None:
    record = _record("r-1")
    write_record(tmp_path, record)
    raw = json.loads((tmp_path / "run.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION
    assert "metrics" not in raw, "the record must not repeat result in a metrics block"
    assert RunRecord.from_json((tmp_path / "run.json").read_bytes()) == record


def test_listing_skips_reserved_names_and_reports_unreadable_records(tmp_path: Path) -> None:
    for name in ("_aliases", ".final-attempt-1", "good", "partial", "broken"):
        (tmp_path / name).mkdir()
    write_record(tmp_path / "good", _record("good"))
    write_record(tmp_path / "_aliases", _record("_aliases"))
    (tmp_path / "broken" / "run.json").write_text("{not json")
    runs = {run.run_id: run for run in list_runs(tmp_path)}
    assert sorted(runs) == ["broken", "good", "partial"]
    assert runs["good"].complete and runs["good"].record is not None
    assert not runs["partial"].complete and runs["partial"].problem is None
    assert not runs["broken"].complete and "unreadable" in (runs["broken"].problem or "")
