"""structlog, configured once per process: JSON off a terminal, readable on one.

Every line logged inside a workflow or activity carries the Temporal context (workflow id,
activity attempt, task queue) and the run id bound by the activity.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_SECRET_KEYS = ("api_key", "apikey", "password", "token", "secret", "authorization")


def _temporal_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    from temporalio import activity, workflow

    try:
        info = activity.info()
    except RuntimeError:
        info = None
    if info is not None:
        event.setdefault("workflow_id", info.workflow_id)
        event.setdefault("workflow_run_id", info.workflow_run_id)
        event.setdefault("activity_type", info.activity_type)
        event.setdefault("activity_attempt", info.attempt)
        event.setdefault("task_queue", info.task_queue)
        return event
    try:
        winfo = workflow.info()
    except Exception:  # outside a workflow the SDK raises a non-public error type
        return event
    event.setdefault("workflow_id", winfo.workflow_id)
    event.setdefault("workflow_run_id", winfo.run_id)
    event.setdefault("workflow_type", winfo.workflow_type)
    event.setdefault("task_queue", winfo.task_queue)
    return event


# The SDK's loggers (workflow.logger, activity.logger and its own) attach their context as
# a dict in ``extra``; these become top-level fields under our names.
_SDK_CONTEXT_FIELDS = {
    "temporal_workflow": {
        "workflow_id": "workflow_id",
        "run_id": "workflow_run_id",
        "workflow_type": "workflow_type",
        "task_queue": "task_queue",
        "attempt": "workflow_attempt",
        "namespace": "temporal_namespace",
    },
    "temporal_activity": {
        "activity_id": "activity_id",
        "activity_type": "activity_type",
        "attempt": "activity_attempt",
        "task_queue": "task_queue",
        "workflow_id": "workflow_id",
        "workflow_run_id": "workflow_run_id",
        "workflow_type": "workflow_type",
        "namespace": "temporal_namespace",
    },
}


def _flatten_sdk_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, fields in _SDK_CONTEXT_FIELDS.items():
        details = event.pop(key, None)
        if isinstance(details, dict):
            for source, target in fields.items():
                if source in details:
                    event.setdefault(target, details[source])
    return event


def _redact_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if any(secret in key.lower() for secret in _SECRET_KEYS):
            event[key] = "[redacted]"
    return event


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Route structlog and stdlib logging (the SDK, workflow.logger) through one renderer."""
    from temporalio import activity, workflow

    # The context goes into fields (see _flatten_sdk_context), not into the event name.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    logging.captureWarnings(True)  # warnings.warn output becomes a structured line too
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    if use_json:
        _disable_progress_bars()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _flatten_sdk_context,
        _temporal_context,
        _redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _exception_formatter(use_json),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # The SDK's DEBUG lines dump whole payloads (users' texts, predictions): never below INFO.
    logging.getLogger("temporalio").setLevel(max(logging.INFO, logging.getLevelName(level)))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _disable_progress_bars() -> None:
    """tqdm bars (Hugging Face's "Loading weights") would break one-JSON-object-per-line."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def _identity(_: Any, __: str, event: Any) -> Any:
    return event


def _exception_formatter(use_json: bool) -> Any:
    """JSON lines carry the traceback as a string; the console renderer prints it itself."""
    return structlog.processors.format_exc_info if use_json else _identity


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
