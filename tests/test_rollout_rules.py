"""Rollout rules without a server: input validation, the alias pointer's rollout fields and
versions, routing by draw, the gate's comparison rule, per-task scoring (the trainer's
metrics) and per-task shadow agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

from services.inferencer.gate import GateRows, read_rows, score
from services.inferencer.shadow import agreement
from shared import aliases
from shared.errors import DATASET_ERROR, INVALID_CONFIG, PROMOTION_REFUSED
from shared.manifests import AliasPointer
from shared.rollout_types import GateScores
from shared.run_record import RunRecord
from shared.types import BertFineTuneConfig, BertFineTuneResult, BertPromoteInput
from tests.test_aliases import complete_run


def refusal(**fields: object) -> str:
    with pytest.raises(ValidationError) as err:
        BertPromoteInput.model_validate(fields)
    return str(err.value)


def test_promote_input_combinations_are_validated_with_the_fix() -> None:
    assert BertPromoteInput(alias="prod", rollback=True).run_id is None
    assert BertPromoteInput(run_id="r", alias="prod", canary_percent=10).canary_percent == 10
    assert "run_id: required field is missing" in refusal(alias="prod")
    assert "a canary (answers a share of requests) and a shadow" in refusal(
        run_id="r", alias="prod", canary_percent=5, shadow=True
    )
    message = refusal(alias="prod", rollback=True, canary_percent=5, shadow=True)
    assert "rollback removes the alias's canary or shadow; it takes no canary_percent, shadow" in (
        message
    )
    for bad in (0, 100, -3):
        assert "canary_percent" in refusal(run_id="r", alias="prod", canary_percent=bad)
    gate = {"metric": "eval_loss", "data_file": "held_out.csv"}
    assert "is not a metric a gate can compare" in refusal(run_id="r", alias="p", gate=gate)
    gate = {"metric": "eval_f1_macro", "data_file": "held_out.csv", "min_delta": -0.1}
    assert "min_delta" in refusal(run_id="r", alias="p", gate=gate)
    assert "data_file" in refusal(run_id="r", alias="p", gate={"metric": "eval_f1_macro"})
    assert "Extra inputs" in refusal(run_id="r", alias="p", canary=10)


def test_the_gate_rule_per_direction() -> None:
    def scores(metric: str, candidate: float, current: float) -> GateScores:
        return GateScores(
            metric=metric,
            candidate_run_id="new",
            candidate_score=candidate,
            current_run_id="old",
            current_score=current,
            rows=10,
        )

    assert scores("eval_f1_macro", 0.8, 0.8).passes(0.0)
    assert not scores("eval_f1_macro", 0.8, 0.8).passes(0.01)
    assert scores("eval_f1_macro", 0.82, 0.8).passes(0.01)
    assert not scores("eval_f1_macro", 0.79, 0.8).passes(0.0)
    assert scores("eval_mse", 0.3, 0.5).passes(0.1)
    assert not scores("eval_mse", 0.45, 0.5).passes(0.1)
    message = scores("eval_mse", 0.45, 0.5).refusal("prod", 0.1)
    assert "eval_mse 0.4500 for the candidate vs 0.5000 for the current run 'old'" in message
    assert "needed at most 0.4000" in message and "lower is better" in message


def test_pointers_without_a_rollout_stay_version_1_and_old_files_read(tmp_path: Path) -> None:
    first, second = complete_run(tmp_path, "run-a"), complete_run(tmp_path, "run-b")
    path = aliases.pointer_path(tmp_path, "prod")
    path.parent.mkdir(parents=True)
    # A pointer written before rollouts (and before ``version``) reads as it always did.
    path.write_text(json.dumps({"alias": "prod", "run_id": first, "promoted_at": "x"}))
    assert aliases.resolve_alias(tmp_path, "prod") == first
    canary = BertPromoteInput(run_id=second, alias="prod", canary_percent=25)
    result = aliases.apply_rollout(tmp_path, canary, "wf-1")
    assert (result.run_id, result.canary_run_id, result.canary_percent) == (first, second, 25)
    written = json.loads(path.read_text())
    assert written["version"] == 2 and written["canary_run_id"] == second
    # A retry of the same workflow run answers what it wrote.
    assert aliases.apply_rollout(tmp_path, canary, "wf-1") == result
    rolled = aliases.apply_rollout(tmp_path, BertPromoteInput(alias="prod", rollback=True), "wf-2")
    assert (rolled.run_id, rolled.canary_run_id) == (first, None)
    assert json.loads(path.read_text())["version"] == 1
    with pytest.raises(ApplicationError) as err:
        aliases.apply_rollout(tmp_path, BertPromoteInput(alias="prod", rollback=True), "wf-3")
    assert err.value.type == INVALID_CONFIG and "has no canary or shadow to roll back" in str(
        err.value
    )
    with pytest.raises(ValidationError, match="written by a newer release"):
        AliasPointer.model_validate({"version": 3, "alias": "p", "run_id": "r", "promoted_at": ""})


def test_rollout_refusals_leave_the_pointer_alone(tmp_path: Path) -> None:
    first, second = complete_run(tmp_path, "run-a"), complete_run(tmp_path, "run-b")
    shadow = BertPromoteInput(run_id=second, alias="prod", shadow=True)
    with pytest.raises(ApplicationError, match="does not exist yet"):
        aliases.apply_rollout(tmp_path, shadow)
    with pytest.raises(ApplicationError, match="nothing to roll back"):
        aliases.apply_rollout(tmp_path, BertPromoteInput(alias="prod", rollback=True))
    aliases.promote(tmp_path, first, "prod")
    before = aliases.pointer_path(tmp_path, "prod").read_bytes()
    with pytest.raises(ApplicationError, match="already serves alias 'prod'"):
        aliases.apply_rollout(tmp_path, BertPromoteInput(run_id=first, alias="prod", shadow=True))
    with pytest.raises(ApplicationError) as moved:
        aliases.apply_rollout(tmp_path, shadow, expected_current="other", check_current=True)
    assert moved.value.type == PROMOTION_REFUSED and "moved from 'other'" in str(moved.value)
    assert aliases.pointer_path(tmp_path, "prod").read_bytes() == before
    # A shadow, then a canary of another run replaces it; promoting the canary completes it.
    aliases.apply_rollout(tmp_path, shadow)
    third = complete_run(tmp_path, "run-c")
    result = aliases.apply_rollout(
        tmp_path, BertPromoteInput(run_id=third, alias="prod", canary_percent=5)
    )
    assert (result.shadow_run_id, result.canary_run_id) == (None, third)
    done = aliases.promote(tmp_path, third, "prod")
    assert (done.run_id, done.previous_run_id) == (third, first)
    assert aliases.read_pointer(tmp_path, "prod").canary_run_id is None  # type: ignore[union-attr]


def test_routing_by_draw_and_by_version(tmp_path: Path) -> None:
    first, second = complete_run(tmp_path, "run-a"), complete_run(tmp_path, "run-b")
    aliases.promote(tmp_path, first, "prod")
    canary = BertPromoteInput(run_id=second, alias="prod", canary_percent=30)
    aliases.apply_rollout(tmp_path, canary)
    route = aliases.route_alias
    assert route(tmp_path, "prod", 0.0).run_id == second
    assert route(tmp_path, "prod", 0.2999).run_id == second
    assert route(tmp_path, "prod", 0.30).run_id == first
    assert route(tmp_path, "prod", None).run_id == first  # no draw: the alias's run
    assert route(tmp_path, "prod", 0.9, pinned=second).run_id == second
    assert route(tmp_path, "prod", 0.0, pinned=first).run_id == first
    assert route(tmp_path, "prod", 0.9).versions == [first, second]


def make_record(run_id: str, task: str, labels: list[str], **config: object) -> RunRecord:
    """A valid ``run.json`` of ``task`` with ``labels`` (nothing trained)."""
    settings = BertFineTuneConfig(task=task, text_column="text", label_column="label", **config)
    result = BertFineTuneResult(
        run_id=run_id,
        config=settings,
        train_loss=0.1,
        eval_accuracy=None,
        training_time_seconds=1.0,
        num_parameters=1,
        model_dir=f"/runs/{run_id}",
        num_train_samples=1,
        train_samples_per_second=1.0,
        label_names=labels,
        task=task,
    )
    return RunRecord(
        run_id=run_id, config=settings, data_fingerprint="x", label_names=labels, result=result
    )


def test_different_tasks_labels_or_pairs_cannot_be_compared() -> None:
    base = make_record("a", "single_label_classification", ["neg", "pos"])
    assert (
        aliases.check_same_outputs(
            make_record("b", "single_label_classification", ["pos", "neg"]), base, "gate"
        )
        is None
    )  # the same label set in another order compares fine
    for other, problem in (
        (make_record("b", "regression", []), "does regression"),
        (make_record("c", "single_label_classification", ["NEG", "POS"]), "labels"),
        (
            make_record("d", "single_label_classification", ["neg", "pos"], text_pair_column="p"),
            "text pairs",
        ),
    ):
        with pytest.raises(ApplicationError) as err:
            aliases.check_same_outputs(other, base, "gate")
        assert err.value.type == INVALID_CONFIG and problem in str(err.value)
        assert err.value.message.startswith("gate: run")


def test_shadow_agreement_per_task() -> None:
    single = [{"label": "a"}, {"label": "b"}, {"label": "a"}]
    assert agreement("single_label_classification", single, [{"label": "a"}] * 3) == (3, 2)
    multi = [{"labels": ["x", "y"]}, {"labels": []}]
    assert agreement("multi_label_classification", multi, [{"labels": ["y", "x"]}] * 2) == (2, 1)
    scores = [{"score": 1.0}, {"score": 10.0}, {"score": 0.0}]
    shadow = [{"score": 1.04}, {"score": 10.4}, {"score": 0.2}]
    assert agreement("regression", scores, shadow) == (3, 2)
    tags = [{"tags": ["O", "B-PER", "I-PER"]}, {"tags": ["B-LOC"]}]
    other = [{"tags": ["O", "B-PER", "O"]}, {"tags": ["B-LOC"]}]
    assert agreement("token_classification", tags, other) == (4, 3)


def _record(task: str, labels: list[str], **config: object) -> RunRecord:
    return make_record("candidate", task, labels, **config)


@pytest.mark.parametrize(
    ("task", "labels", "rows", "predictions", "metric", "expected"),
    [
        (
            "single_label_classification",
            ["neg", "pos"],
            [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}],
            [{"label": "pos"}, {"label": "pos"}],
            "eval_accuracy",
            0.5,
        ),
        (
            "multi_label_classification",
            ["x", "y"],
            [{"text": "a", "label": "x|y"}, {"text": "b", "label": None}],
            [{"labels": ["x", "y"]}, {"labels": []}],
            "eval_subset_accuracy",
            1.0,
        ),
        (
            "regression",
            [],
            [{"text": "a", "label": "1.0"}, {"text": "b", "label": 3}],
            [{"score": 2.0}, {"score": 3.0}],
            "eval_mse",
            0.5,
        ),
        (
            "token_classification",
            ["B-PER", "I-PER", "O"],
            [{"text": "john smith ran", "label": "B-PER I-PER O"}],
            [{"tags": ["B-PER", "O", "O"]}],
            "eval_accuracy",
            2 / 3,
        ),
    ],
)
def test_gate_scores_use_the_trainers_metrics(
    task: str, labels: list[str], rows: list, predictions: list, metric: str, expected: float
) -> None:
    separator = {"label_separator": "|"} if task == "multi_label_classification" else {}
    parsed = GateRows(rows, _record(task, labels, **separator), "held_out.csv")
    assert score(metric, parsed, labels, predictions) == pytest.approx(expected)


def test_gate_files_are_read_in_the_candidates_columns(tmp_path: Path) -> None:
    record = _record("single_label_classification", ["neg", "pos"])
    jsonl = tmp_path / "held_out.jsonl"
    jsonl.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    assert GateRows(read_rows(jsonl, "held_out.jsonl"), record, "x").truth == ["pos", "neg"]
    csv_file = tmp_path / "held_out.csv"
    csv_file.write_text("sentence,label\ngood,pos\n")
    with pytest.raises(ApplicationError) as err:
        GateRows(read_rows(csv_file, "held_out.csv"), record, "held_out.csv")
    assert err.value.type == DATASET_ERROR and "has no column 'text'" in str(err.value)
    csv_file.write_text("text,label\ngood,maybe\n")
    with pytest.raises(ApplicationError, match="'maybe' is not one of the runs' labels"):
        GateRows(read_rows(csv_file, "held_out.csv"), record, "held_out.csv")
    with pytest.raises(ApplicationError, match="unsupported file type '.txt'"):
        read_rows(tmp_path / "held_out.txt", "held_out.txt")
