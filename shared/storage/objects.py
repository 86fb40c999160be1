"""An S3-compatible bucket prefix through obstore: plain and conditional writes, reads, lists.

Every key is relative to the prefix of ``BERT_RUNS_URI`` (``s3://bucket/prefix``). The
endpoint, credentials and region come from the standard AWS variables and credential chain
(``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_REGION``, web identity for IRSA,
the instance or pod metadata service), read by obstore's own client.

Conditional writes are what replace a filesystem's rename and lock: ``create`` writes only
when the key is absent (``If-None-Match: *``) and ``replace`` only while the key still
holds the version read before (``If-Match: <ETag>``); both raise ``Conflict`` otherwise.
``check_conditional_writes`` proves at start-up that the store honours them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Config

# Files at least this large go up in parts, several at once (obstore's multipart upload).
MULTIPART_CHUNK_BYTES = 16 * 1024 * 1024
UPLOAD_CONCURRENCY = 8
_PROBE_PREFIX = ".probes"


class StoreError(Exception):
    """The object store cannot be used as configured (one line, with the fix)."""


class Conflict(Exception):
    """A conditional write lost: the key exists (create) or changed since it was read."""


@dataclass(frozen=True)
class Blob:
    """An object's content and the version (ETag) it was read at."""

    data: bytes
    etag: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int


def parse_runs_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix without slashes at either end)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise StoreError(
            f"BERT_RUNS_URI={uri!r} must be s3://bucket or s3://bucket/prefix (any "
            "S3-compatible store: set AWS_ENDPOINT_URL for one that is not AWS)"
        )
    return parsed.netloc, parsed.path.strip("/")


class ObjectStore:
    """One bucket prefix; thread-safe (obstore's client is)."""

    def __init__(self, uri: str, env: Mapping[str, str] | None = None) -> None:
        from obstore.store import S3Store

        env = os.environ if env is None else env
        bucket, prefix = parse_runs_uri(uri)
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        config: S3Config = {}
        # The service-specific variable wins over the general one, as in the AWS SDKs.
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            config["endpoint"] = endpoint
            # Path-style requests: what MinIO, Ceph and most non-AWS stores expect.
            config["virtual_hosted_style_request"] = False
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if region:
            config["region"] = region
        client_options: ClientConfig = {
            "allow_http": bool(endpoint and endpoint.startswith("http://"))
        }
        try:
            self._store = S3Store(
                bucket, prefix=prefix or None, config=config, client_options=client_options
            )
        except Exception as err:
            raise StoreError(f"BERT_RUNS_URI={uri!r}: {_one_line(err)}") from None

    def __repr__(self) -> str:
        return f"ObjectStore({self.uri!r})"

    def get(self, key: str) -> Blob | None:
        """The object's content and ETag; None when it does not exist."""
        import obstore

        try:
            result = obstore.get(self._store, key)
            return Blob(bytes(result.bytes()), str(result.meta["e_tag"]))
        except FileNotFoundError:
            return None

    def etag(self, key: str) -> str | None:
        """The object's ETag (a HEAD request); None when it does not exist."""
        import obstore

        try:
            return str(obstore.head(self._store, key)["e_tag"])
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> str:
        """Write unconditionally (keys that only one writer ever uses); the new ETag."""
        import obstore

        return str(obstore.put(self._store, key, data)["e_tag"])

    def create(self, key: str, data: bytes) -> str:
        """Write only if ``key`` does not exist (``If-None-Match: *``); else ``Conflict``."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            return str(obstore.put(self._store, key, data, mode="create")["e_tag"])
        except (AlreadyExistsError, PreconditionError):
            raise Conflict(f"{key} exists already") from None

    def replace(self, key: str, data: bytes, etag: str) -> str:
        """Write only while ``key`` still has ``etag`` (``If-Match``); else ``Conflict``."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            return str(obstore.put(self._store, key, data, mode={"e_tag": etag})["e_tag"])
        except (AlreadyExistsError, PreconditionError, FileNotFoundError):
            raise Conflict(f"{key} changed since it was read") from None

    def write(self, key: str, data: bytes, etag: str | None) -> str:
        """``create`` when ``etag`` is None, else ``replace``."""
        return self.create(key, data) if etag is None else self.replace(key, data, etag)

    def upload(self, key: str, path: Path) -> None:
        """A local file to ``key``, in concurrent parts when it is large."""
        import obstore

        obstore.put(
            self._store,
            key,
            path,
            chunk_size=MULTIPART_CHUNK_BYTES,
            max_concurrency=UPLOAD_CONCURRENCY,
        )

    def download(self, key: str, path: Path) -> None:
        """``key`` into the file ``path`` (streamed); ``FileNotFoundError`` when absent."""
        import obstore

        result = obstore.get(self._store, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            for chunk in result.stream(min_chunk_size=MULTIPART_CHUNK_BYTES):
                handle.write(chunk)

    def listing(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder: end it with ``/``)."""
        import obstore

        # obstore lists whole path segments: list the folder, then filter by the full prefix.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else None
        for page in obstore.list(self._store, folder):
            for meta in page:
                key = str(meta["path"])
                if key.startswith(prefix):
                    yield ObjectInfo(key, str(meta["e_tag"]), int(meta["size"]))

    def folders(self, prefix: str | None = None) -> list[str]:
        """The names of the folders directly under ``prefix`` (None: the top level)."""
        import obstore

        listed = obstore.list_with_delimiter(self._store, prefix)
        return [str(name).rstrip("/").rsplit("/", 1)[-1] for name in listed["common_prefixes"]]

    def delete(self, keys: list[str]) -> None:
        import obstore

        if keys:
            obstore.delete(self._store, keys)


def check_conditional_writes(store: ObjectStore) -> str | None:
    """Why ``store`` cannot hold runs (one line), or None: a create must refuse an existing
    key and a replace must refuse a stale ETag. A store that ignores them would let a stale
    attempt overwrite a newer commit."""
    key = f"{_PROBE_PREFIX}/{uuid.uuid4().hex}"
    try:
        first = store.create(key, b"1")
        try:
            store.create(key, b"2")
            return (
                f"{store.uri} ignores If-None-Match (a second create of one key succeeded): "
                "use a store with conditional writes (AWS S3, MinIO, GCS, Ceph RGW)"
            )
        except Conflict:
            pass
        store.replace(key, b"3", first)
        try:
            store.replace(key, b"4", first)
            return (
                f"{store.uri} ignores If-Match (a write with a stale ETag succeeded): use a "
                "store with conditional writes (AWS S3, MinIO, GCS, Ceph RGW)"
            )
        except Conflict:
            pass
        return None
    except Conflict as err:
        return f"{store.uri} refused a conditional write it should accept ({err})"
    except Exception as err:
        return f"{store.uri} cannot be used: {_one_line(err)}"
    finally:
        # The probe's own clean-up; the reason above matters more than a failure here.
        with contextlib.suppress(Exception):
            store.delete([key])


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]
