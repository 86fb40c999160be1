"""What serves a run id when the runs root is an object store: the commit's files in the
worker's local cache (``RunStore.cached_commit``), resolved from the store on every call,
so a promotion, a recommit or an export that lands is served from the next request.

The same rules as ``shared.runs.resolve_served_run`` on a filesystem: a run serves its own
commit, or, when it reused another run's model, that run's commit, only while it still is
the very commit reused. The downloaded folder then goes through the same model-folder checks
as any run folder before anything is loaded from it (``shared.model_files``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from shared.errors import RUN_NOT_FOUND, failure
from shared.run_record import RunRecord
from shared.runs import RUN_MANIFEST, ServedRun, resolve_run_dir
from shared.storage.objects import Blob
from shared.storage.run_store import RunStore, digest_of

# A commit replaced while it was being downloaded loses its files: read the record again.
_DOWNLOAD_TRIES = 3
_records: dict[str, RunRecord] = {}


def _record_of(run_id: str, blob: Blob) -> RunRecord:
    digest = digest_of(blob.data)
    record = _records.get(digest)
    if record is None:
        try:
            record = RunRecord.from_json(blob.data)
        except (ValueError, ValidationError) as err:
            raise failure(
                RUN_NOT_FOUND,
                f"run {run_id!r} has an unreadable {RUN_MANIFEST} in the store ({err}); it may "
                "have been written by a newer version (upgrade this worker) or be damaged",
            ) from None
        if len(_records) > 256:
            _records.clear()
        _records[digest] = record
    return record


def _complete(store: RunStore, run_id: str) -> Blob:
    blob = store.record(run_id)
    if blob is None:
        raise failure(
            RUN_NOT_FOUND,
            f"run {run_id!r} is not complete in {store.uri} (training is still running, "
            f"failed or was cancelled: it has no {RUN_MANIFEST}); list saved runs with "
            "`bert-finetune runs`",
        )
    return blob


def served_run(
    store: RunStore, runs_root: Path, run_id: str, weights: bool = True, download: bool = True
) -> ServedRun:
    """The local folder holding the commit that serves ``run_id`` (``weights``: with the
    model's weights; else only its small JSON files, for promotions and listings). Without
    ``download``: ``NotDownloaded`` when that commit is not in the cache yet."""
    resolve_run_dir(runs_root, run_id)  # the same refusal of bad run ids as on a filesystem
    for attempt in range(_DOWNLOAD_TRIES):
        blob = _complete(store, run_id)
        record = _record_of(run_id, blob)
        source_id, source = run_id, blob
        if record.reused_from is not None and record.reused_from != run_id:
            source_id = record.reused_from
            found = store.record(source_id)
            if found is None or digest_of(found.data) != record.source_commit:
                raise failure(
                    RUN_NOT_FOUND,
                    f"run {run_id!r} reused the model of run {source_id!r}, which has since "
                    "been removed, retrained or overwritten; train this run again "
                    "(overwrite: true)",
                )
            source = found
        try:
            cached = store.cached_commit(source_id, source, weights=weights, download=download)
        except FileNotFoundError:
            if attempt == _DOWNLOAD_TRIES - 1:
                raise failure(
                    RUN_NOT_FOUND,
                    f"run {run_id!r} is being replaced by another commit; try again in a moment",
                ) from None
            continue
        return ServedRun(run_id, cached.folder, record)
    raise AssertionError("unreachable")
