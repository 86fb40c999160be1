"""Files through which the worker and the leader rank of a distributed attempt talk.

One private folder per attempt (on the worker's local disk, never the runs volume):
- ``job.json``: what to train (the request and what the worker knows of the attempt);
- ``events.jsonl``: the leader's progress, one JSON object a line, read by the worker as it
  grows and fed to the activity's ``ProgressReporter`` (heartbeats, the progress signal);
- ``stop``: created by the worker when it shuts down: seal a checkpoint and stop;
- ``outcome.json``: the leader's result or error, written atomically as its last act.

Files rather than pipes: torchrun closes inherited descriptors, and a file also survives a
leader that dies mid-line (a partial last line is simply not read).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from temporalio.exceptions import ApplicationError

from shared.runs import write_json_atomic
from shared.types import BertFineTuneRequest, BertFineTuneResult, TrainingProgress

JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
STOP_FILE = "stop"
OUTCOME_FILE = "outcome.json"


class RankJob(BaseModel):
    """One distributed attempt, as every rank reads it."""

    model_config = ConfigDict(extra="forbid")

    request: BertFineTuneRequest
    runs_root: str
    attempt: int
    resume_hint: str | None = None
    workflow_id: str | None = None
    # With the attempt number, who may write the run folder (``fencing``).
    workflow_run_id: str = ""
    # The folders the run's local paths may name (``BERT_LOCAL_PATH_ROOTS``, resolved).
    local_path_roots: list[str] = []
    # Earlier owners of the run folder that the worker found no longer running: the leader
    # may take the folder over from these and from nobody else (it cannot ask Temporal).
    stopped_owners: list[str] = []
    checkpoint_interval_seconds: float
    log_level: str = "INFO"
    log_format: str = "auto"


class RankOutcome(BaseModel):
    """How the leader's attempt ended."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["succeeded", "failed", "cancelled", "interrupted"]
    result: BertFineTuneResult | None = None
    error_type: str | None = None
    message: str = ""
    non_retryable: bool = False

    @classmethod
    def failed(cls, err: BaseException) -> RankOutcome:
        if isinstance(err, ApplicationError):
            return cls(
                status="failed",
                error_type=err.type,
                message=err.message,
                non_retryable=err.non_retryable,
            )
        # Like an exception escaping an in-process attempt: retryable, named by its class.
        return cls(status="failed", error_type=type(err).__name__, message=str(err)[:2000])


def write_job(folder: Path, job: RankJob) -> None:
    write_json_atomic(folder / JOB_FILE, json.loads(job.model_dump_json()))


def read_job(folder: Path) -> RankJob:
    return RankJob.model_validate_json((folder / JOB_FILE).read_text(encoding="utf-8"))


def write_outcome(folder: Path, outcome: RankOutcome) -> None:
    write_json_atomic(folder / OUTCOME_FILE, json.loads(outcome.model_dump_json()))


def read_outcome(folder: Path) -> RankOutcome | None:
    try:
        text = (folder / OUTCOME_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return RankOutcome.model_validate_json(text)


def request_shutdown(folder: Path) -> None:
    (folder / STOP_FILE).touch()


def shutdown_requested(folder: Path) -> bool:
    return (folder / STOP_FILE).exists()


class ProgressRelay:
    """The leader's progress reporter: each call becomes one line of ``events.jsonl``.

    Same methods as ``ProgressReporter``, which the worker drives from these lines.
    """

    def __init__(self, folder: Path, progress: TrainingProgress) -> None:
        self._progress = progress
        self._events = (folder / EVENTS_FILE).open("a", encoding="utf-8")

    @property
    def progress(self) -> TrainingProgress:
        return self._progress.model_copy()

    def update(self, **fields: Any) -> None:
        self._progress = self._progress.model_copy(update=fields)
        self._write({"update": fields})

    def heartbeat_now(self) -> None:
        self._write({"heartbeat": True})

    def signal_soon(self) -> None:
        self._write({"signal": True})

    def progressed(self) -> None:
        self._write({"progressed": True})

    def close(self) -> None:
        self._events.close()

    def _write(self, event: dict[str, Any]) -> None:
        # One write per line, flushed: the worker never sees half an event unless we die.
        self._events.write(json.dumps(event, default=str) + "\n")
        self._events.flush()


class SilentProgress:
    """The progress reporter of the other ranks: the leader speaks for all of them."""

    def __init__(self, progress: TrainingProgress) -> None:
        self._progress = progress

    @property
    def progress(self) -> TrainingProgress:
        return self._progress.model_copy()

    def update(self, **fields: Any) -> None:
        self._progress = self._progress.model_copy(update=fields)

    def heartbeat_now(self) -> None:
        pass

    def signal_soon(self) -> None:
        pass

    def progressed(self) -> None:
        pass


class EventReader:
    """Reads the complete lines added to ``events.jsonl`` since the last call."""

    def __init__(self, folder: Path) -> None:
        self._path = folder / EVENTS_FILE
        self._offset = 0

    def new_events(self) -> list[dict[str, Any]]:
        try:
            with self._path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]
