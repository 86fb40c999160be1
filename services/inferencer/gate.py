"""The ``evaluate_promotion_gate`` activity: a promotion's candidate and the alias's current
run scored on one labelled file, by one metric (docs/inference.md, "Rollouts").

Both runs classify the gate's rows through this worker's own classifiers (the ``ModelCache``:
ONNX Runtime for a run with an export, as served), and the metric is computed by the
trainer's own per-task metrics (``services/trainer/training/evaluation.py``: scikit-learn,
scipy, seqeval), so a gate's F1 is the F1 a training run reports. No PyTorch is needed.

The file is read in the candidate's columns (``text_column``, ``text_pair_column``,
``label_column``, ``label_separator``) and must resolve inside this worker's
``BERT_LOCAL_PATH_ROOTS`` (``InvalidConfig`` otherwise, before it is opened): csv, json (an
array of rows, or JSON lines), jsonl, or parquet (with pyarrow). Runs of different tasks or
labels are ``InvalidConfig``; a file that does not fit the runs is ``DatasetError`` naming
the row.
"""

from __future__ import annotations

import contextvars
import csv
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from temporalio import activity

from services.inferencer.model_cache import ModelCache
from services.trainer.run_folder.paths import LocalPathRoots
from shared.aliases import check_same_outputs
from shared.errors import DATASET_ERROR, INVALID_CONFIG, failure
from shared.logging import get_logger
from shared.rollout_types import GATE_ACTIVITY, GateRequest, GateScores
from shared.run_record import RunRecord
from shared.runs import ServedRun, resolve_served_run
from shared.tasks import MULTI_LABEL, REGRESSION, TOKEN_CLASSIFICATION, check_metric
from shared.types import BertFineTuneConfig

log = get_logger(__name__)

GATE_FORMATS = (".csv", ".json", ".jsonl", ".parquet")
# A gate compares two models on held-out rows; more than this is a training set, not a gate.
MAX_GATE_ROWS = 100_000
HEARTBEAT_SECONDS = 10
DEVICE = "cpu"
GATE_BATCH_SIZE = 32
FIELD = "gate.data_file"


def _dataset_error(data_file: str, message: str) -> Exception:
    return failure(DATASET_ERROR, f"{FIELD} {data_file!r}: {message}")


def read_rows(path: Path, data_file: str) -> list[dict[str, Any]]:
    """The file's rows as dicts (csv cells are strings; empty cells None)."""
    suffix = path.suffix.lower()
    if suffix not in GATE_FORMATS:
        raise _dataset_error(
            data_file,
            f"unsupported file type {suffix or '(none)'!r}; use .csv, .json, .jsonl or .parquet",
        )
    if not path.is_file():
        raise _dataset_error(data_file, "does not exist or is not a file")
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as parquet  # type: ignore[import-untyped]
        except ImportError:
            raise _dataset_error(
                data_file, "this inferencer cannot read parquet (no pyarrow); use csv or jsonl"
            ) from None
        try:
            return list(parquet.read_table(path).to_pylist())
        except Exception as err:  # pyarrow raises its own types
            raise _dataset_error(data_file, f"is not a readable parquet file ({err})") from None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise _dataset_error(
            data_file, f"is not UTF-8 (bad byte near offset {err.start}); re-encode it"
        ) from None
    if suffix == ".csv":
        return [
            {key: (value if value != "" else None) for key, value in row.items()}
            for row in csv.DictReader(io.StringIO(text, newline=""))
        ]
    return _json_rows(text, data_file)


def _json_rows(text: str, data_file: str) -> list[dict[str, Any]]:
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            rows = json.loads(stripped)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise _dataset_error(data_file, f"is not JSON or JSON lines ({err.msg})") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise _dataset_error(data_file, "must hold one object per row (a JSON array or lines)")
    return rows


def _cell(row: dict[str, Any], column: str, index: int, data_file: str) -> Any:
    if column not in row:
        raise _dataset_error(
            data_file,
            f"row {index} has no column {column!r} (the candidate's columns are read); its "
            f"columns: {', '.join(sorted(map(str, row)))[:300]}",
        )
    return row[column]


def _label_name(value: Any, names: list[str], index: int, data_file: str) -> str:
    """A label cell as one of the run's label names: its text (``1`` for a run trained on
    integer labels), or a class id of a run whose labels have names (a hub dataset's)."""
    name = str(value).strip() if value is not None else ""
    is_id = isinstance(value, int) and not isinstance(value, bool)
    if name not in names and is_id and 0 <= value < len(names):
        return names[value]
    if name not in names:
        raise _dataset_error(
            data_file,
            f"row {index}: label {name[:60]!r} is not one of the runs' labels "
            f"({', '.join(names[:20])})",
        )
    return name


def _label_names(
    value: Any, config: BertFineTuneConfig, names: list[str], index: int, data_file: str
) -> list[str]:
    """A multi-label cell: a list, or a string split on ``label_separator``; empty: none."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.split(config.label_separator) if config.label_separator else [value]
        items: list[Any] = [part for part in parts if part.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise _dataset_error(
            data_file,
            f"row {index}: a multi-label cell must be a list of labels, or a string split on "
            "label_separator",
        )
    return [_label_name(item, names, index, data_file) for item in items]


def _number(value: Any, index: int, data_file: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise _dataset_error(data_file, f"row {index}: the label is not a number") from None


def _words(value: Any, index: int, data_file: str, what: str) -> list[str]:
    words = value.split() if isinstance(value, str) else value
    plain = isinstance(words, list) and all(isinstance(w, str) and w.split() == [w] for w in words)
    if not plain:
        raise _dataset_error(
            data_file,
            f"row {index}: {what} must be a list of words without spaces (or a string of words)",
        )
    return words


class GateRows:
    """The gate's texts (and second texts) and their true labels, per task: label names,
    lists of label names, numbers, or lists of tags (one per word)."""

    def __init__(self, rows: list[dict[str, Any]], record: RunRecord, data_file: str) -> None:
        config = record.config
        self.task = config.task
        names = list(record.label_names)
        self.texts: list[str] = []
        self.pairs: list[str] | None = [] if config.text_pair_column else None
        self.truth: list[Any] = []
        for index, row in enumerate(rows):
            text = _cell(row, config.text_column, index, data_file)
            label = _cell(row, config.label_column, index, data_file)
            if self.task == TOKEN_CLASSIFICATION:
                words = _words(text, index, data_file, "the text")
                tags = [
                    _label_name(tag, names, index, data_file)
                    for tag in _words(label, index, data_file, "the tags")
                ]
                if len(words) != len(tags):
                    raise _dataset_error(
                        data_file,
                        f"row {index}: {len(words)} words but {len(tags)} tags; give one tag "
                        "per word",
                    )
                self.texts.append(" ".join(words))
                self.truth.append(tags)
                continue
            if not isinstance(text, str) or not text.strip():
                raise _dataset_error(data_file, f"row {index}: the text is empty or not text")
            self.texts.append(text)
            if self.pairs is not None:
                assert config.text_pair_column is not None
                pair = _cell(row, config.text_pair_column, index, data_file)
                self.pairs.append("" if pair is None else str(pair))
            if self.task == MULTI_LABEL:
                self.truth.append(_label_names(label, config, names, index, data_file))
            elif self.task == REGRESSION:
                self.truth.append(_number(label, index, data_file))
            else:
                self.truth.append(_label_name(label, names, index, data_file))
        if not self.texts:
            raise _dataset_error(data_file, "has no rows")


def score(
    metric: str, rows: GateRows, label_names: list[str], predictions: list[dict[str, Any]]
) -> float:
    """``metric`` of ``predictions`` against the rows' labels, by the trainer's metrics."""
    import numpy as np

    from services.trainer.training.evaluation import (
        ClassificationMetrics,
        MultiLabelMetrics,
        RegressionMetrics,
        TokenClassificationMetrics,
    )

    names = sorted(label_names)  # the runs' label sets are equal; their orders may not be
    index = {name: i for i, name in enumerate(names)}
    unknown = {
        name
        for p in predictions
        for name in (p.get("tags") or p.get("labels") or [p.get("label")])
        if name is not None and name not in index
    }
    if unknown and rows.task != REGRESSION:
        raise failure(
            INVALID_CONFIG,
            f"gate: a model predicts labels its run.json does not list ({sorted(unknown)[:5]}); "
            "its folder was changed after the commit: retrain it",
        )
    scores: dict[str, float]
    if rows.task == TOKEN_CLASSIFICATION:
        predicted = [list(p["tags"]) for p in predictions]
        scores = TokenClassificationMetrics(names).score(rows.truth, predicted)
    elif rows.task == MULTI_LABEL:

        def hot(sets: list[list[str]]) -> Any:
            matrix = np.zeros((len(sets), len(names)), dtype=int)
            for row, labels in enumerate(sets):
                for name in labels:
                    matrix[row, index[name]] = 1
            return matrix

        scores = MultiLabelMetrics().score(
            hot(rows.truth), hot([list(p["labels"]) for p in predictions])
        )
    elif rows.task == REGRESSION:
        scores = RegressionMetrics().score(
            np.asarray(rows.truth, dtype=np.float64),
            np.asarray([p["score"] for p in predictions], dtype=np.float64),
        )
    else:
        scores = ClassificationMetrics(len(names)).score(
            np.asarray([index[name] for name in rows.truth]),
            np.asarray([index[p["label"]] for p in predictions]),
        )
    return float({f"eval_{name}": value for name, value in scores.items()}[metric])


@contextmanager
def heartbeating() -> Iterator[None]:
    """Heartbeat every ``HEARTBEAT_SECONDS`` from a helper thread while the body runs (a
    model load has no steps to heartbeat from)."""
    stop = threading.Event()
    context = contextvars.copy_context()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            activity.heartbeat()

    thread = threading.Thread(target=context.run, args=(beat,), name="gate-heartbeat")
    thread.daemon = True
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class GateActivities:
    """``path_roots``: the folders a gate's ``data_file`` may be in (``BERT_LOCAL_PATH_ROOTS``)."""

    def __init__(self, runs_root: Path, cache: ModelCache, path_roots: LocalPathRoots) -> None:
        self._runs_root = runs_root
        self._cache = cache
        self._roots = path_roots

    @activity.defn(name=GATE_ACTIVITY)
    def evaluate_promotion_gate(self, request: GateRequest) -> GateScores:
        with heartbeating():
            return self.evaluate(request)

    def evaluate(self, request: GateRequest) -> GateScores:
        gate = request.gate
        candidate = resolve_served_run(self._runs_root, request.candidate_run_id)
        current = resolve_served_run(self._runs_root, request.current_run_id)
        check_same_outputs(candidate.record, current.record, "gate")
        try:
            check_metric(candidate.record.config.task, gate.metric, "gate.metric")
        except ValueError as err:
            raise failure(INVALID_CONFIG, str(err)) from None
        path = self._roots.confine(FIELD, gate.data_file, reader="the inferencer's gate")
        rows = read_rows(path, gate.data_file)
        if len(rows) > MAX_GATE_ROWS:
            raise _dataset_error(
                gate.data_file,
                f"{len(rows)} rows, over the {MAX_GATE_ROWS} a gate reads; use a sample",
            )
        parsed = GateRows(rows, candidate.record, gate.data_file)
        candidate_score = self._score(candidate, parsed, gate.metric)
        current_score = self._score(current, parsed, gate.metric)
        log.info(
            "gate.evaluated",
            metric=gate.metric,
            candidate_run_id=candidate.run_id,
            candidate_score=round(candidate_score, 6),
            current_run_id=current.run_id,
            current_score=round(current_score, 6),
            rows=len(parsed.texts),
        )
        return GateScores(
            metric=gate.metric,
            candidate_run_id=candidate.run_id,
            candidate_score=candidate_score,
            current_run_id=current.run_id,
            current_score=current_score,
            rows=len(parsed.texts),
        )

    def _score(self, served: ServedRun, rows: GateRows, metric: str) -> float:
        loaded = self._cache.get(served.model_dir, DEVICE)
        predictions = loaded.classifier.predict(
            rows.texts,
            served.record.config.max_seq_length,
            GATE_BATCH_SIZE,
            lambda done, size: None,
            rows.pairs,
        )
        return score(metric, rows, list(served.record.label_names), predictions)
