"""Every failure a user can reach from the CLI, as one line that says what to do.

The one place that maps exceptions to messages: ``main`` prints ``explain(err)`` and exits
1 for anything listed here. Whatever is not listed is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import re

from temporalio.client import WorkflowFailureError, WorkflowQueryFailedError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from bert_finetune.client_ops import UserError, failure_message
from bert_finetune.demo_data import DemoDataMissing
from bert_finetune.stack import StackError
from shared.settings import SettingsError

_NAMESPACE_NOT_FOUND = re.compile(r"Namespace (\S+?) (?:is|was) not found")
# Substrings of the SDK's (Rust) connection errors, and what they mean to a user.
_CONNECT_REASONS = {
    "Connection refused": "connection refused: nothing listens there",
    "dns error": "the host name does not resolve",
    "timed out": "the connection timed out",
    "invalid": "the address is not host:port",
    "tls": "the TLS handshake failed: check TEMPORAL_TLS_* settings",
}


class TemporalUnreachable(ConnectionError):
    """The CLI could not connect to the Temporal frontend."""

    def __init__(self, address: str, error: BaseException) -> None:
        text = str(error)
        reason = next(
            (why for marker, why in _CONNECT_REASONS.items() if marker.lower() in text.lower()),
            " ".join(text.split())[:120],
        )
        super().__init__(
            f"cannot reach Temporal at {address} ({reason}); start the local stack with "
            "`bert-finetune dev` or set TEMPORAL_ADDRESS"
        )


def _namespace() -> str:
    return os.environ.get("TEMPORAL_NAMESPACE") or "default"


def _namespace_missing(namespace: str) -> str:
    return (
        f"Temporal namespace {namespace!r} does not exist; set TEMPORAL_NAMESPACE to an "
        f"existing one or create it (`temporal operator namespace create --namespace "
        f"{namespace}`)"
    )


def _rpc(err: RPCError, command: str) -> str:
    missing = _NAMESPACE_NOT_FOUND.search(err.message)
    if missing:
        return _namespace_missing(missing.group(1).rstrip("."))
    if err.status == RPCStatusCode.NOT_FOUND:
        return (
            f"{err.message} (namespace {_namespace()!r}); check the workflow id, e.g. with "
            "`temporal workflow list`"
        )
    if command == "progress" and err.status in (
        RPCStatusCode.CANCELLED,
        RPCStatusCode.DEADLINE_EXCEEDED,
    ):
        return (
            "no trainer answered the progress query in time; check that a trainer worker is "
            "running with `bert-finetune check-pollers`"
        )
    if err.status in (RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED):
        return (
            f"Temporal refused the credentials ({err.message}); check TEMPORAL_API_KEY and "
            "TEMPORAL_TLS_* settings"
        )
    if err.status == RPCStatusCode.UNAVAILABLE:
        return f"lost the connection to Temporal ({err.message}); is the server still up?"
    return f"Temporal refused the request: {err.message}"


def _worker_start(err: RuntimeError) -> str | None:
    """The SDK reports a worker that cannot start as a plain RuntimeError."""
    text = str(err)
    if not text.startswith("Worker validation failed"):
        return None
    missing = _NAMESPACE_NOT_FOUND.search(text)
    if missing:
        return _namespace_missing(missing.group(1))
    return "the worker cannot start: " + text.split(": Status", 1)[0]


def _os_error(err: OSError) -> str:
    if err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return str(err.strerror or err)


def explain(err: BaseException, command: str) -> str | None:
    """The one-line message for ``err`` raised by ``command``; None when it is a bug."""
    if isinstance(err, UserError | StackError | DemoDataMissing | ConnectionError):
        return str(err)
    if isinstance(err, SettingsError):
        return f"configuration: {err}"
    if isinstance(err, WorkflowFailureError):
        return failure_message(err)
    if isinstance(err, WorkflowAlreadyStartedError):
        return (
            f"workflow {err.workflow_id!r} is already running; wait for it, cancel it with "
            "`bert-finetune cancel`, or pass another --workflow-id"
        )
    if isinstance(err, WorkflowQueryFailedError):
        return f"the workflow could not answer the query: {' '.join(str(err).split())[:300]}"
    if isinstance(err, RPCError):
        return _rpc(err, command)
    if isinstance(err, RuntimeError):
        return _worker_start(err)
    if isinstance(err, OSError):
        return _os_error(err)
    return None
