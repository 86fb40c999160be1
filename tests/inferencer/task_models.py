"""Tiny models of every task, built directly with transformers and saved like a run's model.

Random weights (seeded): what the tests check is that export and serving reproduce the
model, whatever it predicts. The vocabulary has WordPiece continuations (``##``), so words
split into several tokens and the first-token rule of token classification is exercised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TOKEN_CLASSIFICATION

WORDS = [
    "john", "smith", "mary", "lives", "in", "new", "york", "paris", "and", "works", "at",
    "acme", "corp", "the", "city", "is", "big", "good", "bad", "film", "a", "day", "was",
    "very", "berlin", "for", "google", "with", "ann", "lee", ",", ".", "!", "?", "-", "'",
    "##s", "##er", "##ing", "##ville", "##ton", "##x", "##o", "s", "n", "b", "x", "o",
]  # fmt: skip
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
GENRES = ["comedy", "drama", "news", "sports"]
SENTIMENTS = ["negative", "positive"]

# Texts a tagger sees: repeated spaces, tabs, newlines, leading and trailing blanks, words
# cut into several tokens (``smithson``, ``newton``), unknown words, punctuation glued on.
IRREGULAR_TEXTS = [
    "john smith lives in new york",
    "  mary   lee\tworks at  acme corp  ",
    "john\n\nsmithson lives in newton , paris",
    "ann-lee works for google.",
    "\u00e9t\u00e9 \u2003 berlin  \u00a0 xoxo mary",
    "",
    "   ",
    "paris",
    "the city is big and the city is good and john smith was in berlin for a day " * 3,
]
TEXTS = [
    "john smith lives in new york",
    "the film was very good",
    "a bad day in paris",
    "mary works at acme corp",
    "",
    "good good good bad bad film film day",
    "berlin is big , and google is in berlin !",
]
PAIRS = [
    "mary lives in paris",
    "a bad film",
    "the day was good",
    "john works for google",
    "an empty first text",
    "x",
    "is it ?",
]


def build_task_model(path: Path, task: str, seed: int = 0, max_positions: int = 64) -> Path:
    """Save a 2-layer, 32-wide BERT of ``task`` (its head, ``id2label``, ``problem_type``) and
    its fast WordPiece tokenizer into ``path``."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertForTokenClassification,
        BertTokenizerFast,
    )

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)
    labels = {
        SINGLE_LABEL: SENTIMENTS,
        MULTI_LABEL: GENRES,
        REGRESSION: ["score"],
        TOKEN_CLASSIFICATION: TAGS,
    }[task]
    head: dict[str, Any] = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    if task in (MULTI_LABEL, REGRESSION):
        head["problem_type"] = task
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        **head,
    )
    model_class = (
        BertForTokenClassification
        if task == TOKEN_CLASSIFICATION
        else BertForSequenceClassification
    )
    model = model_class(config)
    with torch.no_grad():  # outputs far enough apart that every label is predicted somewhere
        model.classifier.weight.mul_(25.0)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
