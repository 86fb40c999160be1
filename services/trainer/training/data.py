"""Load and check training data: hub datasets or local csv/json/jsonl/parquet files.

Every problem with the data becomes a ``DatasetError`` that names the field and the fix.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.exceptions import ApplicationError

from services.trainer.run_folder.paths import LocalPathRoots, names_local_path
from services.trainer.training.evaluation import baseline_metrics
from shared import settings
from shared.errors import DATASET_ERROR, INVALID_CONFIG, failure
from shared.runs import file_sha256
from shared.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TOKEN_CLASSIFICATION, Task
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
    """Both splits as rows of ``text`` (``text_pair`` for pairs; ``words`` for token
    classification, whose ``text`` is the words joined by spaces) and ``labels``: a class id
    (single-label), a multi-hot list (multi-label), a number (regression) or one tag id per
    word (token classification)."""

    train: Any  # datasets.Dataset
    eval: Any | None
    label_names: list[str]
    fingerprint: str
    notes: list[str] = field(default_factory=list)
    task: Task = SINGLE_LABEL
    has_pairs: bool = False
    # The trivial predictor's metrics on the eval split (``evaluation.baseline_metrics``).
    baseline_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def majority_baseline(self) -> float | None:
        """Accuracy of the trivial predictor (single-label: always the most common training
        label) on the eval split; None where the task has no accuracy or there is no eval."""
        if self.eval is None or len(self.eval) == 0:
            return None
        if self.task != SINGLE_LABEL:
            return self.baseline_metrics.get("eval_accuracy")
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
    named = [("text_column", config.text_column), ("label_column", config.label_column)]
    if config.text_pair_column is not None:
        named.append(("text_pair_column", config.text_pair_column))
    for field_name, column in named:
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

    encoder = _LABEL_ENCODERS[config.task]
    names, train_encoded, eval_encoded = encoder(config, train, evaluation, max_classes)
    words: dict[str, list[list[str]]] = {}
    if config.task == TOKEN_CLASSIFICATION:
        words["train"], train_encoded = train_encoded
        if evaluation is not None:
            words["validation"], eval_encoded = eval_encoded

    def convert(dataset: Any, split: str, labels: list[Any]) -> Any:
        def encode(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
            encoded: dict[str, list[Any]] = {"labels": [labels[i] for i in indices]}
            if split in words:
                rows = [words[split][i] for i in indices]
                encoded["words"] = rows
                encoded["text"] = [" ".join(row) for row in rows]
                return encoded
            encoded["text"] = _texts(batch, config.text_column, "text_column", indices, split)
            if config.text_pair_column is not None:
                encoded["text_pair"] = _texts(
                    batch, config.text_pair_column, "text_pair_column", indices, split
                )
            return encoded

        try:
            return dataset.map(
                encode, batched=True, with_indices=True, remove_columns=dataset.column_names
            )
        except ValueError as err:
            raise failure(DATASET_ERROR, str(err)) from None

    train = convert(train, "train", train_encoded)
    evaluation = convert(evaluation, "validation", eval_encoded) if evaluation is not None else None
    described: dict[str, Any] = {
        "source": source_fingerprint,
        "train_rows": len(train),
        "eval_rows": len(evaluation) if evaluation is not None else 0,
        "labels": names,
    }
    # What else shapes the rows, only when set (single-label fingerprints stay as they were).
    if config.task != SINGLE_LABEL:
        described["task"] = config.task
    if config.task == TOKEN_CLASSIFICATION:
        described["columns"] = [config.text_column, config.label_column]
    if config.text_pair_column is not None:
        described["columns"] = [config.text_column, config.text_pair_column]
    if config.label_separator is not None:
        described["label_separator"] = config.label_separator
    fingerprint = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
    baseline = baseline_metrics(
        config.task,
        train["labels"],
        evaluation["labels"] if evaluation is not None else [],
        names,
    )
    return PreparedData(
        train,
        evaluation,
        names,
        fingerprint,
        notes,
        task=config.task,
        has_pairs=config.text_pair_column is not None,
        baseline_metrics=baseline,
    )


def _texts(
    batch: dict[str, list[Any]], column: str, field_name: str, indices: list[int], split: str
) -> list[str]:
    """The column's texts; a row without text (or an empty second text) is refused by row."""
    texts = batch[column]
    for row, value in zip(indices, texts, strict=True):
        if value is None and field_name == "text_pair_column":
            value = ""  # an empty CSV cell
        if not isinstance(value, str):
            where = f"in row {row}" if field_name == "text_column" else f"in {split} row {row}"
            raise ValueError(
                f"{field_name} {column!r} holds a {type(value).__name__} value {where}; every "
                f"row needs {'text' if field_name == 'text_column' else 'a second text'}"
            )
        if field_name == "text_pair_column" and not value.strip():
            raise ValueError(
                f"{split} row {row}: text_pair_column {column!r} is empty; every pair needs a "
                "second text (drop the row, or train on single texts without text_pair_column)"
            )
    return texts


def _single_labels(
    config: BertFineTuneConfig, train: Any, evaluation: Any | None, max_classes: int
) -> tuple[list[str], list[Any], list[Any]]:
    """Class names and ids of both splits (one label per row)."""
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

    def encode(labels: list[Any]) -> list[int]:
        return [to_id[v if kind == "int" else str(v)] for v in labels]

    return names, encode(train_labels), encode(eval_labels)


def _feature_names(dataset: Any, column: str) -> list[str] | None:
    """Class names of a list column's items (a hub dataset's ``Sequence(ClassLabel)``)."""
    feature = dataset.features.get(column)
    names = getattr(getattr(feature, "feature", None), "names", None)
    return list(names) if names else None


def _unseen_in_validation(rows: list[int], what: str) -> ApplicationError:
    return failure(
        DATASET_ERROR,
        f"the validation split has {len(rows)} rows with {what} that never occurs in the train "
        f"split (the first: validation row {rows[0]}); use a train_file that covers every "
        f"{'tag' if what == 'a tag' else 'label'}",
    )


def _label_list(value: Any, row: int, split: str, config: BertFineTuneConfig) -> list[Any]:
    """One multi-label cell: a list of labels or a string split on ``label_separator``; an
    empty list, string or cell means no label applies."""
    column = config.label_column
    if value is None:  # an empty CSV cell: no label applies
        return []
    if isinstance(value, str):
        parts = value.split(config.label_separator) if config.label_separator else [value]
        return [part.strip() for part in parts if part.strip()]
    if isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, bool) or not isinstance(item, str | int):
                raise failure(
                    DATASET_ERROR,
                    f"label_column {column!r} holds a {type(item).__name__} inside the label "
                    f"list of {split} row {row}; labels must be strings or integers",
                )
        return list(value)
    raise failure(
        DATASET_ERROR,
        f"label_column {column!r} holds a {type(value).__name__} value in {split} row {row}; "
        "multi_label_classification needs a list of labels per row, or a string split on "
        "label_separator",
    )


def _multi_labels(
    config: BertFineTuneConfig, train: Any, evaluation: Any | None, max_classes: int
) -> tuple[list[str], list[Any], list[Any]]:
    """Label names (sorted) and multi-hot rows of both splits."""
    column = config.label_column
    feature_names = _feature_names(train, column)

    def decode(dataset: Any, split: str) -> list[list[Any]]:
        rows = [_label_list(v, row, split, config) for row, v in enumerate(dataset[column])]
        if feature_names is None:
            return rows
        bad = [
            row
            for row, labels in enumerate(rows)
            if any(not isinstance(v, int) or not 0 <= v < len(feature_names) for v in labels)
        ]
        if bad:
            raise failure(
                DATASET_ERROR,
                f"label_column {column!r} has {len(bad)} rows with ids outside the dataset's "
                f"{len(feature_names)} classes (the first: {split} row {bad[0]})",
            )
        return [[feature_names[v] for v in labels] for labels in rows]

    train_rows = decode(train, "train")
    eval_rows = decode(evaluation, "validation") if evaluation is not None else []
    if feature_names is not None:
        names = feature_names
    else:
        seen = {v for labels in train_rows for v in labels}
        if all(isinstance(v, int) for v in seen):
            names = [str(v) for v in sorted(seen)]
        else:
            names = sorted(str(v) for v in seen)
    if not names:
        raise failure(
            DATASET_ERROR,
            f"the train split has no labels at all ({len(train_rows)} rows, every label list "
            "empty); multi_label_classification needs rows with labels",
        )
    _check_class_count(column, len(names), max_classes)
    to_id = {name: i for i, name in enumerate(names)}
    unseen = [
        row for row, labels in enumerate(eval_rows) if any(str(v) not in to_id for v in labels)
    ]
    if unseen:
        raise _unseen_in_validation(unseen, "a label")

    def encode(rows: list[list[Any]]) -> list[list[float]]:
        encoded = []
        for labels in rows:
            hot = [0.0] * len(names)
            for v in labels:
                hot[to_id[str(v)]] = 1.0
            encoded.append(hot)
        return encoded

    return names, encode(train_rows), encode(eval_rows)


def _number(value: Any, row: int, split: str, column: str) -> float:
    if value is None:
        raise failure(
            DATASET_ERROR,
            f"{split} row {row}: label_column {column!r} is empty; regression needs a number in "
            "every row",
        )
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None:
        raise failure(
            DATASET_ERROR,
            f"{split} row {row}: label_column {column!r} is not a number; regression needs a "
            "number in every row (e.g. 3.5)",
        )
    if not math.isfinite(number):
        raise failure(
            DATASET_ERROR,
            f"{split} row {row}: label_column {column!r} is empty or not a finite number; "
            "regression needs a number in every row (e.g. 3.5)",
        )
    return number


def _regression_labels(
    config: BertFineTuneConfig, train: Any, evaluation: Any | None, max_classes: int
) -> tuple[list[str], list[Any], list[Any]]:
    """No label names; each row's number."""
    column = config.label_column

    def decode(dataset: Any, split: str) -> list[float]:
        return [_number(v, row, split, column) for row, v in enumerate(dataset[column])]

    evaluated = decode(evaluation, "validation") if evaluation is not None else []
    return [], decode(train, "train"), evaluated


_IOB2_TAG = re.compile(r"^(O|[BI]-\S+)$")


def _words(value: Any, row: int, split: str, column: str) -> list[str]:
    if isinstance(value, str):
        words = value.split()
    elif isinstance(value, list | tuple) and all(isinstance(w, str) for w in value):
        words = list(value)
    else:
        raise failure(
            DATASET_ERROR,
            f"text_column {column!r} holds a {type(value).__name__} value in {split} row {row}; "
            "token_classification needs a list of words per row (or a string of words)",
        )
    if not words:
        raise failure(
            DATASET_ERROR, f"{split} row {row}: text_column {column!r} has no words to tag"
        )
    return words


def _tags(
    value: Any, row: int, split: str, column: str, feature_names: list[str] | None
) -> list[str]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list | tuple):
        raise failure(
            DATASET_ERROR,
            f"label_column {column!r} holds a {type(value).__name__} value in {split} row {row}; "
            "token_classification needs a list of IOB2 tags per row, one per word",
        )
    tags = []
    for position, tag in enumerate(value):
        if feature_names is not None and isinstance(tag, int) and not isinstance(tag, bool):
            if not 0 <= tag < len(feature_names):
                raise failure(
                    DATASET_ERROR,
                    f"{split} row {row}: tag {position} of label_column {column!r} is an id "
                    f"outside the dataset's {len(feature_names)} tags",
                )
            tag = feature_names[tag]
        if not isinstance(tag, str) or _IOB2_TAG.match(tag) is None:
            raise failure(
                DATASET_ERROR,
                f"{split} row {row}: tag {position} of label_column {column!r} is not an IOB2 "
                "tag; use O, B-TYPE or I-TYPE (e.g. B-PER, I-PER)",
            )
        tags.append(tag)
    return tags


def _token_tags(
    config: BertFineTuneConfig, train: Any, evaluation: Any | None, max_classes: int
) -> tuple[list[str], Any, Any]:
    """Tag names (sorted, or the dataset's own) and, per split, (words, tag ids) by row."""
    text, label = config.text_column, config.label_column
    feature_names = _feature_names(train, label)

    def decode(dataset: Any, split: str) -> tuple[list[list[str]], list[list[str]]]:
        all_words, all_tags = [], []
        for row, (cell, tag_cell) in enumerate(zip(dataset[text], dataset[label], strict=True)):
            words = _words(cell, row, split, text)
            tags = _tags(tag_cell, row, split, label, feature_names)
            if len(words) != len(tags):
                raise failure(
                    DATASET_ERROR,
                    f"{split} row {row}: text_column {text!r} has {len(words)} words but "
                    f"label_column {label!r} has {len(tags)} tags; give one IOB2 tag per word",
                )
            all_words.append(words)
            all_tags.append(tags)
        return all_words, all_tags

    train_words, train_tags = decode(train, "train")
    eval_words, eval_tags = decode(evaluation, "validation") if evaluation is not None else ([], [])
    if feature_names is not None:
        for position, name in enumerate(feature_names):
            if _IOB2_TAG.match(name) is None:
                raise failure(
                    DATASET_ERROR,
                    f"label_column {label!r}: the dataset's tag {position} is not an IOB2 tag; "
                    "use O, B-TYPE or I-TYPE",
                )
        names = feature_names
    else:
        names = sorted({tag for tags in train_tags for tag in tags})
    _check_class_count(label, len(names), max_classes)
    to_id = {name: i for i, name in enumerate(names)}
    unseen = [row for row, tags in enumerate(eval_tags) if any(t not in to_id for t in tags)]
    if unseen:
        raise _unseen_in_validation(unseen, "a tag")

    def encode(rows: list[list[str]]) -> list[list[int]]:
        return [[to_id[tag] for tag in tags] for tags in rows]

    return (
        names,
        (train_words, encode(train_tags)),
        (eval_words, encode(eval_tags)),
    )


_LABEL_ENCODERS: dict[Task, Callable[..., tuple[list[str], Any, Any]]] = {
    SINGLE_LABEL: _single_labels,
    MULTI_LABEL: _multi_labels,
    REGRESSION: _regression_labels,
    TOKEN_CLASSIFICATION: _token_tags,
}
