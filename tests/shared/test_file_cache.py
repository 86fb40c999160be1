"""Records on hot paths are parsed once per version of their file (``shared.file_cache``),
and the confusion matrix lives in its own file, older records still read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared.file_cache import StampCache
from shared.run_record import RunRecord
from shared.runs import (
    CONFUSION_MATRIX_FILE,
    RUN_MANIFEST,
    commit_digest,
    file_sha256,
    read_confusion_matrix,
    read_record,
    write_confusion_matrix,
    write_record,
)
from tests.helpers.runs import sample_record


def test_a_value_is_parsed_once_per_version_of_the_file(tmp_path: Path) -> None:
    cache, parsed = StampCache(size=2), []
    path = tmp_path / "f.json"
    path.write_text("1", encoding="utf-8")

    def parse(content: bytes) -> int:
        parsed.append(content)
        return int(content)

    assert cache.read("n", path, parse) == cache.read("n", path, parse) == 1
    assert len(parsed) == 1
    # An atomic rewrite (a new file renamed over the old one), as run.json is written.
    (tmp_path / "g.json").write_text("2", encoding="utf-8")
    os.replace(tmp_path / "g.json", path)
    assert cache.read("n", path, parse) == 2
    # A change in place of the same size with another mtime.
    path.write_text("3", encoding="utf-8")
    os.utime(path, ns=(0, 123))
    assert cache.read("n", path, parse) == 3 and len(parsed) == 3
    path.unlink()
    with pytest.raises(FileNotFoundError):
        cache.read("n", path, parse)


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    cache, parsed = StampCache(size=2), []
    for name in "abc":
        (tmp_path / name).write_text(name, encoding="utf-8")
        cache.read("x", tmp_path / name, parsed.append)
    cache.read("x", tmp_path / "a", parsed.append)  # evicted: read again
    assert len(parsed) == 4


def test_read_record_and_commit_digest_parse_each_run_json_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "cached-run"
    run_dir.mkdir()
    write_record(run_dir, sample_record("cached-run", ["a", "b"]))
    calls = []
    original = RunRecord.from_json.__func__  # type: ignore[attr-defined]

    def counting(cls: type[RunRecord], text: str | bytes) -> RunRecord:
        calls.append(text)
        return original(cls, text)

    monkeypatch.setattr(RunRecord, "from_json", classmethod(counting))
    first = read_record(run_dir)
    assert read_record(run_dir) is first and len(calls) == 1
    assert commit_digest(run_dir) == commit_digest(run_dir) == file_sha256(run_dir / RUN_MANIFEST)
    write_record(run_dir, first.model_copy(update={"label_names": ["a", "b", "c"]}))
    assert read_record(run_dir).label_names == ["a", "b", "c"] and len(calls) == 2
    assert commit_digest(run_dir) == file_sha256(run_dir / RUN_MANIFEST)


def test_the_confusion_matrix_reads_from_its_file_or_an_older_record(tmp_path: Path) -> None:
    run_dir = tmp_path / "new-run"
    run_dir.mkdir()
    record = sample_record("new-run", ["neg", "pos"])
    write_record(run_dir, record)
    assert read_confusion_matrix(run_dir, record) is None
    write_confusion_matrix(run_dir, ["neg", "pos"], [[3, 1], [0, 4]])
    assert json.loads((run_dir / CONFUSION_MATRIX_FILE).read_text())["label_names"] == [
        "neg",
        "pos",
    ]
    assert read_confusion_matrix(run_dir, record) == [[3, 1], [0, 4]]
    assert json.loads((run_dir / RUN_MANIFEST).read_text()).get("confusion_matrix") is None
    older = record.model_copy(update={"confusion_matrix": [[9, 0], [0, 9]]})
    assert read_confusion_matrix(run_dir, older) == [[9, 0], [0, 9]]
    # A run reusing another's model reads that run's file while it holds the commit reused.
    reuser_dir = tmp_path / "reuser"
    reuser_dir.mkdir()
    reuser = sample_record("reuser", ["neg", "pos"]).model_copy(
        update={"reused_from": "new-run", "source_commit": commit_digest(run_dir)}
    )
    assert read_confusion_matrix(reuser_dir, reuser) == [[3, 1], [0, 4]]
    write_record(run_dir, record.model_copy(update={"label_names": ["x", "y"]}))
    assert read_confusion_matrix(reuser_dir, reuser) is None, "the source was overwritten"
