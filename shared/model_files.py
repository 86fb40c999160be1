"""A model folder may make the loaders open only plain files inside itself.

transformers and tokenizers open the files a model folder's own metadata names, so a folder
inside the allowed roots could otherwise make the trainer or the inferencer read files
anywhere (another tenant's data, a mounted secret). ``check_model_folder`` refuses, before
anything is loaded, a folder whose metadata names anything but a plain file inside it:

- a sharded checkpoint's index (``*.index.json``, e.g. ``model.safetensors.index.json``,
  ``pytorch_model.bin.index.json``): every value of ``weight_map``;
- ``tokenizer_config.json``, ``special_tokens_map.json``, ``tokenizer.json`` (top level and
  its ``model``) and ``config.json``: every field ending in ``_file`` or ``_files``
  (``vocab_file``, ``merges_file``, ``tokenizer_file``, ``added_tokens_file``,
  ``special_tokens_map_file``, ``sp_model_file``, ``fast_tokenizer_files``, ...);
- a run's ONNX export manifest (``onnx/export.json``): ``tokenizer``, ``served_graph`` and
  ``fp32_graph``, inside ``onnx/``;
- with ``links_inside``: every symlink in the folder must resolve inside it (a run folder;
  a training ``model_name`` keeps the roots rule of ``LocalPathRoots.confine_tree``).

A named file is acceptable when its name is relative, has no ``..`` part, no URL or ``~``,
resolves (symlinks followed) inside the folder, and, if it exists, is a regular file.
Messages name the metadata file and the field, never the value (it is the file's content).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.errors import failure

INDEX_SUFFIX = ".index.json"
INDEX_FIELD = "weight_map"
# Metadata whose ``*_file`` / ``*_files`` fields name files the loaders may open.
FILE_FIELD_METADATA = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "config.json",
)
FILE_FIELD_SUFFIXES = ("_file", "_files")
EXPORT_MANIFEST_PATH = ("onnx", "export.json")
EXPORT_FILE_FIELDS = ("tokenizer", "served_graph", "fp32_graph")
_NAMES = "names a file outside its folder (or not a plain file) in "


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def names_plain_file_inside(folder: Path, name: str) -> bool:
    """Whether ``name`` (from ``folder``'s metadata) is a plain file inside ``folder``."""
    candidate = name.replace("\\", "/")
    if not candidate or candidate.startswith(("/", "~")) or "://" in candidate:
        return False
    if len(candidate) > 1 and candidate[1] == ":":  # a Windows drive
        return False
    if ".." in candidate.split("/"):
        return False
    root = folder.resolve()
    target = (root / candidate).resolve()
    if not target.is_relative_to(root) or target == root:
        return False
    return not target.exists() or target.is_file()


def _file_fields(metadata: Any) -> Iterator[tuple[str, Any]]:
    if not isinstance(metadata, dict):
        return
    for key, value in metadata.items():
        if isinstance(key, str) and key.endswith(FILE_FIELD_SUFFIXES):
            yield key, value


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (the loader reports
    that itself, with its own error)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _problems(folder: Path, links_inside: bool) -> Iterator[str]:
    """What is wrong, for each link or metadata entry that names a file it must not."""
    root = folder.resolve()
    if links_inside:
        for entry in sorted(root.rglob("*")):
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                yield f"holds {str(entry.relative_to(root))!r}, a link to outside its folder"
    for index in sorted(root.glob(f"*{INDEX_SUFFIX}")):
        data = _read_json(index) if index.is_file() else None
        weight_map = data.get(INDEX_FIELD) if isinstance(data, dict) else None
        for name in _strings(weight_map):
            if not names_plain_file_inside(root, name):
                yield _NAMES + f"{index.name} field {INDEX_FIELD!r}"
                break
    for metadata_name in FILE_FIELD_METADATA:
        metadata = _read_json(root / metadata_name)
        sections = [metadata]
        if metadata_name == "tokenizer.json" and isinstance(metadata, dict):
            sections.append(metadata.get("model"))
        for section in sections:
            for key, value in _file_fields(section):
                if not all(names_plain_file_inside(root, name) for name in _strings(value)):
                    yield _NAMES + f"{metadata_name} field {key[:100]!r}"
    export = root.joinpath(*EXPORT_MANIFEST_PATH)
    manifest = _read_json(export)
    if isinstance(manifest, dict):
        for key in EXPORT_FILE_FIELDS:
            value = manifest.get(key)
            if value is not None and not (
                isinstance(value, str) and names_plain_file_inside(export.parent, value)
            ):
                yield _NAMES + f"{'/'.join(EXPORT_MANIFEST_PATH)} field {key!r}"


def check_model_folder(
    folder: Path, subject: str, error_type: str, fix: str, links_inside: bool = False
) -> None:
    """Refuse ``folder`` (``error_type``, naming ``subject``, the file and the field) when
    its metadata names anything but plain files inside it. A missing folder passes: the
    loader reports it."""
    if not folder.is_dir():
        return
    problem = next(_problems(folder, links_inside), None)
    if problem is not None:
        raise failure(
            error_type,
            f"{subject} {problem}; {fix}",
        )
