"""Tokenized datasets cached on the runs root, shared by every trial and run that needs them.

A sweep's trials (and an experiment's runs of one model on one dataset) tokenize the same rows
with the same tokenizer again and again. The first to tokenize saves the result under
``$BERT_RUNS_DIR/.cache/tokenized/{key}/{split}`` (``Dataset.save_to_disk``, staged and renamed
into place in one step, so a reader never sees half an entry); the others memory-map it.

The key is a digest of everything the token ids depend on: the prepared data's fingerprint
(source files or hub revision, columns, labels, sampling), the tokenizer's full serialized
state (vocabulary, normalizer, pre- and post-processing, special tokens), ``max_seq_length``
and this cache's format version. Any change of those gives another key, so an entry is never
stale; an unreadable entry is tokenized again and replaced. The cache keeps the
``MAX_ENTRIES`` most recently used keys (names starting with ``.`` are never runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.logging import get_logger

log = get_logger(__name__)

CACHE_DIR = Path(".cache") / "tokenized"
# Bumped when what an entry holds changes (columns, truncation rule).
FORMAT_VERSION = 1
MAX_ENTRIES = 32
STALE_STAGING_SECONDS = 3600


def tokenizer_digest(tokenizer: Any) -> str:
    """A digest of the tokenizer's whole state: equal exactly when it encodes alike."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = backend.to_str()
    else:  # a slow (pure Python) tokenizer: its vocabulary and special tokens
        state = json.dumps(
            {"vocab": tokenizer.get_vocab(), "special": tokenizer.all_special_tokens},
            sort_keys=True,
        )
    described = f"{type(tokenizer).__name__}|{tokenizer.model_max_length}|{state}"
    return hashlib.sha256(described.encode()).hexdigest()


def cache_key(data_fingerprint: str, tokenizer: Any, max_seq_length: int) -> str:
    payload = json.dumps(
        {
            "format": FORMAT_VERSION,
            "data": data_fingerprint,
            "tokenizer": tokenizer_digest(tokenizer),
            "max_seq_length": max_seq_length,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class TokenCache:
    """The tokenized-dataset cache under one runs root."""

    def __init__(self, runs_root: Path, max_entries: int = MAX_ENTRIES) -> None:
        self.root = runs_root / CACHE_DIR
        self.max_entries = max_entries

    def get_or_build(self, key: str, split: str, build: Callable[[], Any]) -> Any:
        """The cached split for ``key``, or ``build()``'s dataset, saved for the next run."""
        from datasets import load_from_disk

        entry = self.root / key
        target = entry / split
        if target.is_dir():
            try:
                dataset = load_from_disk(str(target))
            except Exception as err:  # damaged or half-deleted: tokenize again
                log.warning("token_cache.unreadable", entry=str(target), error=repr(err))
            else:
                entry.touch()  # most recently used
                log.info("token_cache.hit", key=key, split=split, rows=len(dataset))
                return dataset
        dataset = build()
        self._save(dataset, target)
        return dataset

    def _save(self, dataset: Any, target: Path) -> None:
        """Stage beside the entry, then rename into place; a concurrent writer of the same key
        wrote the same rows, so whichever rename lands first stays."""
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        try:
            dataset.save_to_disk(str(staging))
            os.rename(staging, target)
        except OSError as err:  # an existing target (a concurrent writer) or a full disk
            log.info("token_cache.not_saved", entry=str(target), error=repr(err))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._prune()

    def _prune(self) -> None:
        """Keep the most recently used entries, and drop staging folders that a killed worker
        left (older than an hour: no save takes that long)."""
        entries: list[Path] = []
        for path in self.root.iterdir():
            if path.name.startswith(".staging-"):
                if time.time() - path.stat().st_mtime > STALE_STAGING_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir():
                entries.append(path)
        entries.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for stale in entries[self.max_entries :]:
            shutil.rmtree(stale, ignore_errors=True)
