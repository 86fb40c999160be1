"""Aliases: stable names (``production``) that point at a complete run.

Each alias is one small JSON file, ``$BERT_RUNS_DIR/_aliases/{alias}.json``. Promotion writes
a temporary sibling, fsyncs it and renames it over the pointer, so a reader at any moment
sees the old target or the new one, never neither. ``_aliases`` can never be a run id (run
ids start with a letter or digit), so the pointers never mix with runs.

Plain file work, no Temporal: the promotion activity and the inferencer call these off the
event loop.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

from temporalio.exceptions import ApplicationError

from shared.errors import INVALID_CONFIG, RUN_NOT_FOUND, failure
from shared.logging import get_logger
from shared.manifests import AliasPointer, ManifestError
from shared.runs import require_complete_run
from shared.types import BertInferenceRequest, BertPromoteOutput, is_valid_alias

log = get_logger(__name__)

ALIASES_DIR = "_aliases"
POINTER_SUFFIX = ".json"
# Held while a promotion reads the old target and writes the new one, so two promotions
# of one alias each report the other as ``previous_run_id`` (readers never take it).
LOCK_FILE = ".lock"


def aliases_dir(runs_root: Path) -> Path:
    return runs_root / ALIASES_DIR


def check_alias(alias: str) -> str:
    if not is_valid_alias(alias):
        raise failure(
            INVALID_CONFIG,
            f"alias {alias[:100]!r} is not a valid alias: use 1-100 characters of "
            "[A-Za-z0-9._-] starting with a letter or digit (for example `production`)",
        )
    return alias


def pointer_path(runs_root: Path, alias: str) -> Path:
    return aliases_dir(runs_root) / f"{check_alias(alias)}{POINTER_SUFFIX}"


def read_pointer(runs_root: Path, alias: str) -> AliasPointer | None:
    """The alias's pointer, or None when the alias does not exist."""
    path = pointer_path(runs_root, alias)
    try:
        return AliasPointer.read(path)
    except FileNotFoundError:
        return None
    except (OSError, ManifestError) as err:
        raise failure(
            RUN_NOT_FOUND,
            f"alias {alias!r} has an unreadable pointer {path} ({type(err).__name__}); "
            f"promote a run to it again with `bert-finetune promote RUN_ID {alias}`",
        ) from None


def resolve_alias(runs_root: Path, alias: str) -> str:
    """The run id ``alias`` points at now; ``RunNotFound`` for an unknown alias."""
    pointer = read_pointer(runs_root, alias)
    if pointer is None:
        raise failure(
            RUN_NOT_FOUND,
            f"alias {alias!r} does not exist; promote a run to it with "
            f"`bert-finetune promote RUN_ID {alias}` (list aliases with `bert-finetune runs`)",
        )
    return pointer.run_id


def resolve_request_alias(runs_root: Path, request: BertInferenceRequest) -> BertInferenceRequest:
    """``request`` naming the run its alias points at now (unchanged when it names a run)."""
    if request.alias is None:
        return request
    run_id = resolve_alias(runs_root, request.alias)
    log.debug("alias.resolved", alias=request.alias, run_id=run_id)
    return request.model_copy(update={"run_id": run_id, "alias": None})


@contextmanager
def _promotion_lock(runs_root: Path) -> Iterator[None]:
    directory = aliases_dir(runs_root)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def promote(
    runs_root: Path,
    run_id: str,
    alias: str,
    promoted_by: str | None = None,
    servable: Callable[[], AbstractContextManager[object]] | None = None,
) -> BertPromoteOutput:
    """Point ``alias`` at the complete run ``run_id``, atomically.

    ``RunNotFound`` when the run is missing or incomplete, ``InvalidConfig`` for a bad alias
    or run id. Repeating a promotion with the same ``promoted_by`` (a retried activity)
    returns the first answer instead of reporting the run as its own predecessor.
    ``servable``: entered under the promotion lock before the pointer moves, held while it
    is written; it raises when the run cannot be served, so a refused promotion never moves
    the alias (the promotion activity resolves the served run there, under the run's lock).
    """
    check_alias(alias)
    require_complete_run(runs_root, run_id)
    with _promotion_lock(runs_root), servable() if servable else nullcontext():
        try:
            current = read_pointer(runs_root, alias)
        except ApplicationError:  # a damaged pointer is repaired by promoting over it
            current = None
        if (
            current is not None
            and promoted_by is not None
            and current.promoted_by == promoted_by
            and current.run_id == run_id
        ):
            return BertPromoteOutput(
                alias=alias, run_id=run_id, previous_run_id=current.previous_run_id
            )
        previous = current.run_id if current is not None else None
        pointer = AliasPointer(
            alias=alias,
            run_id=run_id,
            previous_run_id=previous,
            promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
            promoted_by=promoted_by,
        )
        pointer.write(pointer_path(runs_root, alias))
    return BertPromoteOutput(alias=alias, run_id=run_id, previous_run_id=previous)


def list_aliases(runs_root: Path) -> dict[str, str]:
    """Every alias with the run id it points at, by alias name.

    Temporary files of a promotion in progress (``.``-prefixed) and unreadable pointers are
    skipped: listing must not fail because one pointer is damaged.
    """
    directory = aliases_dir(runs_root)
    if not directory.is_dir():
        return {}
    aliases = {}
    for path in sorted(directory.glob(f"*{POINTER_SUFFIX}")):
        alias = path.name.removesuffix(POINTER_SUFFIX)
        if not is_valid_alias(alias):
            continue
        try:
            aliases[alias] = AliasPointer.read(path).run_id
        except (OSError, ManifestError):
            continue
    return aliases
