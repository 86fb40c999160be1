"""The two ways a saved run is served: its ONNX export (ONNX Runtime) or PyTorch.

Both tokenize a request once (texts, with their second texts for a run trained on pairs,
or each text's ``split()`` words for token classification), run batches of texts of similar
token length, and decode each text's logits with ``shared.task_outputs`` into the
prediction of the run's task, in input order; only the forward pass differs. ``classify``
is the single-label view of the same (label ids and softmax confidences).
``load_classifier`` picks ONNX Runtime on CPU whenever the run has an export and PyTorch
otherwise (runs trained before exports existed, or whose export is still being built after
the commit).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared.errors import INVALID_CONFIG, MODEL_LOAD_ERROR, failure
from shared.model_loading import load_for_serving
from shared.onnx_export import EXPORT_DIR, has_export, load_manifest
from shared.task_outputs import is_token_task, model_task, prediction
from shared.tasks import SINGLE_LABEL, TASKS

# One text's prediction (``BertInferenceResult.predictions``, docs/tasks.md).
Prediction = dict[str, Any]

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
    task: str

    def predict(
        self,
        texts: list[str],
        max_seq_length: int,
        batch_size: int,
        on_batch: BatchCallback,
        text_pairs: list[str] | None = None,
    ) -> list[Prediction]: ...

    def classify(
        self, texts: list[str], max_seq_length: int, batch_size: int, on_batch: BatchCallback
    ) -> tuple[list[int], list[float]]: ...


class _Served:
    """What both backends share: one tokenization per request, token-budget batches, padding,
    and decoding per task; a backend supplies ``_encode`` and ``_forward``."""

    task: str = SINGLE_LABEL
    label_names: list[str]
    _input_names: list[str]
    _pad_id: int = 0

    def _encode(self, inputs: list[Any], pairs: bool, words: bool, max_length: int) -> list[Any]:
        """The ``tokenizers.Encoding`` of every input, truncated, unpadded."""
        raise NotImplementedError

    def _forward(self, feed: dict[str, Any]) -> Any:
        """The ``logits`` of a padded batch (int64 arrays by input name), as numpy."""
        raise NotImplementedError

    def _max_length(self, max_seq_length: int) -> int:
        return max_seq_length

    def predict(
        self,
        texts: list[str],
        max_seq_length: int,
        batch_size: int,
        on_batch: BatchCallback,
        text_pairs: list[str] | None = None,
    ) -> list[Prediction]:
        """One prediction per text (its task's shape), in input order."""
        import numpy as np

        words = is_token_task(self.task)
        if text_pairs is not None and (words or len(text_pairs) != len(texts)):
            raise failure(
                INVALID_CONFIG,
                f"text_pairs: {len(text_pairs)} second texts for {len(texts)} texts"
                if not words
                else "text_pairs: a token classification run tags the words of one text",
            )
        if words:
            inputs: list[Any] = [text.split() for text in texts]
        elif text_pairs is not None:
            inputs = list(zip(texts, text_pairs, strict=True))
        else:
            inputs = list(texts)
        encodings = self._encode(
            inputs, text_pairs is not None, words, self._max_length(max_seq_length)
        )
        results: list[Prediction] = [{} for _ in texts]
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
            logits = np.asarray(self._forward(feed), dtype=np.float64)
            for row, index in enumerate(indices):
                encoding = encodings[index]
                if words:
                    length = len(encoding.ids)
                    results[index] = prediction(
                        self.task, texts[index], logits[row, :length], encoding.word_ids,
                        self.label_names,
                    )  # fmt: skip
                else:
                    results[index] = prediction(
                        self.task, texts[index], logits[row], None, self.label_names
                    )
            done += len(indices)
            on_batch(done, len(indices))
        return results

    def classify(
        self, texts: list[str], max_seq_length: int, batch_size: int, on_batch: BatchCallback
    ) -> tuple[list[int], list[float]]:
        """Label ids and softmax confidences of a single-label run's texts."""
        if self.task != SINGLE_LABEL:
            raise failure(
                INVALID_CONFIG,
                f"this run does {self.task}: it has no single label per text (read predictions)",
            )
        predictions = self.predict(texts, max_seq_length, batch_size, on_batch)
        return [p["label_id"] for p in predictions], [p["score"] for p in predictions]


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


class OnnxClassifier(_Served):
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
            if manifest.task not in TASKS:
                raise ValueError(f"export.json names an unknown task {manifest.task[:60]!r}")
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
        self.task = manifest.task
        self.label_names = list(manifest.label_names)
        self._input_names = list(manifest.input_names)
        self._pad_id = manifest.pad_token_id
        # Longer inputs have no position embedding: truncate there, as `pipeline` does.
        self._max_positions = manifest.max_position_embeddings or None
        self._tokenizers: dict[int, Any] = {}
        self._tokenizers_lock = threading.Lock()
        # After each batch the arena gives back what it grew by for that batch: without it
        # the process keeps the largest batch's activations for good (measured in
        # docs/inference.md: this beat turning the arena off, whose freed memory glibc kept).
        self._run_options = onnxruntime.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

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

    def _max_length(self, max_seq_length: int) -> int:
        if self._max_positions is not None:
            return min(max_seq_length, self._max_positions)
        return max_seq_length

    def _encode(self, inputs: list[Any], pairs: bool, words: bool, max_length: int) -> list[Any]:
        return list(self._tokenizer(max_length).encode_batch(inputs, is_pretokenized=words))

    def _forward(self, feed: dict[str, Any]) -> Any:
        return self._session.run(["logits"], feed, self._run_options)[0]


class TorchClassifier(_Served):
    """A run served by PyTorch + transformers (runs without an export, or on a GPU)."""

    backend = "torch"

    def __init__(self, run_dir: Path, device: str, task: str | None = None) -> None:
        self.task = task or model_task(run_dir)
        # The one loading policy: safetensors only, no remote code, a real vocabulary.
        tokenizer, model = load_for_serving(str(run_dir), run_dir.name, self.task)
        model.to(device).eval()
        id2label = model.config.id2label or {}
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.label_names = [str(id2label.get(i, i)) for i in range(model.config.num_labels)]
        self._input_names = [
            name
            for name in tokenizer.model_input_names
            if name in ("input_ids", "attention_mask", "token_type_ids")
        ]
        self._pad_id = tokenizer.pad_token_id or 0

    def _encode(self, inputs: list[Any], pairs: bool, words: bool, max_length: int) -> list[Any]:
        # The fast tokenizer's own encodings (the Rust ``Encoding``s ONNX Runtime's path uses).
        if pairs:
            first, second = [a for a, _ in inputs], [b for _, b in inputs]
            encoded = self.tokenizer(first, second, truncation=True, max_length=max_length)
        else:
            encoded = self.tokenizer(
                inputs, is_split_into_words=words, truncation=True, max_length=max_length
            )
        return list(encoded.encodings)

    def _forward(self, feed: dict[str, Any]) -> Any:
        import torch

        with torch.inference_mode():
            tensors = {
                name: torch.from_numpy(array).to(self.device) for name, array in feed.items()
            }
            return self.model(**tensors).logits.float().cpu().numpy()


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
