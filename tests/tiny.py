"""A tiny BERT and a small labelled CSV, built in the test so the real loading paths run."""

from __future__ import annotations

import csv
import random
from pathlib import Path

POSITIVE = ["good", "great", "happy", "love", "excellent", "nice", "wonderful", "fun"]
NEGATIVE = ["bad", "awful", "sad", "hate", "terrible", "poor", "horrible", "boring"]
FILLER = ["the", "movie", "was", "really", "a", "day", "film", "it", "so", "very", "and", "this"]


def build_tiny_bert(
    path: Path, num_labels: int = 2, words: list[str] | None = None, hidden_size: int = 32
) -> Path:
    """Save a 2-layer, 32-wide BERT with a WordPiece tokenizer to ``path``; ``words``: its
    vocabulary (default: the sentiment words of ``sentiment_rows``), each a whole token."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)  # the same tiny model every time, so tests learn reproducibly

    path.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = [*specials, *(words if words is not None else [*POSITIVE, *NEGATIVE, *FILLER])]
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def vocabulary(texts: list[str], limit: int) -> list[str]:
    """The ``limit`` most frequent words of ``texts`` as BERT's basic tokenizer splits them
    (lower-cased, punctuation apart), most frequent first: a tiny model's vocabulary."""
    from collections import Counter

    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer, splitter = BertNormalizer(lowercase=True), BertPreTokenizer()
    counts = Counter(
        word
        for text in texts
        for word, _span in splitter.pre_tokenize_str(normalizer.normalize_str(text))
    )
    return [word for word, _ in counts.most_common(limit)]


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


def build_tiny_roberta(path: Path, num_labels: int = 2) -> Path:
    """Save a 2-layer RoBERTa with a byte-level BPE tokenizer (whole words as merges)."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    words = [*POSITIVE, *NEGATIVE, *FILLER]
    # Byte-level BPE marks a leading space with "Ġ"; merge characters up to whole words.
    symbols = sorted({ch for word in words for ch in word} | {"Ġ"})
    merges: list[tuple[str, str]] = []
    tokens = list(symbols)
    for word in words:
        current = "Ġ"
        for ch in word:
            merges.append((current, ch))
            current += ch
            tokens.append(current)
    vocab = {token: i for i, token in enumerate(dict.fromkeys(specials + tokens))}
    tokenizer = RobertaTokenizerFast(
        vocab=vocab, merges=list(dict.fromkeys(merges)), add_prefix_space=True
    )
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        num_labels=num_labels,
    )
    RobertaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
