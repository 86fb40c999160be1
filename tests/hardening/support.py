"""Helpers shared by the hardening tests: raw JSON starts, outcome checks, CLI runs."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
import traceback
import uuid
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import Payload, Payloads, WorkflowType
from temporalio.api.enums.v1 import EventType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import StartWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from tests.hardening.cases import Case, RawJSON

REPO_ROOT = Path(__file__).resolve().parents[2]
# Bad input must be answered in seconds; a workflow task retrying forever would hit this.
FAIL_FAST_SECONDS = 20.0


def encode_input(value: Any) -> bytes:
    return value.encode() if isinstance(value, RawJSON) else json.dumps(value).encode()


async def start_raw(
    client: Client, workflow_type: str, task_queue: str, value: Any, workflow_id: str
) -> None:
    """Start a workflow with exactly these JSON bytes as its argument, as any client could."""
    await client.workflow_service.start_workflow_execution(
        StartWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_id=workflow_id,
            workflow_type=WorkflowType(name=workflow_type),
            task_queue=TaskQueue(name=task_queue),
            input=Payloads(
                payloads=[Payload(metadata={"encoding": b"json/plain"}, data=encode_input(value))]
            ),
            identity="hardening-tests",
            request_id=str(uuid.uuid4()),
        )
    )


def first_application_error(err: BaseException) -> ApplicationError | None:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return cause
        cause = getattr(cause, "cause", None) or cause.__cause__
    return None


@dataclass(frozen=True)
class Outcome:
    error: ApplicationError
    seconds: float


async def expect_failure(
    client: Client, workflow_type: str, task_queue: str, value: Any
) -> Outcome:
    """Run the workflow on raw JSON; it must FAIL (not hang) within FAIL_FAST_SECONDS."""
    workflow_id = f"hardening-{uuid.uuid4()}"
    started = time.monotonic()
    await start_raw(client, workflow_type, task_queue, value, workflow_id)
    handle = client.get_workflow_handle(workflow_id)
    try:
        result = await asyncio.wait_for(handle.result(), timeout=FAIL_FAST_SECONDS)
    except WorkflowFailureError as err:
        seconds = time.monotonic() - started
        error = first_application_error(err)
        assert error is not None, f"failure without an ApplicationError: {err!r} {err.cause!r}"
    except TimeoutError:
        history = await handle.fetch_history()
        task_failures = [
            e.workflow_task_failed_event_attributes.failure.message
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        ]
        await handle.terminate("hardening test timed out")
        raise AssertionError(
            f"workflow still running after {FAIL_FAST_SECONDS}s; "
            f"workflow task failures: {task_failures[:2]}"
        ) from None
    else:
        raise AssertionError(f"workflow succeeded on bad input: {result!r}")
    description = await handle.describe()
    assert description.status == WorkflowExecutionStatus.FAILED
    return Outcome(error, seconds)


def check_outcome(case: Case, outcome: Outcome) -> None:
    error = outcome.error
    record = os.environ.get("HARDENING_RECORD")
    if record:  # collects real messages for docs/errors.md
        with open(record, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"id": case.id, "type": error.type, "message": error.message}))
            handle.write("\n")
    assert error.type == case.error_type, f"{case.id}: {error.type}: {error.message}"
    assert error.non_retryable, case.id
    for fragment in case.expect:
        assert fragment in error.message, f"{case.id}: {fragment!r} not in {error.message!r}"
    for fragment in case.hidden:
        assert fragment not in error.message, f"{case.id}: {error.message!r} shows {fragment!r}"
    assert outcome.seconds < FAIL_FAST_SECONDS


def snapshot(directory: Path) -> set[str]:
    """Every path under ``directory`` (relative), symlinks not followed."""
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def cli_env(address: str, training_queue: str, inference_queue: str, runs_root: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEMPORAL_", "BERT_", "PYTEST_")) and k != "COLUMNS"
    }
    env.update(
        TEMPORAL_ADDRESS=address,
        BERT_TRAINING_TASK_QUEUE=training_queue,
        BERT_INFERENCE_TASK_QUEUE=inference_queue,
        BERT_RUNS_DIR=str(runs_root),
        HF_HUB_OFFLINE="1",
        COLUMNS="400",
    )
    return env


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(args: list[str], env: dict, cwd: Path, timeout: float = 60) -> CliResult:
    """``python -m bert_finetune.cli ARGS`` without blocking the event loop the workers use."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bert_finetune.cli",
        *args,
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return CliResult(process.returncode or 0, stdout.decode(), stderr.decode())


def _call_main(args: list[str], env: dict) -> CliResult:
    from bert_finetune import cli

    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in saved.items() if not k.startswith(("TEMPORAL_", "BERT_"))})
    os.environ.update(env)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = cli.main(args)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 2
            except BaseException:  # an escaped exception is what a user would see as a traceback
                err.write(traceback.format_exc())
                code = 99
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return CliResult(code, out.getvalue(), err.getvalue())


async def run_cli_in_process(args: list[str], env: dict) -> CliResult:
    """``bert-finetune ARGS`` through ``cli.main`` in a thread: the whole table in seconds.

    The event loop keeps serving the workers meanwhile. Calls must not overlap (they swap
    ``os.environ`` and the standard streams), so callers await them one at a time.
    """
    return await asyncio.to_thread(_call_main, args, env)


def one_case_per_area(selected: list[Case]) -> list[Case]:
    """A sample for the real-subprocess runs: the first case of each area."""
    seen: dict[str, Case] = {}
    for case in selected:
        seen.setdefault(case.area, case)
    return list(seen.values())


def check_cli_failure(case: Case, result: CliResult) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, f"{case.id}: exit 0\n{result.stdout}"
    assert "Traceback" not in result.stderr + result.stdout, f"{case.id}: {result.stderr}"
    assert len(lines) == 1, f"{case.id}: expected one line on stderr, got {lines}"
    line = lines[0]
    assert line.startswith("error:"), f"{case.id}: {line}"
    for fragment in case.expected_on_cli():
        assert fragment in line, f"{case.id}: {fragment!r} not in {line!r}"
    for fragment in case.hidden:
        assert fragment not in result.stdout + result.stderr, f"{case.id}: shows {fragment!r}"


async def gather_limited(coroutines: list, limit: int) -> list:
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine: Any) -> Any:
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))
