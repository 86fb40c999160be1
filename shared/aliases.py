"""Aliases: stable names (``production``) that point at a complete run.

Each alias is one small JSON file, ``$BERT_RUNS_DIR/_aliases/{alias}.json``. Promotion writes
a temporary sibling, fsyncs it and renames it over the pointer, so a reader at any moment
sees the old target or the new one, never neither. ``_aliases`` can never be a run id (run
ids start with a letter or digit), so the pointers never mix with runs.

A pointer may also carry a rollout (docs/inference.md, "Rollouts"): a canary run that answers
``canary_percent`` percent of the alias's requests (``route_alias``: one draw per request), or a
shadow run that scores every request without answering. ``apply_rollout`` sets, completes and
rolls them back under the same lock and atomic write as a promotion.

Plain file work, no Temporal: the promotion activity and the inferencer call these off the
event loop.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from temporalio.exceptions import ApplicationError

from shared.errors import INVALID_CONFIG, PROMOTION_REFUSED, RUN_NOT_FOUND, failure
from shared.logging import get_logger
from shared.manifests import AliasPointer, ManifestError
from shared.run_record import RunRecord
from shared.runs import require_complete_run
from shared.storage import store_for
from shared.storage.alias_store import (
    promotion_lease,
    read_stored_pointer,
    stored_pointers,
    write_stored_pointer,
)
from shared.types import (
    BertInferenceRequest,
    BertPromoteInput,
    BertPromoteOutput,
    is_valid_alias,
)

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
        if (store := store_for(runs_root)) is not None:
            return read_stored_pointer(store, alias)
        return AliasPointer.read(path)
    except FileNotFoundError:
        return None
    except (OSError, ManifestError) as err:
        raise failure(
            RUN_NOT_FOUND,
            f"alias {alias!r} has an unreadable pointer {path} ({type(err).__name__}); "
            f"promote a run to it again with `bert-finetune promote RUN_ID {alias}`",
        ) from None


def _existing_pointer(runs_root: Path, alias: str) -> AliasPointer:
    pointer = read_pointer(runs_root, alias)
    if pointer is None:
        raise failure(
            RUN_NOT_FOUND,
            f"alias {alias!r} does not exist; promote a run to it with "
            f"`bert-finetune promote RUN_ID {alias}` (list aliases with `bert-finetune runs`)",
        )
    return pointer


def resolve_alias(runs_root: Path, alias: str) -> str:
    """The run id ``alias`` points at now; ``RunNotFound`` for an unknown alias."""
    return _existing_pointer(runs_root, alias).run_id


@dataclass(frozen=True)
class AliasRoute:
    """Which run answers one request by alias, and which scores it in the shadow."""

    run_id: str
    # The alias's own run (``run_id`` too, unless the canary answers).
    alias_run_id: str
    canary: bool = False
    canary_run_id: str | None = None
    shadow_run_id: str | None = None

    @property
    def versions(self) -> list[str]:
        """Every run that may answer the alias: its own, then its canary."""
        return [self.alias_run_id, *([self.canary_run_id] if self.canary_run_id else [])]


def canary_answers(pointer: AliasPointer, draw: float | None) -> bool:
    """Whether the canary answers a request whose random draw (uniform in [0, 1)) is
    ``draw``: below ``canary_percent`` / 100. No draw: the alias's own run answers."""
    if pointer.canary_run_id is None or pointer.canary_percent is None or draw is None:
        return False
    return draw * 100 < pointer.canary_percent


def draw_for(key: str) -> float:
    """A uniform draw in [0, 1) that ``key`` (a workflow run id: random, fixed for the
    execution) determines: the same on every attempt and activity of one execution."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def route_alias(
    runs_root: Path, alias: str, draw: float | None, pinned: str | None = None
) -> AliasRoute:
    """The run answering a request by ``alias`` whose random draw is ``draw``, read from the
    pointer now (a promotion or rollback takes effect at the next request). ``pinned``: a
    run id the caller asks for by name (its canary or its own run), served whatever the draw.
    Only requests the alias's own run answers are scored by its shadow."""
    pointer = _existing_pointer(runs_root, alias)
    canary = (
        pinned == pointer.canary_run_id
        if pinned is not None and pinned in (pointer.run_id, pointer.canary_run_id)
        else canary_answers(pointer, draw)
    )
    if canary:
        assert pointer.canary_run_id is not None
        return AliasRoute(
            pointer.canary_run_id,
            pointer.run_id,
            canary=True,
            canary_run_id=pointer.canary_run_id,
        )
    return AliasRoute(
        pointer.run_id,
        pointer.run_id,
        canary_run_id=pointer.canary_run_id,
        shadow_run_id=pointer.shadow_run_id,
    )


def resolve_request_alias(runs_root: Path, request: BertInferenceRequest) -> BertInferenceRequest:
    """``request`` naming the run its alias points at now (unchanged when it names a run)."""
    return route_request(runs_root, request)[0]


def route_request(
    runs_root: Path, request: BertInferenceRequest
) -> tuple[BertInferenceRequest, AliasRoute | None]:
    """``request`` naming the run that answers it (its alias's run or canary, by the
    request's ``route_draw``), and the route (None for a request that names a run)."""
    if request.alias is None:
        return request, None
    route = route_alias(runs_root, request.alias, request.route_draw)
    log.debug("alias.resolved", alias=request.alias, run_id=route.run_id, canary=route.canary)
    return request.model_copy(update={"run_id": route.run_id, "alias": None}), route


def check_same_outputs(candidate: RunRecord, current: RunRecord, field: str) -> None:
    """``InvalidConfig`` unless both runs answer the same requests with the same kind of
    prediction: one task, one label set, pairs for both or neither (a canary, a shadow or a
    gate compares them)."""
    first, second = candidate.config, current.config
    problem = None
    if first.task != second.task:
        problem = f"it does {first.task} and {current.run_id!r} does {second.task}"
    elif sorted(candidate.label_names) != sorted(current.label_names):
        problem = (
            f"its labels {candidate.label_names[:20]} differ from {current.run_id!r}'s "
            f"{current.label_names[:20]}"
        )
    elif (first.text_pair_column is None) != (second.text_pair_column is None):
        problem = (
            f"one of them classifies text pairs and the other single texts "
            f"({candidate.run_id!r}: text_pair_column {first.text_pair_column!r})"
        )
    if problem is not None:
        raise failure(
            INVALID_CONFIG,
            f"{field}: run {candidate.run_id!r} cannot be compared with the alias's run "
            f"{current.run_id!r}: {problem}; a gate, canary or shadow needs runs of the same "
            "task and labels (promote it without one, or to another alias)",
        )


@contextmanager
def _promotion_lock(runs_root: Path) -> Iterator[None]:
    if (store := store_for(runs_root)) is not None:
        with promotion_lease(store):
            yield
        return
    directory = aliases_dir(runs_root)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_pointer(runs_root: Path, pointer: AliasPointer) -> None:
    """Move the alias atomically: a rename over the pointer file, or with an object store a
    conditional write from the version read under the promotion lease."""
    if (store := store_for(runs_root)) is not None:
        write_stored_pointer(store, pointer)
    else:
        pointer.write(pointer_path(runs_root, pointer.alias))


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
        # The whole pointer is replaced: a canary or shadow of the alias ends here (promoting
        # the canary or shadow run completes its rollout).
        pointer = AliasPointer(
            alias=alias,
            run_id=run_id,
            previous_run_id=previous,
            promoted_at=_now(),
            promoted_by=promoted_by,
        )
        _write_pointer(runs_root, pointer)
    return BertPromoteOutput(alias=alias, run_id=run_id, previous_run_id=previous)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def promote_output(pointer: AliasPointer) -> BertPromoteOutput:
    """A promotion's answer: the alias's pointer as written."""
    return BertPromoteOutput(
        alias=pointer.alias,
        run_id=pointer.run_id,
        previous_run_id=pointer.previous_run_id,
        canary_run_id=pointer.canary_run_id,
        canary_percent=pointer.canary_percent,
        shadow_run_id=pointer.shadow_run_id,
    )


def _rolled_back(current: AliasPointer | None, request: BertPromoteInput) -> AliasPointer:
    """The pointer without its canary or shadow; ``InvalidConfig`` when there is none (or it
    is not the run the request names)."""
    alias = request.alias
    if current is None:
        raise failure(
            INVALID_CONFIG,
            f"rollback: alias {alias!r} does not exist, so it has nothing to roll back "
            "(list aliases with `bert-finetune runs`)",
        )
    candidate = current.canary_run_id or current.shadow_run_id
    if candidate is None:
        raise failure(
            INVALID_CONFIG,
            f"rollback: alias {alias!r} has no canary or shadow to roll back (it serves run "
            f"{current.run_id!r} alone); to serve another run, promote it: "
            f"`bert-finetune promote RUN_ID {alias}`",
        )
    if request.run_id is not None and request.run_id != candidate:
        raise failure(
            INVALID_CONFIG,
            f"rollback: run {request.run_id!r} is not alias {alias!r}'s canary or shadow "
            f"({candidate!r} is); leave run_id out to roll back whatever the alias has",
        )
    return current.model_copy(
        update={
            "version": 1,
            "canary_run_id": None,
            "canary_percent": None,
            "shadow_run_id": None,
            "promoted_at": _now(),
        }
    )


def _with_candidate(current: AliasPointer | None, request: BertPromoteInput) -> AliasPointer:
    """The pointer after a promotion of ``request.run_id``: a canary or shadow of the alias
    (which must exist and serve another run), or the alias's run (its rollout ends)."""
    alias, run_id = request.alias, request.run_id
    assert run_id is not None
    if request.canary_percent is None and not request.shadow:
        return AliasPointer(
            alias=alias,
            run_id=run_id,
            previous_run_id=current.run_id if current is not None else None,
            promoted_at=_now(),
        )
    kind = "canary_percent" if request.canary_percent is not None else "shadow"
    if current is None:
        raise failure(
            INVALID_CONFIG,
            f"{kind}: alias {alias!r} does not exist yet; a canary or shadow shares an "
            f"alias's traffic: promote a run to it first (`bert-finetune promote RUN_ID {alias}`)",
        )
    if current.run_id == run_id:
        raise failure(
            INVALID_CONFIG,
            f"{kind}: run {run_id!r} already serves alias {alias!r} (all its traffic); a "
            "canary or shadow must be another run",
        )
    return AliasPointer(
        version=2,
        alias=alias,
        run_id=current.run_id,
        previous_run_id=current.previous_run_id,
        promoted_at=_now(),
        canary_run_id=run_id if request.canary_percent is not None else None,
        canary_percent=request.canary_percent,
        shadow_run_id=run_id if request.shadow else None,
    )


def apply_rollout(
    runs_root: Path,
    request: BertPromoteInput,
    promoted_by: str | None = None,
    *,
    expected_current: str | None = None,
    check_current: bool = False,
    servable: Callable[[], AbstractContextManager[object]] | None = None,
    compatible: Callable[[str], None] | None = None,
) -> BertPromoteOutput:
    """Apply a rollout promotion to ``request.alias``'s pointer, atomically, under the
    promotion lock: point it at ``request.run_id`` (a gated promotion, or the completion of
    the run's canary or shadow), set or replace its canary or shadow, or roll that back.

    ``check_current``: the alias must still point at ``expected_current`` (None: not exist),
    the run a gate compared the candidate with; else ``PromotionRefused`` (promote again).
    ``servable``: as in ``promote``, entered before the pointer moves. ``compatible``: called
    with the alias's run id before a canary or shadow is set; raises when the candidate's
    predictions cannot be compared with that run's. A retry by the same ``promoted_by``
    answers what the first attempt wrote.
    """
    alias = check_alias(request.alias)
    if request.run_id is not None and not request.rollback:
        require_complete_run(runs_root, request.run_id)
    with _promotion_lock(runs_root):
        current = read_pointer(runs_root, alias)
        if current is not None and promoted_by is not None and current.promoted_by == promoted_by:
            return promote_output(current)
        now = current.run_id if current is not None else None
        if check_current and now != expected_current:
            raise failure(
                PROMOTION_REFUSED,
                f"alias {alias!r} moved from {expected_current!r} to {now!r} while the gate "
                f"compared run {request.run_id!r} with {expected_current!r}; promote again to "
                "gate it against the alias's run now",
            )
        if request.rollback:
            pointer = _rolled_back(current, request)
        else:
            pointer = _with_candidate(current, request)
            if compatible is not None and pointer.run_id != request.run_id:
                compatible(pointer.run_id)
        pointer = pointer.model_copy(
            update={
                "promoted_by": promoted_by,
                "version": AliasPointer.version_for(pointer.canary_run_id, pointer.shadow_run_id),
            }
        )
        with servable() if servable is not None and not request.rollback else nullcontext():
            _write_pointer(runs_root, pointer)
    log.info(
        "alias.rollout",
        alias=alias,
        run_id=pointer.run_id,
        canary_run_id=pointer.canary_run_id,
        canary_percent=pointer.canary_percent,
        shadow_run_id=pointer.shadow_run_id,
        rollback=request.rollback,
    )
    return promote_output(pointer)


def list_aliases(runs_root: Path) -> dict[str, str]:
    """Every alias with the run id it points at, by alias name.

    Temporary files of a promotion in progress (``.``-prefixed) and unreadable pointers are
    skipped: listing must not fail because one pointer is damaged.
    """
    return {alias: pointer.run_id for alias, pointer in list_pointers(runs_root).items()}


def list_pointers(runs_root: Path) -> dict[str, AliasPointer]:
    """Every alias's pointer (its run, canary and shadow), by alias name; skips what
    ``list_aliases`` skips."""
    if (store := store_for(runs_root)) is not None:
        return stored_pointers(store)
    directory = aliases_dir(runs_root)
    if not directory.is_dir():
        return {}
    pointers = {}
    for path in sorted(directory.glob(f"*{POINTER_SUFFIX}")):
        alias = path.name.removesuffix(POINTER_SUFFIX)
        if not is_valid_alias(alias):
            continue
        try:
            pointers[alias] = AliasPointer.read(path)
        except (OSError, ManifestError):
            continue
    return pointers
