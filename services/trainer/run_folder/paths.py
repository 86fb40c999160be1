"""Which local files and folders a training config may make the trainer read.

``train_file``, ``validation_file``, and a ``model_name`` or ``dataset_name`` that names a
local folder, are resolved (relative to the worker's working directory, symlinks followed)
and must lie inside one of the configured roots (``BERT_LOCAL_PATH_ROOTS``). Anything else
is refused with ``InvalidConfig`` before it is opened, so whoever may start a workflow
cannot make the trainer read other tenants' data or secrets mounted in the pod. The refusal
reads the same whether or not the path exists, so it does not reveal what is on the disk.
A local model folder must also name only plain files inside itself in its metadata (a
sharded checkpoint's index, tokenizer file fields: ``shared.model_files``); a local dataset
folder's ``configs`` metadata is checked the same way by the data loader.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import INVALID_CONFIG, failure
from shared.model_files import check_model_folder


@dataclass(frozen=True)
class LocalPathRoots:
    """Resolved absolute folders; a path is allowed when it resolves inside one of them."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, roots: Iterable[Path]) -> LocalPathRoots:
        return cls(tuple(Path(root).resolve() for root in roots))

    def contains(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def confine(self, field_name: str, value: str, reader: str = "the trainer") -> Path:
        """The resolved path ``value`` names, or ``InvalidConfig`` when it is outside (the
        message says ``reader`` may not read it: the trainer, or an inferencer's gate)."""
        resolved = _resolve(value)
        if not self.contains(resolved):
            raise self._refusal(field_name, value, reader=reader)
        return resolved

    def confine_tree(self, field_name: str, value: str) -> Path:
        """``confine`` for a folder, and every link inside it must stay inside the roots too."""
        folder = self.confine(field_name, value)
        if folder.is_dir():
            for entry in folder.rglob("*"):
                if entry.is_symlink() and not self.contains(entry.resolve()):
                    raise self._refusal(field_name, value, inside=entry.relative_to(folder))
        return folder

    def _refusal(
        self,
        field_name: str,
        value: str,
        inside: Path | None = None,
        reader: str = "the trainer",
    ) -> Exception:
        what = f"holds {str(inside)!r}, a link to outside" if inside is not None else "is outside"
        allowed = ", ".join(str(root) for root in self.roots) or "none"
        return failure(
            INVALID_CONFIG,
            f"{field_name} {value!r} {what} the folders {reader} may read; allowed: "
            f"{allowed} (BERT_LOCAL_PATH_ROOTS, symlinks followed): move the files under one "
            "of them or ask the operator to add their folder",
        )


def _resolve(value: str) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else Path.cwd() / path).resolve()


def names_local_path(value: str) -> bool:
    """Whether a ``model_name``/``dataset_name`` is a local path rather than a hub id.

    The loaders treat an existing folder as local before asking the hub, so an existing
    relative path counts as local too.
    """
    return value.startswith(("/", ".", "~")) or os.path.exists(value)


def default_roots(runs_root: Path) -> LocalPathRoots:
    """The roots when ``BERT_LOCAL_PATH_ROOTS`` is unset: the working directory and the runs."""
    return LocalPathRoots.of((Path.cwd(), runs_root))


def confine_model_name(model_name: str, roots: LocalPathRoots) -> None:
    """Refuse a local ``model_name`` outside the roots (a hub id is not a local path), or
    one whose metadata names files other than plain files inside it (``model_files``)."""
    if names_local_path(model_name):
        folder = roots.confine_tree("model_name", model_name)
        check_model_folder(
            folder,
            f"model_name {model_name!r}",
            INVALID_CONFIG,
            "a model folder must name only its own files: save it again with "
            "save_pretrained (model and tokenizer), without shards or tokenizer files elsewhere",
        )
