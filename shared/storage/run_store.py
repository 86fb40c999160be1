"""Runs on object storage: commits, fences, exports and aliases with conditional writes.

Keys mirror the filesystem layout under the ``BERT_RUNS_URI`` prefix:

- ``{run_id}/run.json``: the commit. A run is complete exactly when it exists. Its bytes are
  the ``RunRecord`` the trainer wrote, so its digest (SHA-256) is the run's commit digest
  on either kind of runs root.
- ``{run_id}/commits/{digest}/...``: that commit's model files, uploaded *before*
  ``run.json`` under a prefix named by the digest of the ``run.json`` about to be written.
  Nothing but a ``run.json`` with that digest ever points there, so a prefix whose upload
  was cut off (a killed worker) is an orphan nobody reads, and a stale attempt's upload
  never mixes with another commit's files.
- ``{run_id}/commits/{digest}/onnx/...``: the ONNX export, added after the commit,
  ``onnx/export.json`` last: bound to the commit by its path.
- ``.fences/{run_id}.json``: the attempt that last claimed the run (``FenceRecord``).
- ``_aliases/{alias}.json``: alias pointers, as on a filesystem.

The writes that decide something are conditional: a new ``run.json`` is created only if
none exists (``If-None-Match: *``), an overwrite replaces only the ``run.json`` it set out
to replace (``If-Match`` on the ETag read when it claimed the run), fences and alias
pointers move only from the version just read. A losing writer gets ``Refused`` and writes
nothing more.

Workers keep a private local folder (``BERT_RUNS_DIR``): the trainer mirrors ``run.json``
files there (``sync_records``), so the run-folder code decides reuse and conflicts exactly as
on a shared filesystem; the inferencer and exports download a commit's files into a
size-bounded cache keyed by the commit digest (``served_run``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from shared.logging import get_logger
from shared.manifests import FenceRecord, ManifestError
from shared.storage.objects import Blob, Conflict, ObjectStore

log = get_logger(__name__)

RUN_MANIFEST = "run.json"
COMMITS = "commits"
CHECKPOINTS = "checkpoints"
FENCES = ".fences"
ALIASES = "_aliases"
EXPORT_DIR = "onnx"
EXPORT_MANIFEST = "export.json"
# Local cache of downloaded commits, inside the worker's private BERT_RUNS_DIR.
CACHE_DIR = ".store-cache"
DEFAULT_CACHE_BYTES = 20 * 1024**3
# Keys that are never runs at the top of the prefix (run ids start with a letter or digit).
_NOT_RUNS = (".", "_")


class NotDownloaded(LookupError):
    """The commit is not in this worker's cache (and the caller may not wait for it)."""


class Refused(Exception):
    """A conditional write lost: another attempt or commit got there first."""


@dataclass(frozen=True)
class FenceToken:
    workflow_id: str
    workflow_run_id: str
    attempt: int


@dataclass(frozen=True)
class Claim:
    """What an attempt claimed: the ``run.json`` version (ETag and digest) it replaces."""

    token: FenceToken
    replaces_etag: str | None
    replaces_digest: str | None


@dataclass(frozen=True)
class CachedCommit:
    """A commit downloaded into the local cache: its folder holds ``run.json`` and files."""

    run_id: str
    folder: Path
    digest: str
    export_etag: str | None


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _commit_prefix(run_id: str, digest: str) -> str:
    return f"{run_id}/{COMMITS}/{digest}/"


def _upload_marker(run_id: str, digest: str) -> str:
    """Beside the commit's prefix, not in it: never downloaded with the commit's files."""
    return f"{run_id}/{COMMITS}/{digest}.json"


def _token_json(token: FenceToken) -> bytes:
    return json.dumps(
        {
            "workflow_id": token.workflow_id,
            "workflow_run_id": token.workflow_run_id,
            "attempt": token.attempt,
        }
    ).encode()


class RunStore:
    """The runs root on object storage, with ``cache_root`` (``BERT_RUNS_DIR``) as this
    worker's private mirror, staging area and download cache."""

    def __init__(
        self, objects: ObjectStore, cache_root: Path, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        self.objects = objects
        self.cache_root = cache_root
        self.cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self._downloads: dict[str, threading.Lock] = {}
        # The ETag of each run.json last mirrored into the local root, by run id.
        self._mirrored: dict[str, str] = {}

    @property
    def uri(self) -> str:
        return self.objects.uri

    # -- records ------------------------------------------------------------------------

    def record(self, run_id: str) -> Blob | None:
        """The run's ``run.json`` (bytes and ETag); None while the run is not complete."""
        return self.objects.get(f"{run_id}/{RUN_MANIFEST}")

    def run_ids(self) -> list[str]:
        """Every run id with a folder in the store (complete or not)."""
        return sorted(name for name in self.objects.folders() if not name.startswith(_NOT_RUNS))

    def scan(self) -> tuple[dict[str, str], set[str]]:
        """One listing of the whole prefix: every complete run with its ``run.json``'s ETag,
        and every run id that has anything in the store (partial runs too)."""
        complete: dict[str, str] = {}
        seen: set[str] = set()
        for info in self.objects.listing(""):
            run_id, _, rest = info.key.partition("/")
            if not rest or run_id.startswith(_NOT_RUNS):
                continue
            seen.add(run_id)
            if rest == RUN_MANIFEST:
                complete[run_id] = info.etag
        return complete, seen

    def sync_records(self, local_root: Path, run_ids: Iterable[str] | None = None) -> None:
        """Mirror ``run.json`` files into ``local_root/{run_id}/`` (``run_ids``; None: every
        run): a run complete in the store is complete there with the same bytes (so the same
        commit digest), one that is not is not; partial runs get an empty folder. Model
        files are not copied."""
        if run_ids is not None:
            for run_id in run_ids:
                self._mirror_record(local_root, run_id, None)
            return
        complete, seen = self.scan()
        for run_id in sorted(seen - set(complete)):
            (local_root / run_id).mkdir(parents=True, exist_ok=True)
        # Local records of runs the store no longer holds are checked one by one.
        stale = [
            p.parent.name
            for p in local_root.glob(f"*/{RUN_MANIFEST}")
            if p.parent.name not in complete and not p.parent.name.startswith(_NOT_RUNS)
        ]
        for run_id in sorted(complete) + stale:
            self._mirror_record(local_root, run_id, complete.get(run_id))

    def _mirror_record(self, local_root: Path, run_id: str, listed_etag: str | None) -> None:
        local = local_root / run_id / RUN_MANIFEST
        if listed_etag is not None and self._mirrored.get(run_id) == listed_etag and local.exists():
            return
        blob = self.record(run_id)
        if blob is None:
            if local.exists():
                local.unlink(missing_ok=True)
                log.info("store.record_dropped", run_id=run_id)
            self._mirrored.pop(run_id, None)
            return
        if not (local.exists() and digest_of(local.read_bytes()) == digest_of(blob.data)):
            _write_bytes_atomic(local, blob.data)
        self._mirrored[run_id] = blob.etag

    # -- fences -------------------------------------------------------------------------

    def claim(self, run_id: str, token: FenceToken, may_replace: bool) -> Claim:
        """Make ``token`` the attempt that may commit ``run_id``; ``Refused`` when a newer
        attempt of the same workflow run holds it, or when the run is complete and
        ``may_replace`` is false. Remembers the ``run.json`` version it replaces."""
        key = f"{FENCES}/{run_id}.json"
        while True:
            current = self.objects.get(key)
            holder = _fence_of(current)
            if (
                holder is not None
                and (holder.workflow_id, holder.workflow_run_id)
                == (token.workflow_id, token.workflow_run_id)
                and holder.attempt > token.attempt
            ):
                raise Refused(
                    f"attempt {holder.attempt} already owns run {run_id!r} in the store (this "
                    f"is attempt {token.attempt})"
                )
            record = self.record(run_id)
            if record is not None and not may_replace:
                raise Refused(f"run {run_id!r} is already complete in the store")
            replaces = digest_of(record.data) if record is not None else None
            fence = FenceRecord(
                workflow_id=token.workflow_id,
                workflow_run_id=token.workflow_run_id,
                attempt=token.attempt,
                replaces=replaces,
            )
            data = json.dumps(fence.to_json(), sort_keys=True).encode()
            try:
                self.objects.write(key, data, current.etag if current is not None else None)
            except Conflict:
                continue  # another attempt claimed meanwhile: decide again on what it wrote
            return Claim(token, record.etag if record is not None else None, replaces)

    def holder(self, run_id: str) -> FenceToken | None:
        return _fence_of(self.objects.get(f"{FENCES}/{run_id}.json"))

    def _check_fence(self, run_id: str, claim: Claim) -> None:
        holder = self.holder(run_id)
        if holder != claim.token:
            owner = f"attempt {holder.attempt} of {holder.workflow_id!r}" if holder else "nobody"
            raise Refused(f"{owner} owns run {run_id!r} in the store now, not this attempt")

    # -- commits ------------------------------------------------------------------------

    def publish(self, run_id: str, staged: Path, claim: Claim) -> str:
        """Commit the staged run folder (its files and its ``run.json``): files under the
        commit's prefix first, then ``run.json`` with a conditional write. Returns the
        commit digest; ``Refused`` (nothing visible written) when this attempt lost the run."""
        record = (staged / RUN_MANIFEST).read_bytes()
        digest = digest_of(record)
        self._check_fence(run_id, claim)
        prefix = _commit_prefix(run_id, digest)
        files = [p for p in sorted(staged.rglob("*")) if p.is_file() and p.name != RUN_MANIFEST]
        started = time.monotonic()
        # Who uploads under this prefix, written first: the attempt's later commit clears
        # the uploads its own earlier attempts left unfinished (``_drop_earlier_uploads``).
        self.objects.put(_upload_marker(run_id, digest), _token_json(claim.token))
        self._upload_all(prefix, staged, files)
        self._check_fence(run_id, claim)
        try:
            self.objects.write(f"{run_id}/{RUN_MANIFEST}", record, claim.replaces_etag)
        except Conflict:
            raise Refused(
                f"another commit of run {run_id!r} landed first; this attempt's upload is "
                "left unreferenced"
            ) from None
        log.info(
            "store.committed",
            run_id=run_id,
            digest=digest[:16],
            files=len(files),
            bytes=sum(p.stat().st_size for p in files),
            seconds=round(time.monotonic() - started, 3),
        )
        if claim.replaces_digest is not None and claim.replaces_digest != digest:
            # The replaced commit: readers that still download it retry on the new one.
            self._delete_commit(run_id, claim.replaces_digest)
        self._drop_earlier_uploads(run_id, claim.token, keep=digest)
        return digest

    def _drop_earlier_uploads(self, run_id: str, token: FenceToken, keep: str) -> None:
        """The uploads of earlier attempts of this workflow run (killed or cut off mid-upload):
        they can never commit now. Uploads of other workflows are left to their own clean-up
        (``drop_orphans``, on cancel): one may be an overwrite that claimed after this commit."""
        for digest in self.objects.folders(f"{run_id}/{COMMITS}"):
            if digest == keep:
                continue
            marker = self.objects.get(_upload_marker(run_id, digest))
            holder = _fence_of(marker)
            if holder is None or (
                (holder.workflow_id, holder.workflow_run_id)
                == (token.workflow_id, token.workflow_run_id)
                and holder.attempt < token.attempt
            ):
                self._delete_commit(run_id, digest)
                log.info("store.upload_dropped", run_id=run_id, digest=digest[:16])

    def _delete_commit(self, run_id: str, digest: str) -> None:
        self._delete_prefix(_commit_prefix(run_id, digest))
        with contextlib.suppress(Exception):
            self.objects.delete([_upload_marker(run_id, digest)])

    def _upload_all(self, prefix: str, root: Path, files: list[Path]) -> None:
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="store-upload") as pool:
            for done in [
                pool.submit(self.objects.upload, prefix + p.relative_to(root).as_posix(), p)
                for p in files
            ]:
                done.result()

    def _delete_prefix(self, prefix: str) -> None:
        try:
            self.objects.delete([info.key for info in self.objects.listing(prefix)])
        except Exception as err:  # garbage left behind is harmless: nothing points at it
            log.warning("store.cleanup_failed", prefix=prefix, error=str(err)[:200])

    def drop_orphans(self, run_id: str) -> int:
        """Delete the commit prefixes of ``run_id`` that its ``run.json`` does not name (the
        uploads of attempts that were killed, cancelled or superseded). Call only when no
        attempt of the run can still be uploading (its workflow ended or was cancelled)."""
        record = self.record(run_id)
        keep = digest_of(record.data) if record is not None else None
        orphans = [d for d in self.objects.folders(f"{run_id}/{COMMITS}") if d != keep]
        for digest in orphans:
            self._delete_commit(run_id, digest)
        if record is None:
            self.drop_checkpoints(run_id)
            with contextlib.suppress(Exception):
                self.objects.delete([f"{FENCES}/{run_id}.json"])
        return len(orphans)

    # -- checkpoints --------------------------------------------------------------------

    def upload_checkpoint(
        self,
        run_id: str,
        relative: str,
        folder: Path,
        manifest: str,
        wanted: Callable[[], bool] = lambda: True,
    ) -> None:
        """A sealed checkpoint (``relative``: ``checkpoints/attempt-{n}/checkpoint-{step}``),
        its manifest last and only if still ``wanted()``: a checkpoint is in the store once
        its manifest is. Then the run's older checkpoints in the store go."""
        prefix = f"{run_id}/{relative}/"
        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != manifest]
        started = time.monotonic()
        self._upload_all(prefix, folder, files)
        if not wanted():
            return
        self.objects.upload(prefix + manifest, folder / manifest)
        log.info(
            "store.checkpoint_uploaded",
            run_id=run_id,
            checkpoint=relative,
            seconds=round(time.monotonic() - started, 3),
        )
        for older in self.checkpoints(run_id, manifest):
            if older != relative:
                self._delete_prefix(f"{run_id}/{older}/")

    def checkpoints(self, run_id: str, manifest: str) -> list[str]:
        """The run's sealed checkpoints in the store
        (``checkpoints/attempt-{n}/checkpoint-{step}``), newest step first."""
        found = []
        for info in self.objects.listing(f"{run_id}/{CHECKPOINTS}/"):
            relative = info.key[len(run_id) + 1 :]
            parts = relative.split("/")
            if len(parts) == 4 and parts[3] == manifest and parts[2].startswith("checkpoint-"):
                step = parts[2].removeprefix("checkpoint-")
                if step.isdigit():
                    found.append((int(step), "/".join(parts[:3])))
        return [relative for _step, relative in sorted(found, reverse=True)]

    def newest_checkpoint_manifest(self, run_id: str, manifest: str) -> bytes | None:
        """The manifest of the run's newest sealed checkpoint in the store, if any."""
        for relative in self.checkpoints(run_id, manifest):
            blob = self.objects.get(f"{run_id}/{relative}/{manifest}")
            if blob is not None:
                return blob.data
        return None

    def download_checkpoint(self, run_id: str, relative: str, folder: Path, manifest: str) -> None:
        """A sealed checkpoint of the store into ``folder`` (its manifest last, so a download
        cut off is no sealed checkpoint)."""
        prefix = f"{run_id}/{relative}/"
        keys = [info.key for info in self.objects.listing(prefix)]
        root = folder.resolve()
        for key in sorted(keys, key=lambda k: k.endswith("/" + manifest)):
            destination = (folder / key[len(prefix) :]).resolve()
            if not destination.is_relative_to(root):
                raise ValueError(f"{key!r} leaves the checkpoint folder")
            self.objects.download(key, destination)
        log.info("store.checkpoint_downloaded", run_id=run_id, checkpoint=relative)

    def drop_checkpoints(self, run_id: str) -> None:
        self._delete_prefix(f"{run_id}/{CHECKPOINTS}/")

    # -- exports ------------------------------------------------------------------------

    def export_etag(self, run_id: str, digest: str) -> str | None:
        return self.objects.etag(_commit_prefix(run_id, digest) + f"{EXPORT_DIR}/{EXPORT_MANIFEST}")

    def publish_export(self, run_id: str, digest: str, export_dir: Path) -> bool:
        """Add a commit's ONNX export (``export.json`` last, created once); False when the
        run no longer holds that commit or it has an export already."""
        record = self.record(run_id)
        if record is None or digest_of(record.data) != digest:
            return False
        prefix = _commit_prefix(run_id, digest) + f"{EXPORT_DIR}/"
        files = [p for p in sorted(export_dir.rglob("*")) if p.is_file()]
        manifest = export_dir / EXPORT_MANIFEST
        self._upload_all(prefix, export_dir, [p for p in files if p != manifest])
        try:
            self.objects.create(prefix + EXPORT_MANIFEST, manifest.read_bytes())
        except Conflict:
            return False
        return True

    # -- the download cache -------------------------------------------------------------

    def cached_commit(
        self, run_id: str, record: Blob, weights: bool = True, download: bool = True
    ) -> CachedCommit:
        """The commit ``record`` of ``run_id`` in the local cache, downloaded when missing
        (once, however many threads ask at once), with its export when it has one;
        without ``weights``, only its JSON files (metadata, for listings and promotions);
        without ``download``, ``NotDownloaded`` when it is not in the cache yet.

        The folder is ``{cache}/{digest}[-{export}]/{run_id}``: a recommit or an export that
        lands is another folder, so what is cached never changes under a reader."""
        digest = digest_of(record.data)
        export = self.export_etag(run_id, digest)
        name = digest[:32] + (f"-{digest_of(export.encode())[:12]}" if export else "")
        name += "" if weights else "-meta"
        folder = self.cache_root / CACHE_DIR / name / run_id
        if not download and not (folder / RUN_MANIFEST).is_file():
            raise NotDownloaded(f"run {run_id!r}'s commit {digest[:16]} is not cached here")
        with self._lock:
            download_lock = self._downloads.setdefault(name, threading.Lock())
        with download_lock:
            if not (folder / RUN_MANIFEST).is_file():
                self._download_commit(run_id, record, digest, folder, bool(export), weights)
                self._evict(keep=folder.parent)
        with contextlib.suppress(OSError):
            os.utime(folder.parent)  # recently used: the last to be evicted
        return CachedCommit(run_id, folder, digest, export)

    def _download_commit(
        self,
        run_id: str,
        record: Blob,
        digest: str,
        folder: Path,
        with_export: bool,
        weights: bool,
    ) -> None:
        prefix = _commit_prefix(run_id, digest)
        incoming = self.cache_root / CACHE_DIR / f".incoming-{uuid.uuid4().hex}"
        target = incoming / run_id
        started = time.monotonic()
        try:
            keys = [
                info.key
                for info in self.objects.listing(prefix)
                if (with_export or not info.key[len(prefix) :].startswith(f"{EXPORT_DIR}/"))
                and (weights or info.key.endswith(".json"))
            ]
            for key in keys:
                relative = key[len(prefix) :]
                destination = (target / relative).resolve()
                # Keys come from our own store, but a name must never lead out of the folder.
                if not destination.is_relative_to(target.resolve()):
                    raise ValueError(f"{key!r} leaves the run folder")
                self.objects.download(key, destination)
            if self.objects.etag(f"{run_id}/{RUN_MANIFEST}") != record.etag:
                # Replaced meanwhile: its files may be gone or half read. The caller retries.
                raise FileNotFoundError(f"run {run_id!r} was recommitted during its download")
            _write_bytes_atomic(target / RUN_MANIFEST, record.data)
            folder.parent.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(folder.parent, ignore_errors=True)  # a damaged earlier copy
            os.replace(incoming, folder.parent)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        log.info(
            "store.downloaded",
            run_id=run_id,
            digest=digest[:16],
            files=len(keys),
            seconds=round(time.monotonic() - started, 3),
        )

    def _evict(self, keep: Path) -> None:
        """Drop the least recently used cached commits until the cache fits its size."""
        root = self.cache_root / CACHE_DIR
        entries = []
        for folder in root.iterdir():
            if folder.name.startswith(".") or folder == keep:
                continue
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            entries.append((folder.stat().st_mtime, size, folder))
        kept = sum(p.stat().st_size for p in keep.rglob("*") if p.is_file())
        total = kept + sum(size for _, size, _ in entries)
        for _, size, folder in sorted(entries):
            if total <= self.cache_bytes:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            log.info("store.cache_evicted", folder=folder.name)

    # -- aliases ------------------------------------------------------------------------

    def alias_pointer(self, alias: str) -> Blob | None:
        return self.objects.get(f"{ALIASES}/{alias}.json")

    def write_alias_pointer(self, alias: str, data: bytes, etag: str | None) -> None:
        """Move the alias only from the version read (``etag``; None: it did not exist);
        ``Refused`` when another promotion moved it meanwhile."""
        try:
            self.objects.write(f"{ALIASES}/{alias}.json", data, etag)
        except Conflict:
            raise Refused(f"alias {alias!r} moved meanwhile") from None

    def alias_pointers(self) -> dict[str, bytes]:
        """Every alias pointer's content, by alias name."""
        found = {}
        for info in self.objects.listing(f"{ALIASES}/"):
            name = info.key[len(ALIASES) + 1 :]
            if "/" in name or not name.endswith(".json"):
                continue
            blob = self.objects.get(info.key)
            if blob is not None:
                found[name.removesuffix(".json")] = blob.data
        return found


def _fence_of(blob: Blob | None) -> FenceToken | None:
    if blob is None:
        return None
    try:
        record = FenceRecord.parse(blob.data, f"{FENCES} record")
    except ManifestError:
        return None  # unreadable: the next claim rewrites it
    return FenceToken(record.workflow_id, record.workflow_run_id, record.attempt)


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
