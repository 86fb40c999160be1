"""Typed manifests (shared/manifests.py): round trips, files written before versioning, and
what each owner does with a damaged file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from services.trainer.run_folder import checkpoints, fencing, ownership
from services.trainer.tracking import trackers
from shared import aliases, onnx_export
from shared.errors import MODEL_LOAD_ERROR, RUN_NOT_FOUND
from shared.manifests import (
    MANIFESTS,
    AliasPointer,
    CheckpointFile,
    CheckpointManifest,
    CheckTexts,
    ExportCheck,
    ExportManifest,
    FenceRecord,
    Manifest,
    ManifestError,
    OwnerRecord,
    TrackingRecord,
)

ROOT = Path(__file__).resolve().parents[2]
LEGACY_CHECKPOINT = (
    ROOT
    / "tests/fixtures/legacy_v1/runs/legacy-run-1-tiny-bert/checkpoints/attempt-1/checkpoint-13"
)

SAMPLES: list[Manifest] = [
    ExportManifest(
        served_graph="model.int8.onnx",
        tokenizer="tokenizer.json",
        input_names=["input_ids", "attention_mask"],
        label_names=["negative", "positive"],
        pad_token_id=0,
        max_position_embeddings=512,
        opset=17,
        check=ExportCheck(
            texts=40,
            fp32_texts_compared_with_pytorch=20,
            max_fp32_logit_difference=1e-6,
            int8_disagreements=0,
            max_int8_disagreement=0.005,
        ),
        versions={"torch": "2.5.0"},
        export_seconds=3.2,
        source_commit="ab" * 32,
    ),
    CheckTexts(texts=["a text", "another"]),
    OwnerRecord(workflow_id="wf-a", pid=42),
    FenceRecord(workflow_id="wf-a", workflow_run_id="run-1", attempt=3),
    CheckpointManifest(
        step=13,
        attempt=1,
        config_digest="4e7622f494b0c923",
        files={"trainer_state.json": CheckpointFile(size=10, sha256="0" * 64)},
    ),
    AliasPointer(alias="production", run_id="exp-run-0-m", promoted_at="2025-01-01T00:00:00"),
    TrackingRecord(tracking_key="0f" * 16, experiment="exp"),
]


def _kind(sample: Manifest) -> str:
    return type(sample).__name__


@pytest.mark.parametrize("sample", SAMPLES, ids=_kind)
def test_a_manifest_reads_back_what_it_wrote(sample: Manifest, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "manifest.json"
    sample.write(path)
    assert type(sample).read(path) == sample
    written = json.loads(path.read_text(encoding="utf-8"))
    version_key = "format_version" if isinstance(sample, ExportManifest) else "version"
    # Every sample is of version 1 (an export of another task than single-label is written
    # as version 2: tests/inferencer/test_tasks.py).
    assert written[version_key] == sample.version == 1 <= type(sample).VERSION
    # Atomic: no temporary sibling is left behind.
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]


def test_every_manifest_kind_is_versioned_and_sampled() -> None:
    assert {type(sample) for sample in SAMPLES} == set(MANIFESTS)
    for kind in MANIFESTS:
        assert "version" in kind.model_fields and kind.VERSION >= 1 and kind.KIND != "manifest"


@pytest.mark.parametrize("sample", SAMPLES, ids=_kind)
def test_a_file_written_before_versioning_reads_as_version_1(
    sample: Manifest, tmp_path: Path
) -> None:
    old = {k: v for k, v in sample.to_json().items() if k not in ("version", "format_version")}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    read = type(sample).read(path)
    assert read.version == 1
    assert read == sample


def test_the_legacy_checkpoint_manifest_reads_and_verifies() -> None:
    raw = json.loads((LEGACY_CHECKPOINT / checkpoints.MANIFEST_NAME).read_text())
    assert "version" not in raw
    manifest = CheckpointManifest.read(LEGACY_CHECKPOINT / checkpoints.MANIFEST_NAME)
    assert (manifest.version, manifest.step, manifest.attempt) == (1, 13, 1)
    assert manifest.config_digest == raw["config_digest"]
    assert manifest.files["model.safetensors"].size == raw["files"]["model.safetensors"]["size"]
    found = checkpoints.verify(LEGACY_CHECKPOINT, {raw["config_digest"]})
    assert found is not None and (found.step, found.attempt) == (13, 1)


def test_the_first_export_manifest_format_still_reads(tmp_path: Path) -> None:
    """As the first exports (inside the commit) wrote it: no ``source_commit``, a shorter
    ``check`` block."""
    export = tmp_path / "run" / onnx_export.EXPORT_DIR
    export.mkdir(parents=True)
    first = {
        "format_version": 1,
        "served_graph": "model.int8.onnx",
        "fp32_graph": "model.onnx",
        "tokenizer": "tokenizer.json",
        "input_names": ["input_ids", "attention_mask", "token_type_ids"],
        "label_names": ["negative", "positive"],
        "pad_token_id": 0,
        "max_position_embeddings": 512,
        "opset": 17,
        "check": {
            "texts": 200,
            "max_fp32_logit_difference": 2.1e-6,
            "int8_disagreements": 0,
            "max_int8_disagreement": 0.005,
        },
        "versions": {"torch": "2.4.1", "transformers": "4.44.0", "onnxruntime": "1.19.2"},
        "export_seconds": 12.5,
    }
    (export / onnx_export.EXPORT_MANIFEST).write_text(json.dumps(first), encoding="utf-8")
    manifest = onnx_export.load_manifest(tmp_path / "run")
    assert manifest.source_commit is None and manifest.served_graph == "model.int8.onnx"
    assert manifest.check is not None and manifest.check.fp32_texts_compared_with_pytorch is None
    # Made inside the commit: part of it, so current whatever the run's digest.
    assert manifest == onnx_export.read_manifest(tmp_path / "run")


def test_unknown_keys_are_ignored_so_an_older_release_reads_a_newer_file(tmp_path: Path) -> None:
    path = tmp_path / ".owner.json"
    path.write_text(json.dumps({"version": 1, "workflow_id": "wf", "host": "x"}))
    assert OwnerRecord.read(path) == OwnerRecord(workflow_id="wf")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "Invalid JSON"),
        ("[]", "Input should be an object"),
        ('{"version": 1}', "workflow_id: Field required"),
        ('{"workflow_id": "wf", "pid": "many"}', "pid: Input should be a valid integer"),
        ('{"version": 2, "workflow_id": "wf"}', "written by a newer release"),
        ('{"version": 0, "workflow_id": "wf"}', "versions start at 1"),
    ],
)
def test_a_malformed_file_is_a_manifest_error_naming_the_file_and_the_field(
    tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / ".owner.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ManifestError, match="is not a valid run owner file") as raised:
        OwnerRecord.read(path)
    assert str(path) in str(raised.value) and reason in str(raised.value)


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FenceRecord.read(tmp_path / "absent.json")


@pytest.mark.parametrize("name", ["../model.onnx", "/etc/passwd", "..", ""])
def test_an_export_manifest_names_only_files_inside_the_export(name: str) -> None:
    data = SAMPLES[0].to_json() | {"served_graph": name}
    with pytest.raises(ManifestError, match="served_graph"):
        ExportManifest.parse(json.dumps(data), "export.json")


def test_create_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / ".owner.json"
    OwnerRecord(workflow_id="first").create(path)
    with pytest.raises(FileExistsError):
        OwnerRecord(workflow_id="second").create(path)
    assert OwnerRecord.read(path).workflow_id == "first"


# What each owner of a file does with a damaged one: unchanged by the typed models.


def test_a_damaged_owner_file_means_no_owner(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ownership.OWNER_FILE).write_text('{"pid": 1}', encoding="utf-8")
    assert ownership.owner_of(run_dir) is None
    ownership.claim(run_dir, "wf", is_running=lambda _: True)  # nobody to wait for
    assert OwnerRecord.read(run_dir / ownership.OWNER_FILE).workflow_id == "wf"


def test_an_owner_file_without_a_version_or_pid_still_names_the_owner(tmp_path: Path) -> None:
    (tmp_path / ownership.OWNER_FILE).write_text('{"workflow_id": "wf-a"}', encoding="utf-8")
    assert ownership.owner_of(tmp_path) == "wf-a"


def test_a_damaged_fence_means_nobody_holds_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    token = fencing.AttemptToken("wf", "run-1", 2)
    fencing.RunFence(run_dir, token).claim()
    fence = tmp_path / fencing.FENCES_DIR / "run.json"
    assert FenceRecord.read(fence) == FenceRecord(
        workflow_id="wf", workflow_run_id="run-1", attempt=2
    )
    assert fencing.holder(run_dir) == token
    fence.write_text('{"workflow_id": "wf", "workflow_run_id": "run-1"}', encoding="utf-8")
    assert fencing.holder(run_dir) is None
    # Written before versioning: still holds.
    fence.write_text(json.dumps({"workflow_id": "wf", "workflow_run_id": "run-1", "attempt": 2}))
    assert fencing.holder(run_dir) == token


def test_a_damaged_checkpoint_manifest_is_not_resumed_from(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint-5"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}", encoding="utf-8")
    checkpoints.write_manifest(checkpoint, step=5, attempt=1, config_digest="digest")
    assert checkpoints.verify(checkpoint, {"digest"}) is not None
    manifest = json.loads((checkpoint / checkpoints.MANIFEST_NAME).read_text())
    del manifest["files"]
    (checkpoint / checkpoints.MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    assert checkpoints.verify(checkpoint, {"digest"}) is None


def test_a_damaged_export_manifest_is_no_export_and_a_model_load_error(tmp_path: Path) -> None:
    from services.inferencer.classifiers import OnnxClassifier

    run_dir = tmp_path / "run"
    (run_dir / onnx_export.EXPORT_DIR).mkdir(parents=True)
    path = run_dir / onnx_export.EXPORT_DIR / onnx_export.EXPORT_MANIFEST
    path.write_text('{"format_version": 1, "served_graph": "model.onnx"}', encoding="utf-8")
    assert onnx_export.read_manifest(run_dir) is None
    assert not onnx_export.is_current_export(run_dir)
    with pytest.raises(ManifestError, match="tokenizer: Field required"):
        onnx_export.load_manifest(run_dir)
    with pytest.raises(ApplicationError, match="could not be loaded.*ManifestError") as raised:
        OnnxClassifier(run_dir)
    assert raised.value.type == MODEL_LOAD_ERROR


def test_damaged_check_texts_are_no_texts(tmp_path: Path) -> None:
    onnx_export.write_check_texts(tmp_path, ["a", "b"])
    assert onnx_export.read_check_texts(tmp_path) == ["a", "b"]
    (tmp_path / onnx_export.CHECK_TEXTS_FILE).write_text('{"texts": "a"}', encoding="utf-8")
    assert onnx_export.read_check_texts(tmp_path) == []


def test_a_damaged_alias_pointer_is_run_not_found_and_left_out_of_listings(
    tmp_path: Path,
) -> None:
    pointer = aliases.pointer_path(tmp_path, "production")
    pointer.parent.mkdir(parents=True)
    pointer.write_text('{"alias": "production"}', encoding="utf-8")
    with pytest.raises(ApplicationError, match="unreadable pointer") as raised:
        aliases.read_pointer(tmp_path, "production")
    assert raised.value.type == RUN_NOT_FOUND
    assert aliases.list_aliases(tmp_path) == {}


def test_a_damaged_tracking_file_means_an_untracked_run(tmp_path: Path) -> None:
    (tmp_path / trackers.TRACKING_FILE).write_text('{"tracking_key": "k1", "experiment": "e"}')
    assert trackers.read_tracking_file(tmp_path) == TrackingRecord(
        tracking_key="k1", experiment="e"
    )
    (tmp_path / trackers.TRACKING_FILE).write_text('{"tracking_key": "", "experiment": "e"}')
    assert trackers.read_tracking_file(tmp_path) is None


OWNERS = [
    "shared/onnx_export.py",
    "shared/aliases.py",
    "services/inferencer/classifiers.py",
    "services/trainer/activities/export.py",
    "services/trainer/run_folder/ownership.py",
    "services/trainer/run_folder/fencing.py",
    "services/trainer/run_folder/checkpoints.py",
    "services/trainer/tracking/trackers.py",
    "services/trainer/tracking/model_registry.py",
]


@pytest.mark.parametrize("path", OWNERS)
def test_the_modules_that_own_a_manifest_parse_it_only_through_its_model(path: str) -> None:
    source = (ROOT / path).read_text(encoding="utf-8")
    for raw in ("json.load", "model_validate_json", "write_json_atomic"):
        assert raw not in source, f"{path} uses {raw}: read and write through shared.manifests"
