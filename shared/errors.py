"""Failure types (docs/errors.md) and helpers that turn problems into clear, typed errors."""

from __future__ import annotations

from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

INVALID_CONFIG = "InvalidConfig"
RUN_NOT_FOUND = "RunNotFound"
DATASET_ERROR = "DatasetError"
MODEL_LOAD_ERROR = "ModelLoadError"
# The run does not fit the device even at per-device batch size 1.
RESOURCE_EXHAUSTED = "ResourceExhausted"
# The training loss or an evaluation metric is not finite (NaN or infinity): nothing is
# committed, and the same config would diverge again.
TRAINING_DIVERGED = "TrainingDiverged"
# A gated promotion whose candidate does not beat the alias's current run on the gate's data
# by the metric (both scores in the message): the alias stays where it was.
PROMOTION_REFUSED = "PromotionRefused"
NON_RETRYABLE_TYPES = [
    INVALID_CONFIG,
    RUN_NOT_FOUND,
    DATASET_ERROR,
    MODEL_LOAD_ERROR,
    RESOURCE_EXHAUSTED,
    TRAINING_DIVERGED,
    PROMOTION_REFUSED,
]
# Internal, never a workflow's failure: the warm-only inference local activity found the model
# not loaded on its worker; BertInferenceWorkflow falls back to the regular activity.
MODEL_COLD = "ModelCold"
# Retryable: a preempted trainer sealed a checkpoint and handed the run back.
WORKER_SHUTDOWN = "WorkerShutdown"
# Retryable: a newer attempt owns the run folder (this one lost its connection or paused);
# Temporal has already given up on this attempt, so nobody waits for this failure.
ATTEMPT_SUPERSEDED = "AttemptSuperseded"

# Temporal rejects payloads over 2 MiB; an error message must never get near that.
MAX_MESSAGE_CHARS = 2000


def truncate(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return message if len(message) <= limit else message[: limit - 15] + "... (truncated)"


def one_line(message: str) -> str:
    """Collapse newlines and runs of spaces: library errors often span lines."""
    return " ".join(message.split())


def failure(error_type: str, message: str) -> ApplicationError:
    """A non-retryable ApplicationError of one of the documented failure types, on one line."""
    return ApplicationError(truncate(one_line(message)), type=error_type, non_retryable=True)


def describe_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the field path, e.g. ``runs[0].num_epochs: ...``."""
    problems = []
    for item in err.errors(include_url=False):
        path = prefix
        for part in item.get("loc", ()):
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = item.get("msg", "invalid value")
        if item.get("type") == "extra_forbidden":
            message = "unknown field (check the spelling; see the README's JSON formats)"
        elif item.get("type") == "missing":
            message = "required field is missing"
        elif item.get("type") == "list_type":
            # pydantic says "array" for JSON input and "list" for Python input; say both.
            message = "must be a list (a JSON array)"
        problems.append(f"{path or 'input'}: {message}")
    return "; ".join(problems)


def invalid_config(err: ValidationError | str, prefix: str = "") -> ApplicationError:
    text = describe_validation_error(err, prefix) if isinstance(err, ValidationError) else err
    return failure(INVALID_CONFIG, f"invalid input: {text}")
