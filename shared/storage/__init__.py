"""Where runs live: the shared filesystem (``BERT_RUNS_DIR``) or an object store
(``BERT_RUNS_URI=s3://bucket/prefix``).

Every part of the product passes the runs root around as a local folder. With an object
store, that folder is the worker's private cache and staging area, and the store is bound
to it once, when the process starts (``open_runs_store``); the few places that read or
write what other workers see (``shared.runs``, ``shared.aliases``, the run folder's claim
and commit, the export) ask ``store_for(runs_root)`` and go through the store
(``run_store.RunStore``) when there is one. Without a store nothing changes: the runs root
is the shared folder, as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.settings import Settings
    from shared.storage.run_store import RunStore

_bound: dict[Path, RunStore] = {}
_guard = threading.Lock()


def bind(runs_root: Path, store: RunStore) -> None:
    """Make ``store`` the runs root that ``runs_root`` (a local folder) stands for."""
    with _guard:
        _bound[runs_root.absolute()] = store


def unbind(runs_root: Path) -> None:
    with _guard:
        _bound.pop(runs_root.absolute(), None)


def store_for(runs_root: Path) -> RunStore | None:
    """The object store bound to ``runs_root``; None: the runs root is a shared folder."""
    if not _bound:
        return None
    return _bound.get(runs_root.absolute())


def open_runs_store(settings: Settings, check: bool = True) -> RunStore | None:
    """The store of ``BERT_RUNS_URI``, bound to ``BERT_RUNS_DIR``; None when unset.

    ``check``: refuse (``SettingsError``, one line) a store that does not honour conditional
    writes, before the worker polls anything."""
    if settings.runs_uri is None:
        return None
    from shared.settings import SettingsError
    from shared.storage.objects import ObjectStore, StoreError, check_conditional_writes
    from shared.storage.run_store import RunStore

    try:
        objects = ObjectStore(settings.runs_uri)
    except StoreError as err:
        raise SettingsError(str(err)) from None
    if check and (reason := check_conditional_writes(objects)) is not None:
        raise SettingsError(f"BERT_RUNS_URI: {reason}")
    store = RunStore(objects, settings.runs_dir, settings.store_cache_bytes)
    bind(settings.runs_dir, store)
    return store


def bind_from_env(runs_root: Path, env: Mapping[str, str] | None = None) -> RunStore | None:
    """In a process the worker started (a training rank), the worker's store, from the
    ``BERT_RUNS_URI`` it inherited, bound to ``runs_root``; None without one. The worker
    checked the store at its start-up already."""
    env = os.environ if env is None else env
    uri = (env.get("BERT_RUNS_URI") or "").strip()
    if not uri:
        return None
    from shared.storage.objects import ObjectStore
    from shared.storage.run_store import RunStore

    store = RunStore(ObjectStore(uri, env), runs_root)
    bind(runs_root, store)
    return store
