"""Alias pointers on object storage: ``_aliases/{alias}.json``, moved with conditional writes.

On a filesystem a promotion holds a lock file while it reads the old pointer and renames the
new one over it. Here the same section is held by a lease, ``_aliases/.lock``, taken with a
create-if-absent write (a crashed holder's lease is taken over once it expires), and the
pointer itself moves only from the version read inside the lease (``If-Match`` on its ETag,
``If-None-Match`` for a new alias). So a reader sees the old pointer or the new one, and two
promotions of one alias never lose an update even if a lease expired under a slow holder: the
late one's write fails and its promotion is retried on what the other wrote.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from shared.logging import get_logger
from shared.manifests import AliasPointer, ManifestError
from shared.storage.objects import Conflict
from shared.storage.run_store import ALIASES, Refused, RunStore

log = get_logger(__name__)

LEASE_KEY = f"{ALIASES}/.lock"
# Longer than any promotion's pointer section (a read and a write); a crashed holder delays
# promotions of every alias by at most this long.
LEASE_SECONDS = 30.0
_POLL_SECONDS = 0.05
# The ETag each thread last read for each alias: the version its next write replaces.
_read = threading.local()


def _versions() -> dict[str, str | None]:
    if not hasattr(_read, "versions"):
        _read.versions = {}
    versions: dict[str, str | None] = _read.versions
    return versions


def read_stored_pointer(store: RunStore, alias: str) -> AliasPointer:
    """The alias's pointer (``FileNotFoundError`` when it does not exist, ``ManifestError``
    when unreadable), remembering its version for this thread's next write."""
    blob = store.alias_pointer(alias)
    _versions()[alias] = blob.etag if blob is not None else None
    if blob is None:
        raise FileNotFoundError(f"{ALIASES}/{alias}.json")
    return AliasPointer.parse(blob.data, f"{store.uri}/{ALIASES}/{alias}.json")


def write_stored_pointer(store: RunStore, pointer: AliasPointer) -> None:
    """Replace the pointer this thread read last (create it when it did not exist)."""
    data = json.dumps(pointer.to_json(), indent=2, sort_keys=True).encode()
    try:
        store.write_alias_pointer(pointer.alias, data, _versions().get(pointer.alias))
    except Refused as err:
        raise RuntimeError(f"{err}: the promotion is retried on the pointer as it is now") from None


def stored_pointers(store: RunStore) -> dict[str, AliasPointer]:
    """Every readable alias pointer, by alias name (damaged ones are skipped)."""
    pointers = {}
    for alias, data in sorted(store.alias_pointers().items()):
        try:
            pointers[alias] = AliasPointer.parse(data, alias)
        except ManifestError:
            continue
    return pointers


@contextmanager
def promotion_lease(store: RunStore) -> Iterator[None]:
    """Hold the promotions' lease (one promotion of any alias at a time)."""
    me = uuid.uuid4().hex
    body = json.dumps({"holder": me, "expires": time.time() + LEASE_SECONDS}).encode()
    while not _take(store, body):
        time.sleep(_POLL_SECONDS)
    try:
        yield
    finally:
        current = store.objects.get(LEASE_KEY)
        if current is not None and _lease(current.data)[0] == me:
            store.objects.delete([LEASE_KEY])


def _take(store: RunStore, body: bytes) -> bool:
    try:
        store.objects.create(LEASE_KEY, body)
        return True
    except Conflict:
        pass
    current = store.objects.get(LEASE_KEY)
    if current is None:
        return False  # released meanwhile: try again at once
    holder, expires = _lease(current.data)
    if time.time() <= expires:
        return False
    try:
        store.objects.replace(LEASE_KEY, body, current.etag)
    except Conflict:
        return False
    log.warning("alias.lease_taken_over", previous_holder=holder)
    return True


def _lease(data: bytes) -> tuple[str | None, float]:
    try:
        lease = json.loads(data)
        return str(lease["holder"]), float(lease["expires"])
    except (ValueError, KeyError, TypeError):
        return None, 0.0  # unreadable: as good as expired
