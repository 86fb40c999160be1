"""A tiny BERT and a small labelled CSV, built in the test so the real loading paths run."""

from __future__ import annotations

import csv
import random
from pathlib import Path

POSITIVE = ["good", "great", "happy", "love", "excellent", "nice", "wonderful", "fun"]
NEGATIVE = ["bad", "awful", "sad", "hate", "terrible", "poor", "horrible", "boring"]
FILLER = ["the", "movie", "was", "really", "a", "day", "film", "it", "so", "very", "and", "this"]


def build_tiny_bert(path: Path, num_labels: int = 2) -> Path:
    """Save a 2-layer, 32-wide BERT with a WordPiece tokenizer to ``path``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)  # the same tiny model every time, so tests learn reproducibly

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sentiment_rows(
    count: int, seed: int = 0, string_labels: bool = False
) -> list[tuple[str, object]]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        positive = i % 2 == 0
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if positive else NEGATIVE)]
        rng.shuffle(words)
        label: object = ("positive" if positive else "negative") if string_labels else int(positive)
        rows.append((" ".join(words), label))
    return rows


def write_csv(
    path: Path, rows: list[tuple[str, object]], header: tuple[str, str] = ("sentence", "label")
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
