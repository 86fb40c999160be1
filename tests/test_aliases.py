"""The alias store on real files: promotion, resolution, listing, atomicity, refusals."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from shared import aliases
from shared.errors import INVALID_CONFIG, RUN_NOT_FOUND
from shared.runs import RUN_MANIFEST, list_runs, require_complete_run, write_json_atomic
from shared.types import BertInferenceRequest


def complete_run(runs_root: Path, run_id: str) -> str:
    write_json_atomic(runs_root / run_id / RUN_MANIFEST, {"run_id": run_id})
    return run_id


def error_of(call: object, *args: object) -> ApplicationError:
    with pytest.raises(ApplicationError) as raised:
        call(*args)  # type: ignore[operator]
    assert raised.value.non_retryable
    return raised.value


def test_promote_resolve_and_repromote(runs_root: Path) -> None:
    first = complete_run(runs_root, "exp-run-0-m")
    second = complete_run(runs_root, "exp-run-1-m")

    created = aliases.promote(runs_root, first, "production")
    assert (created.alias, created.run_id, created.previous_run_id) == (
        "production",
        first,
        None,
    )
    assert aliases.resolve_alias(runs_root, "production") == first
    assert (runs_root / "_aliases" / "production.json").is_file()

    moved = aliases.promote(runs_root, second, "production")
    assert moved.previous_run_id == first
    assert aliases.resolve_alias(runs_root, "production") == second
    assert aliases.list_aliases(runs_root) == {"production": second}


def test_a_retried_promotion_reports_the_same_previous_run(runs_root: Path) -> None:
    first = complete_run(runs_root, "exp-run-0-m")
    second = complete_run(runs_root, "exp-run-1-m")
    aliases.promote(runs_root, first, "prod", promoted_by="wf-1")
    answer = aliases.promote(runs_root, second, "prod", promoted_by="wf-2")
    retried = aliases.promote(runs_root, second, "prod", promoted_by="wf-2")
    assert answer.previous_run_id == retried.previous_run_id == first
    # A new promotion of the run the alias already serves names it as its predecessor.
    again = aliases.promote(runs_root, second, "prod", promoted_by="wf-3")
    assert again.previous_run_id == second


def test_missing_and_incomplete_runs_are_not_promoted(runs_root: Path) -> None:
    missing = error_of(aliases.promote, runs_root, "never-trained", "prod")
    assert missing.type == RUN_NOT_FOUND and "does not exist" in missing.message
    (runs_root / "half-written").mkdir()
    incomplete = error_of(aliases.promote, runs_root, "half-written", "prod")
    assert incomplete.type == RUN_NOT_FOUND and "incomplete" in incomplete.message
    assert aliases.list_aliases(runs_root) == {}


@pytest.mark.parametrize("alias", ["", "_hidden", ".dot", "a/b", "../x", "sp ace", "x" * 101])
def test_bad_aliases_are_refused(runs_root: Path, alias: str) -> None:
    run_id = complete_run(runs_root, "exp-run-0-m")
    error = error_of(aliases.promote, runs_root, run_id, alias)
    assert error.type == INVALID_CONFIG and "alias" in error.message
    assert not (runs_root / "_aliases").exists()


def test_unknown_alias_is_run_not_found(runs_root: Path) -> None:
    error = error_of(aliases.resolve_alias, runs_root, "staging")
    assert error.type == RUN_NOT_FOUND
    assert "bert-finetune promote RUN_ID staging" in error.message


def test_an_inference_request_by_alias_names_the_current_run(runs_root: Path) -> None:
    run_id = complete_run(runs_root, "exp-run-0-m")
    aliases.promote(runs_root, run_id, "prod")
    by_alias = BertInferenceRequest(alias="prod", texts=["x"])
    resolved = aliases.resolve_request_alias(runs_root, by_alias)
    assert (resolved.run_id, resolved.alias) == (run_id, None)
    by_run = BertInferenceRequest(run_id=run_id, texts=["x"])
    assert aliases.resolve_request_alias(runs_root, by_run) is by_run


def test_an_alias_whose_run_was_removed_is_named_in_the_error(runs_root: Path) -> None:
    from services.inferencer.activities import InferenceActivities
    from services.inferencer.model_cache import ModelCache

    aliases.promote(runs_root, complete_run(runs_root, "gone-run"), "production")
    (runs_root / "gone-run" / RUN_MANIFEST).unlink()  # removed (or being retrained)
    serve = InferenceActivities(runs_root, ModelCache(1)).run_bert_inference

    error = error_of(serve, BertInferenceRequest(alias="production", texts=["x"]))
    assert error.type == RUN_NOT_FOUND
    assert "@production" in error.message and "'gone-run'" in error.message
    assert "bert-finetune promote RUN_ID production" in error.message
    # By run id the error is the run's own, as before.
    assert (
        "@production"
        not in error_of(serve, BertInferenceRequest(run_id="gone-run", texts=["x"])).message
    )


@pytest.mark.parametrize("name", ["_aliases", "_models", "_x"])
def test_underscore_names_are_never_runs(runs_root: Path, name: str) -> None:
    run_id = complete_run(runs_root, "exp-run-0-m")
    aliases.promote(runs_root, run_id, "prod")
    # Even a folder that looks like a complete run is not one when its name starts with _.
    complete_run(runs_root, name)
    assert [run.run_id for run in list_runs(runs_root)] == [run_id]
    error = error_of(require_complete_run, runs_root, name)
    assert error.type == INVALID_CONFIG and "letter or digit" in error.message


def test_a_damaged_pointer_is_skipped_by_listing_and_named_on_resolve(runs_root: Path) -> None:
    run_id = complete_run(runs_root, "exp-run-0-m")
    aliases.promote(runs_root, run_id, "good")
    (runs_root / "_aliases" / "broken.json").write_text("{not json", encoding="utf-8")
    assert aliases.list_aliases(runs_root) == {"good": run_id}
    error = error_of(aliases.resolve_alias, runs_root, "broken")
    assert error.type == RUN_NOT_FOUND and "promote a run to it again" in error.message
    repaired = aliases.promote(runs_root, run_id, "broken")
    assert repaired.previous_run_id is None
    assert aliases.resolve_alias(runs_root, "broken") == run_id


def test_readers_never_see_a_missing_alias_during_promotions(runs_root: Path) -> None:
    """A reader thread resolves the alias as fast as it can while another thread promotes
    it back and forth: every read returns one of the two runs, none fails."""
    targets = [complete_run(runs_root, f"exp-run-{i}-m") for i in range(2)]
    aliases.promote(runs_root, targets[0], "prod")
    stop = threading.Event()
    seen: dict[str, int] = {}
    failures: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                run_id = aliases.resolve_alias(runs_root, "prod")
            except BaseException as err:  # any failure is the bug this test looks for
                failures.append(err)
                return
            seen[run_id] = seen.get(run_id, 0) + 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            aliases.promote(runs_root, targets[i % 2], "prod")
    finally:
        stop.set()
        reader.join()
    assert failures == []
    assert set(seen) <= set(targets) and sum(seen.values()) > 0
    # Promotion leaves no temporary files behind.
    assert sorted(p.name for p in (runs_root / "_aliases").iterdir()) == [".lock", "prod.json"]


def test_concurrent_promotions_each_report_the_other(runs_root: Path) -> None:
    """Promotions of one alias are serialised: chained previous_run_ids cover every write."""
    targets = [complete_run(runs_root, f"exp-run-{i}-m") for i in range(8)]
    results = []
    lock = threading.Lock()

    def promote(run_id: str) -> None:
        result = aliases.promote(runs_root, run_id, "prod")
        with lock:
            results.append(result)

    threads = [threading.Thread(target=promote, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    previous = [r.previous_run_id for r in results]
    assert previous.count(None) == 1  # exactly one promotion created the alias
    assert sorted(p for p in previous if p) == sorted(
        r.run_id for r in results if r.run_id != aliases.resolve_alias(runs_root, "prod")
    )
