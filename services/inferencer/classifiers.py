"""The two ways a saved run is served: its ONNX export (ONNX Runtime) or PyTorch.

Both classify in batches of texts of similar token length and return labels and softmax
confidences in input order. ``load_classifier`` picks ONNX Runtime on CPU whenever the run
has an export and PyTorch otherwise (runs trained before exports existed, or whose export
is still being built after the commit).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared.errors import MODEL_LOAD_ERROR, failure
from shared.model_loading import load_for_serving
from shared.onnx_export import EXPORT_DIR, has_export, load_manifest

# Called after each batch with the number of texts classified so far (heartbeats, metrics).
BatchCallback = Callable[[int, int], None]

# The most tokens one forward pass holds: its texts × its padded length (its longest row).
# Activation memory grows with it (MiniLM's attention needs about 34 MB per 512-token text),
# so a request's memory stays bounded whatever its batch_size and text lengths: 16 texts of
# 512 tokens, 64 of 128, a default batch of 32 texts up to 256 tokens. docs/inference.md.
MAX_BATCH_TOKENS = 8192


def token_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int = MAX_BATCH_TOKENS
) -> list[list[int]]:
    """Text indices in token-length order, cut into batches of at most ``batch_size`` texts
    whose count × padded length stays within ``max_tokens`` (a text longer than that goes
    alone). Each batch is padded only to its own longest row."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        width = max(1, lengths[index])  # ascending order: the newest row is the longest
        if current and (len(current) >= batch_size or (len(current) + 1) * width > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class Classifier(Protocol):
    backend: str
    device: str
    label_names: list[str]

    def classify(
        self, texts: list[str], max_seq_length: int, batch_size: int, on_batch: BatchCallback
    ) -> tuple[list[int], list[float]]: ...


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _load_error(run_dir: Path, err: Exception) -> Exception:
    return failure(
        MODEL_LOAD_ERROR,
        f"run {run_dir.name!r} could not be loaded ({type(err).__name__}: {err}); "
        "retrain it or check the runs volume",
    )


class OnnxClassifier:
    """A run's ONNX export on ONNX Runtime's CPU provider; needs neither torch nor transformers."""

    backend = "onnx"
    device = "cpu"

    def __init__(self, run_dir: Path) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        export = run_dir / EXPORT_DIR
        try:
            # A damaged manifest or one from a newer release is a ManifestError.
            manifest = load_manifest(run_dir)
            self._tokenizer_json = (export / manifest.tokenizer).read_text(encoding="utf-8")
            Tokenizer.from_str(self._tokenizer_json)  # fail now, not on the first request
            options = onnxruntime.SessionOptions()
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            # One request uses every core; concurrent requests share them through the OS.
            options.intra_op_num_threads = _usable_cores()
            options.inter_op_num_threads = 1
            # Idle threads sleep instead of spinning: spinning threads steal the cores from
            # concurrent requests and the SDK (an 8-text request took 4x longer on a busy
            # 2-core machine with spinning on).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = onnxruntime.InferenceSession(
                str(export / manifest.served_graph), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # tokenizers and onnxruntime raise their own types
            raise _load_error(run_dir, err) from None
        self.graph = manifest.served_graph
        self.label_names = list(manifest.label_names)
        self._input_names = list(manifest.input_names)
        self._pad_id = manifest.pad_token_id
        # Longer inputs have no position embedding: truncate there, as `pipeline` does.
        self._max_length = manifest.max_position_embeddings or None
        self._tokenizers: dict[int, Any] = {}
        self._tokenizers_lock = threading.Lock()

    def _tokenizer(self, max_length: int) -> Any:
        """One truncating tokenizer per length: reconfiguring a shared one is not thread-safe."""
        from tokenizers import Tokenizer

        with self._tokenizers_lock:
            tokenizer = self._tokenizers.get(max_length)
            if tokenizer is None:
                tokenizer = Tokenizer.from_str(self._tokenizer_json)
                tokenizer.no_padding()
                tokenizer.enable_truncation(max_length)
                self._tokenizers[max_length] = tokenizer
            return tokenizer

    def classify(
        self, texts: list[str], max_seq_length: int, batch_size: int, on_batch: BatchCallback
    ) -> tuple[list[int], list[float]]:
        import numpy as np
        import onnxruntime

        if self._max_length is not None:
            max_seq_length = min(max_seq_length, self._max_length)
        encodings = self._tokenizer(max_seq_length).encode_batch(texts)
        # After each batch the arena gives back what it grew by for that batch: without it
        # the process keeps the largest batch's activations for good (measured in
        # docs/inference.md: this beat turning the arena off, whose freed memory glibc kept).
        run_options = onnxruntime.RunOptions()
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        labels = [0] * len(texts)
        confidences = [0.0] * len(texts)
        done = 0
        for indices in token_batches([len(e.ids) for e in encodings], batch_size):
            width = max(len(encodings[i].ids) for i in indices)
            feed = {
                name: np.zeros((len(indices), width), dtype=np.int64) for name in self._input_names
            }
            if "input_ids" in feed:
                feed["input_ids"].fill(self._pad_id)
            for row, index in enumerate(indices):
                encoding = encodings[index]
                length = len(encoding.ids)
                columns = {
                    "input_ids": encoding.ids,
                    "attention_mask": encoding.attention_mask,
                    "token_type_ids": encoding.type_ids,
                }
                for name, array in feed.items():
                    array[row, :length] = columns[name]
            logits = self._session.run(["logits"], feed, run_options)[0].astype(np.float64)
            shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
            best = probabilities.argmax(axis=-1)
            for row, index in enumerate(indices):
                labels[index] = int(best[row])
                confidences[index] = float(probabilities[row, best[row]])
            done += len(indices)
            on_batch(done, len(indices))
        return labels, confidences


class TorchClassifier:
    """A run served by PyTorch + transformers (runs without an export, or on a GPU)."""

    backend = "torch"

    def __init__(self, run_dir: Path, device: str) -> None:
        # The one loading policy: safetensors only, no remote code, a real vocabulary.
        tokenizer, model = load_for_serving(str(run_dir), run_dir.name)
        model.to(device).eval()
        id2label = model.config.id2label or {}
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.label_names = [str(id2label.get(i, i)) for i in range(model.config.num_labels)]

    def classify(
        self, texts: list[str], max_seq_length: int, batch_size: int, on_batch: BatchCallback
    ) -> tuple[list[int], list[float]]:
        import torch

        # Token lengths first (the fast tokenizer takes milliseconds): batches by token budget.
        ids = self.tokenizer(texts, truncation=True, max_length=max_seq_length)["input_ids"]
        labels = [0] * len(texts)
        confidences = [0.0] * len(texts)
        done = 0
        with torch.inference_mode():
            for indices in token_batches([len(row) for row in ids], batch_size):
                encoded = self.tokenizer(
                    [texts[i] for i in indices],
                    truncation=True,
                    max_length=max_seq_length,
                    padding=True,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**encoded).logits.float()
                best = torch.softmax(logits, dim=-1).max(dim=-1)
                for position, index in enumerate(indices):
                    labels[index] = int(best.indices[position])
                    confidences[index] = float(best.values[position])
                done += len(indices)
                on_batch(done, len(indices))
        return labels, confidences


@dataclass
class LoadedModel:
    """A classifier and the ``run.json`` identity it was loaded from (see ``ModelCache``)."""

    classifier: Classifier
    stamp: tuple[int, ...]

    @property
    def label_names(self) -> list[str]:
        return self.classifier.label_names


def load_classifier(run_dir: Path, device: str) -> Classifier:
    """ONNX Runtime when the run has an export and the request runs on CPU, else PyTorch."""
    # The trainer publishes an export only while the folder holds the commit it was built
    # from, and an overwrite removes it before committing anew (both under the run's lock):
    # an export found here belongs to the model next to it.
    if device == "cpu" and has_export(run_dir):
        return OnnxClassifier(run_dir)
    return TorchClassifier(run_dir, device)
