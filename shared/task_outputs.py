"""What a served run returns for one text, from its model's outputs, per task.

Both serving backends (ONNX Runtime and PyTorch) and the export's int8 check decode logits
here, so they agree by construction (``BertInferenceResult.predictions``, docs/tasks.md):

- single-label: ``{"label", "label_id", "score"}`` (softmax, the most probable label);
- multi-label: ``{"labels", "scores"}``: every label's sigmoid probability, and the labels
  whose probability is at least 0.5 (possibly none), in label order;
- regression: ``{"score"}``, the model's one output as it is;
- token classification: ``{"tags", "entities"}``. The words are ``text.split()``; each
  word's tag is read on its first token (the fast tokenizer's ``word_ids``, as the trainer
  aligns tags); a word the model never saw (cut by ``max_seq_length``) is tagged ``O``.
  Entities follow seqeval's default IOB2 reading (``B-X`` starts one, ``I-X`` continues an
  entity of type X and starts one after anything else), with code-point offsets into the
  text as sent (``text[start:end]`` is the entity's text, whatever whitespace separates its
  words) and the mean of its words' probabilities as score.

Pure numpy: the torch-free inferencer image imports it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TOKEN_CLASSIFICATION, Task

# A multi-label prediction includes a label from this probability on.
MULTI_LABEL_THRESHOLD = 0.5
OUTSIDE = "O"
_WORD = re.compile(r"\S+")  # the words of str.split(), with their positions


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word of ``text.split()``, in code points, end exclusive."""
    return [match.span() for match in _WORD.finditer(text)]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def is_token_task(task: str) -> bool:
    return task == TOKEN_CLASSIFICATION


def first_tokens(word_ids: Sequence[int | None], words: int) -> list[int | None]:
    """For each of ``words`` words, the position of its first token (None: not encoded)."""
    positions: list[int | None] = [None] * words
    for position, word in enumerate(word_ids):
        if word is not None and word < words and positions[word] is None:
            positions[word] = position
    return positions


def word_tags(
    token_logits: np.ndarray, word_ids: Sequence[int | None], words: int, label_names: list[str]
) -> tuple[list[str], list[float]]:
    """Each word's tag (on its first token) and its probability; ``O`` (probability 0.0)
    for a word without a token."""
    probabilities = softmax(np.asarray(token_logits, dtype=np.float64))
    tags, scores = [], []
    for position in first_tokens(word_ids, words):
        if position is None:
            tags.append(OUTSIDE)
            scores.append(0.0)
            continue
        best = int(probabilities[position].argmax())
        tags.append(label_names[best])
        scores.append(float(probabilities[position, best]))
    return tags, scores


def _entity_type(tag: str) -> tuple[str, str] | None:
    """(prefix, type) of an entity tag; None for ``O``. A tag without an IOB2 prefix counts
    as the beginning of an entity of its own name."""
    if tag == OUTSIDE:
        return None
    prefix, dash, kind = tag.partition("-")
    if dash and prefix in ("B", "I") and kind:
        return prefix, kind
    return "B", tag


def entities(
    text: str, tags: Sequence[str], scores: Sequence[float], spans: Sequence[tuple[int, int]]
) -> list[dict[str, Any]]:
    """The entities of a tagged text (seqeval's default IOB2 reading): label, code-point
    offsets of its first word's start and its last word's end, its text, mean probability."""
    found: list[dict[str, Any]] = []
    current: tuple[str, int, int] | None = None  # (type, first word, last word)

    def close() -> None:
        if current is None:
            return
        kind, first, last = current
        start, end = spans[first][0], spans[last][1]
        found.append(
            {
                "label": kind,
                "start": start,
                "end": end,
                "text": text[start:end],
                "score": float(np.mean(scores[first : last + 1])),
            }
        )

    for index, tag in enumerate(tags):
        parsed = _entity_type(tag)
        if parsed is None:
            close()
            current = None
            continue
        prefix, kind = parsed
        if prefix == "I" and current is not None and current[0] == kind:
            current = (kind, current[1], index)
            continue
        close()
        current = (kind, index, index)
    close()
    return found


def sequence_prediction(task: str, logits: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """One text's prediction from its sequence logits ``[num_labels]``."""
    logits = np.asarray(logits, dtype=np.float64)
    if task == REGRESSION:
        return {"score": float(logits[0])}
    if task == MULTI_LABEL:
        probabilities = sigmoid(logits)
        return {
            "labels": [
                name
                for name, p in zip(label_names, probabilities, strict=True)
                if p >= MULTI_LABEL_THRESHOLD
            ],
            "scores": {name: float(p) for name, p in zip(label_names, probabilities, strict=True)},
        }
    probabilities = softmax(logits)
    best = int(probabilities.argmax())
    return {"label": label_names[best], "label_id": best, "score": float(probabilities[best])}


def token_prediction(
    text: str, token_logits: np.ndarray, word_ids: Sequence[int | None], label_names: list[str]
) -> dict[str, Any]:
    """One text's tags and entities from its token logits ``[tokens, num_labels]`` and the
    word of each token (the encoding of ``text.split()`` as pre-split words)."""
    spans = word_spans(text)
    tags, scores = word_tags(token_logits, word_ids, len(spans), label_names)
    return {"tags": tags, "entities": entities(text, tags, scores, spans)}


def prediction(
    task: str,
    text: str,
    logits: np.ndarray,
    word_ids: Sequence[int | None] | None,
    label_names: list[str],
) -> dict[str, Any]:
    """One text's prediction: ``logits`` are its row of the model's output (for token
    classification ``[tokens, num_labels]``, unpadded, with the tokens' ``word_ids``)."""
    if is_token_task(task):
        return token_prediction(text, logits, word_ids or [], label_names)
    return sequence_prediction(task, logits, label_names)


def prediction_units(task: str, prediction: dict[str, Any]) -> list[Any]:
    """What the int8 check compares, per text: its label (single-label), its label set
    (multi-label), its word tags (token classification, one unit per word), its score
    (regression)."""
    if task == TOKEN_CLASSIFICATION:
        return list(prediction["tags"])
    if task == MULTI_LABEL:
        return [tuple(prediction["labels"])]
    if task == REGRESSION:
        return [prediction["score"]]
    return [prediction["label_id"]]


def model_task(model_dir: Path) -> Task:
    """The task of the model saved in ``model_dir``: the run's ``run.json`` says it (runs
    trained before tasks existed read as single-label); a folder without one (a model saved
    by hand) by its ``config.json``: a ``...ForTokenClassification`` architecture, else its
    ``problem_type`` (one output without one: regression, as transformers reads it)."""
    import json

    from shared.runs import RUN_MANIFEST, read_record

    if (model_dir / RUN_MANIFEST).is_file():
        return read_record(model_dir).config.task
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return SINGLE_LABEL
    if not isinstance(config, dict):
        return SINGLE_LABEL
    architectures = config.get("architectures") or []
    if any(str(name).endswith("ForTokenClassification") for name in architectures):
        return TOKEN_CLASSIFICATION
    problem = config.get("problem_type")
    if problem in (MULTI_LABEL, REGRESSION, SINGLE_LABEL):
        return problem
    labels = config.get("id2label")
    if isinstance(labels, dict) and len(labels) == 1:
        return REGRESSION
    return SINGLE_LABEL
