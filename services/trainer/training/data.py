"""Load and check training data: hub datasets or local csv/json/jsonl/parquet files.

Every problem with the data becomes a ``DatasetError`` that names the field and the fix.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.exceptions import ApplicationError

from services.trainer.run_folder.paths import LocalPathRoots, names_local_path
from shared import settings
from shared.errors import DATASET_ERROR, INVALID_CONFIG, failure
from shared.runs import file_sha256
from shared.types import BertFineTuneConfig

_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_TEXT_FORMATS = {"csv", "json"}
# The loaders built into ``datasets`` (the installed version's list is added at run time).
# As a ``dataset_name`` each reads every matching file under the worker's working directory,
# whatever ``BERT_LOCAL_PATH_ROOTS`` says, so they are refused.
_BUILTIN_LOADERS = frozenset(
    {
        *("arrow", "audiofolder", "cache", "csv", "generator", "imagefolder", "json"),
        *("pandas", "parquet", "spark", "sql", "text", "videofolder", "webdataset", "xml"),
    }
)
# A local dataset folder's metadata files, and the fields of each of their ``configs`` that
# name files (read by ``datasets`` relative to the folder, or anywhere if absolute).
_DATASET_METADATA = ("README.md", ".huggingface.yaml")
_DATASET_FILE_FIELDS = ("data_files", "data_dir")


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset with columns text, labels
    eval: Any | None
    label_names: list[str]
    fingerprint: str
    notes: list[str] = field(default_factory=list)

    @property
    def majority_baseline(self) -> float | None:
        """Accuracy of always predicting the most common training label, on the eval split."""
        if self.eval is None or len(self.eval) == 0:
            return None
        train_labels = self.train["labels"]
        majority = max(set(train_labels), key=train_labels.count)
        eval_labels = self.eval["labels"]
        return sum(1 for label in eval_labels if label == majority) / len(eval_labels)


def _check_local_file(field_name: str, value: str, roots: LocalPathRoots) -> tuple[str, Path]:
    path = roots.confine(field_name, value)
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise failure(
            DATASET_ERROR,
            f"{field_name} {value!r}: unsupported file type {path.suffix or '(none)'!r}; "
            "use .csv, .json, .jsonl or .parquet",
        )
    if not path.is_file():
        raise failure(DATASET_ERROR, f"{field_name} {value!r} does not exist or is not a file")
    if builder in _TEXT_FORMATS:
        _check_utf8(field_name, path)
    return builder, path


def _check_utf8(field_name: str, path: Path) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                decoder.decode(block)
                offset += len(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        raise failure(
            DATASET_ERROR,
            f"{field_name} {str(path)!r} is not UTF-8 (bad byte near offset {offset + err.start}); "
            "re-encode it, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`",
        ) from None


def builtin_loader_names() -> frozenset[str]:
    """The ``datasets`` library's packaged loaders (``csv``, ``json``, ``parquet``, ...)."""
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    except ImportError:  # a datasets version without the private table: the fixed list
        return _BUILTIN_LOADERS
    return _BUILTIN_LOADERS | frozenset(_PACKAGED_DATASETS_MODULES)


def _refuse_builtin_loader(dataset_name: str) -> None:
    if dataset_name.strip().rstrip("/").lower() in builtin_loader_names():
        raise failure(
            INVALID_CONFIG,
            f"dataset_name {dataset_name[:100]!r} is a loader built into the datasets library, "
            "which would read files from the worker's working directory; give your files as "
            "train_file and validation_file instead (or a Hugging Face dataset id, or a local "
            "dataset folder)",
        )


def _pattern_stays_inside(pattern: str) -> bool:
    """Whether a ``data_files``/``data_dir`` pattern names files under its folder only."""
    candidate = pattern.replace("\\", "/")
    if candidate.startswith(("/", "~")) or "://" in candidate or "::" in candidate:
        return False
    if len(candidate) > 1 and candidate[1] == ":":  # a Windows drive
        return False
    return ".." not in candidate.split("/")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def _check_dataset_metadata(folder: Path, value: str) -> None:
    """Refuse a local dataset folder whose ``configs`` metadata names files outside it
    (``datasets`` would read them). The message never quotes the metadata."""
    import yaml  # type: ignore[import-untyped]
    from huggingface_hub.repocard import metadata_load

    for name in _DATASET_METADATA:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name == "README.md":
                metadata = metadata_load(path)
            else:
                metadata = yaml.safe_load(path.read_text(encoding="utf-8"))
        except Exception:  # unparsable: datasets fails on it too, with a DatasetError
            continue
        configs = metadata.get("configs") if isinstance(metadata, dict) else None
        for index, entry in enumerate(configs if isinstance(configs, list) else []):
            if not isinstance(entry, dict):
                continue
            for field_name in _DATASET_FILE_FIELDS:
                if not all(map(_pattern_stays_inside, _strings(entry.get(field_name)))):
                    raise failure(
                        INVALID_CONFIG,
                        f"dataset_name {value!r}: the folder's {name} has configs[{index}]."
                        f"{field_name} naming files outside the folder (an absolute path, "
                        "'..', '~' or a URL); keep the data files inside the dataset folder "
                        "and name them relative to it, or give them as train_file and "
                        "validation_file",
                    )


def load_raw_splits(
    config: BertFineTuneConfig, roots: LocalPathRoots
) -> tuple[Any, Any | None, str]:
    """(train, validation or None, a fingerprint of the source data).

    Local files (and a local ``dataset_name`` folder) must lie inside ``roots``; they are
    checked before anything is opened.
    """
    import datasets

    datasets.disable_progress_bars()
    try:
        if config.train_file:
            builder, train_path = _check_local_file("train_file", config.train_file, roots)
            files = {"train": str(train_path)}
            digests = [file_sha256(train_path)]
            if config.validation_file:
                eval_builder, eval_path = _check_local_file(
                    "validation_file", config.validation_file, roots
                )
                if eval_builder != builder:
                    raise failure(
                        DATASET_ERROR,
                        "train_file and validation_file must have the same format "
                        f"({train_path.suffix} vs {eval_path.suffix})",
                    )
                files["validation"] = str(eval_path)
                digests.append(file_sha256(eval_path))
            loaded = datasets.load_dataset(builder, data_files=files)
            fingerprint = "files:" + ":".join(digests)
        else:
            dataset = config.dataset_name or ""  # set: the config requires one data source
            _refuse_builtin_loader(dataset)
            if names_local_path(dataset):
                folder = roots.confine_tree("dataset_name", dataset)
                if folder.is_dir():
                    _check_dataset_metadata(folder, dataset)
                dataset = str(folder)
            loaded = datasets.load_dataset(dataset, config.dataset_config_name)
            fingerprint = "hub:" + ":".join(
                f"{name}={split._fingerprint}" for name, split in sorted(loaded.items())
            )
    except ApplicationError:
        raise
    except Exception as err:  # datasets raises many unrelated types for unreadable data
        raise _load_failure(config, err) from None
    if "train" not in loaded:
        raise failure(
            DATASET_ERROR,
            f"dataset {config.dataset_name!r} has no 'train' split (splits: {sorted(loaded)})",
        )
    return loaded["train"], loaded.get("validation"), fingerprint


# Parser messages can quote the file (a row, a value); only these content-free parts are
# kept, so an error never shows what a file holds.
_PARSER_PROBLEMS = {
    "EOF inside string": "a quoted field is never closed",
    "Error tokenizing data": "malformed CSV",
    "JSON parse error": "malformed JSON",
    "Parquet magic bytes not found": "not a parquet file",
}
_FIELD_COUNT = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_LOCATION = re.compile(r"\b(line|row) (\d+)")


def _content_free_reason(err: BaseException) -> str:
    """The parser error's type, what went wrong and where, never the text it read."""
    text = str(err)
    if "corresponds to no data" in text:
        return "it has no data rows"
    reason = type(err).__name__
    problem = next((why for marker, why in _PARSER_PROBLEMS.items() if marker in text), None)
    if problem:
        reason += f": {problem}"
    if counts := _FIELD_COUNT.search(text):
        expected, line, seen = counts.groups()
        return f"{reason}: line {line} has {seen} fields, the header {expected}"
    if location := _LOCATION.search(text):
        reason += f" at {location.group(1)} {location.group(2)}"
    return reason


def _load_failure(config: BertFineTuneConfig, err: Exception) -> ApplicationError:
    # DatasetGenerationError only says "an error occurred"; the parser's error is its cause.
    inner = err.__cause__ or err.__context__ or err
    if type(err).__name__ != "DatasetGenerationError":
        inner = err
    if config.train_file:
        reason = _content_free_reason(err if "corresponds to no data" in str(err) else inner)
        files = f"train_file {config.train_file!r}"
        if config.validation_file:
            files += f" or validation_file {config.validation_file!r}"
        return failure(
            DATASET_ERROR,
            f"{files} could not be read ({reason}); check that the file is a valid "
            f"{Path(config.train_file).suffix.lstrip('.')} file with a header row",
        )
    lines = str(inner).strip().splitlines() or [""]
    reason = f"{type(inner).__name__}: {lines[0][:300]}"
    if names_local_path(config.dataset_name or ""):  # a local folder's files: never quoted
        reason = _content_free_reason(inner)
    return failure(
        DATASET_ERROR,
        f"dataset_name {config.dataset_name!r} (dataset_config_name "
        f"{config.dataset_config_name!r}) could not be loaded ({reason}); offline only "
        "datasets already in the Hugging Face cache load, otherwise use train_file",
    )


def _label_kind(values: list[Any], split: str, column: str) -> str:
    kinds = set()
    for row, value in enumerate(values):
        if value is None:
            raise failure(
                DATASET_ERROR, f"{split} row {row}: {column!r} is empty; every row needs a label"
            )
        if isinstance(value, bool):
            kinds.add("str")
        elif isinstance(value, int):
            kinds.add("int")
        elif isinstance(value, str):
            kinds.add("str")
        else:
            raise failure(
                DATASET_ERROR,
                f"label_column {column!r} holds {type(value).__name__} values (the first in "
                f"{split} row {row}); labels must be integers or strings",
            )
    if len(kinds) > 1:
        raise failure(
            DATASET_ERROR,
            f"label_column {column!r} mixes integers and strings; use one type for all labels",
        )
    return kinds.pop() if kinds else "int"


def _check_columns(split_name: str, dataset: Any, config: BertFineTuneConfig) -> None:
    for field_name, column in (
        ("text_column", config.text_column),
        ("label_column", config.label_column),
    ):
        if column not in dataset.column_names:
            # The header is the file's own text (its first row when it has no header): say
            # how many columns there are, never what they are called.
            raise failure(
                DATASET_ERROR,
                f"{field_name} {column!r} is not a column of the {split_name} split (it has "
                f"{len(dataset.column_names)} columns); check the header row and {field_name}",
            )


def _subsample(
    dataset: Any, limit: int | None, seed: int, field_name: str, notes: list[str]
) -> Any:
    if limit is None:
        return dataset
    if limit >= len(dataset):
        if limit > len(dataset):
            notes.append(
                f"{field_name}={limit} is more than the {len(dataset)} rows available; used all"
            )
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


def _check_class_count(label_column: str, count: int, limit: int) -> None:
    if count > limit:
        raise failure(
            INVALID_CONFIG,
            f"label_column {label_column!r} has {count} classes, more than the {limit} a run "
            "may have (BERT_MAX_CLASSES); check that label_column names the labels, not a "
            "text or id column, or ask the operator to raise BERT_MAX_CLASSES",
        )


def prepare_data(
    config: BertFineTuneConfig, roots: LocalPathRoots, max_classes: int | None = None
) -> PreparedData:
    """Load, check, subsample and label-encode the data (no tokenization yet).

    More than ``max_classes`` classes (default: ``BERT_MAX_CLASSES``) is ``InvalidConfig``.
    """
    max_classes = settings.max_classes() if max_classes is None else max_classes
    train, evaluation, source_fingerprint = load_raw_splits(config, roots)
    _check_columns("train", train, config)
    if evaluation is not None:
        _check_columns("validation", evaluation, config)
    notes: list[str] = []
    train = _subsample(train, config.max_train_samples, config.seed, "max_train_samples", notes)
    if evaluation is not None:
        evaluation = _subsample(
            evaluation, config.max_eval_samples, config.seed, "max_eval_samples", notes
        )
    if len(train) == 0:
        raise failure(DATASET_ERROR, "the train split is empty; it needs labelled rows")
    if evaluation is not None and len(evaluation) == 0:
        evaluation = None

    label_feature = train.features.get(config.label_column)
    train_labels = train[config.label_column]
    eval_labels = evaluation[config.label_column] if evaluation is not None else []
    kind = _label_kind(train_labels, "train", config.label_column)
    if eval_labels and _label_kind(eval_labels, "validation", config.label_column) != kind:
        raise failure(
            DATASET_ERROR,
            f"label_column {config.label_column!r} has different types in train and validation",
        )
    names_from_feature = getattr(label_feature, "names", None)
    if kind == "int" and names_from_feature:
        values: list[Any] = list(range(len(names_from_feature)))
        names = list(names_from_feature)
        bad = [
            (split, row)
            for split, labels in (("train", train_labels), ("validation", eval_labels))
            for row, v in enumerate(labels)
            if not 0 <= v < len(names)
        ]
        if bad:
            raise failure(
                DATASET_ERROR,
                f"label_column {config.label_column!r} has {len(bad)} ids outside the dataset's "
                f"{len(names)} classes (the first in {bad[0][0]} row {bad[0][1]}; unlabelled "
                "test rows use -1: drop them)",
            )
    else:
        values = sorted({v if kind == "int" else str(v) for v in train_labels})
        names = [str(v) for v in values]
    _check_class_count(config.label_column, len(names), max_classes)
    to_id = {v: i for i, v in enumerate(values)}
    used = {to_id[v if kind == "int" else str(v)] for v in train_labels}
    if len(used) < 2:
        raise failure(
            DATASET_ERROR,
            f"the train split has a single class after subsampling ({len(train_labels)} rows, "
            "one label); a classifier needs at least two: add data or raise max_train_samples",
        )
    unseen = [
        row for row, v in enumerate(eval_labels) if (v if kind == "int" else str(v)) not in to_id
    ]
    if unseen:
        raise failure(
            DATASET_ERROR,
            f"the validation split has {len(unseen)} rows whose label never occurs in the train "
            f"split (the first: validation row {unseen[0]}); use a train_file that covers every "
            "class",
        )

    def encode(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        texts = batch[config.text_column]
        for row, value in zip(indices, texts, strict=True):
            if not isinstance(value, str):
                raise ValueError(
                    f"text_column {config.text_column!r} holds a {type(value).__name__} value "
                    f"in row {row}; every row needs text"
                )
        labels = [to_id[v if kind == "int" else str(v)] for v in batch[config.label_column]]
        return {"text": texts, "labels": labels}

    def convert(dataset: Any) -> Any:
        try:
            return dataset.map(
                encode, batched=True, with_indices=True, remove_columns=dataset.column_names
            )
        except ValueError as err:
            raise failure(DATASET_ERROR, str(err)) from None

    train = convert(train)
    evaluation = convert(evaluation) if evaluation is not None else None
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "source": source_fingerprint,
                "train_rows": len(train),
                "eval_rows": len(evaluation) if evaluation is not None else 0,
                "labels": names,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    return PreparedData(train, evaluation, names, fingerprint, notes)
