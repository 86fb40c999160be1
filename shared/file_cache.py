"""What was read from a file, kept while the file is unchanged (its stamp).

Records are read on hot paths: ``run.json`` on every inference request (and by promotions
and exports). Parsing and validating the same file each time is work one ``stat`` call
saves. A file's stamp is (device, inode, mtime_ns, size): a rewrite (a new file renamed
over the old one: a new inode) or a change in place gives another stamp. The stamp of a
cached value is taken from the open file its content was read from, so a content is never
kept under another version's stamp.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Stamp = tuple[int, int, int, int]


def _stamp_of(stat: os.stat_result) -> Stamp:
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size


def file_stamp(path: Path) -> Stamp:
    """``path``'s stamp; ``FileNotFoundError`` when it is gone."""
    return _stamp_of(path.stat())


class StampCache:
    """Values derived from files, by (kind, path), valid while the file's stamp holds.

    Bounded: the least recently used entries go first. Values are shared between callers:
    they must not be changed (pydantic's ``model_copy(update=...)`` makes a changed copy)."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[Stamp, Any]] = OrderedDict()

    def read(self, kind: str, path: Path, parse: Callable[[bytes], T]) -> T:
        """``parse(content of path)``, from the cache while ``path`` is unchanged.

        ``FileNotFoundError`` and other ``OSError``s, and what ``parse`` raises, pass
        through (nothing is cached then)."""
        key = (kind, str(path))
        stamp = file_stamp(path)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == stamp:
                self._entries.move_to_end(key)
                value: T = entry[1]
                return value
        with path.open("rb") as handle:
            stamp = _stamp_of(os.fstat(handle.fileno()))
            content = handle.read()
        value = parse(content)
        with self._lock:
            self._entries[key] = (stamp, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
