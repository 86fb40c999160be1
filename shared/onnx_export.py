"""Export a saved model to ONNX Runtime's format, next to the model, as one atomic step.

``export_onnx(model_dir)`` writes ``model_dir/onnx/``:

- ``model.onnx``: the fp32 graph from ``torch.onnx.export`` (TorchScript exporter, opset 17),
  with ONNX Runtime's transformer fusions applied (embedding + LayerNorm, attention, bias +
  GELU, skip + LayerNorm), so the serving process does less work per token. Its one output,
  ``logits``, is the head of the run's task (``shared.tasks``): ``[n, labels]`` for the
  sequence tasks (single-label, multi-label, regression: one column), ``[n, tokens,
  labels]`` for token classification;
- ``model.int8.onnx``: the same graph with dynamic int8 quantisation of its weights, kept
  only when its predictions agree with the fp32 graph's on the check texts (at most 0.5%
  may differ: label agreement of 99.5% also bounds the accuracy change to 0.5 points). What
  is compared depends on the task: the label (single-label), the label set (multi-label),
  each word's tag (token classification), the score within a tolerance (regression);
- ``tokenizer.json``: the fast tokenizer, so serving needs neither torch nor transformers;
- ``export.json`` (written last inside the folder): which graph to serve, the label
  names, the input names, what the checks measured and, for an export added after the run
  committed, ``source_commit``: the digest of the ``run.json`` it was built from.

Everything is built in a staging folder and renamed into place, so a reader sees a complete
export or none. Trainers export after the run commits (``BertExportWorkflow``, see
``services/trainer/activities/export.py``): the run's own files are never modified, the export is
added next to them under the run's lock, and only while the folder still holds the commit
named by its ``source_commit`` (an overwrite removes the export, under the same lock,
before it commits a new model). ``export_onnx`` exports a folder in place (a staged
model before its commit, or a copy).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.logging import get_logger
from shared.manifests import CheckTexts, ExportCheck, ExportManifest, ManifestError
from shared.runs import commit_digest, fsync_dir, is_complete
from shared.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TOKEN_CLASSIFICATION

log = get_logger(__name__)

EXPORT_DIR = "onnx"
EXPORT_MANIFEST = "export.json"
FP32_GRAPH = "model.onnx"
INT8_GRAPH = "model.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
# Written into a run folder at commit: the texts that decide, later, whether the int8 graph
# is served (the export runs after the commit, when the training data may be gone).
CHECK_TEXTS_FILE = "export_check_texts.json"
EXPORT_FORMAT_VERSION = ExportManifest.VERSION
OPSET = 17
# The int8 graph is served only when at most this share of labels differ from fp32's
# (of label sets for multi-label, of word tags for token classification, of scores outside
# the tolerance below for regression).
MAX_INT8_DISAGREEMENT = 0.005
# Regression: an int8 score agrees with fp32's within this share of the spread (max - min)
# of fp32's scores on the check texts (STS-B's 0-5 scores: 0.1).
INT8_SCORE_TOLERANCE = 0.02
# What the int8 check compares, per task (``export.json``'s ``check.int8_unit``).
INT8_UNITS = {
    SINGLE_LABEL: "label",
    MULTI_LABEL: "label set",
    REGRESSION: "score",
    TOKEN_CLASSIFICATION: "word tag",
}
# The fp32 graph must reproduce PyTorch's logits this closely (it does to ~1e-6).
MAX_FP32_LOGIT_DIFFERENCE = 1e-3
CHECK_BATCH_SIZE = 32
# The int8 decision uses at most this many texts; the fp32-vs-PyTorch check about this many.
MAX_CHECK_TEXTS = 256
FP32_CHECK_TEXTS = 32
CHECK_MAX_LENGTH = 128
# Used when the caller has no texts: enough to catch a broken graph, too few to justify int8.
PROBE_TEXTS = (
    "a short sentence",
    "this one is a little longer, with punctuation, numbers like 42 and UPPER case words",
    "",
)
# The second texts of the probe, for a model trained on pairs.
PROBE_PAIRS = ("another sentence, paired with the first", "short", "and a pair for the empty one")


class OnnxExportError(RuntimeError):
    """The export failed or does not reproduce the PyTorch model; the run stays servable."""


def export_onnx(
    model_dir: Path,
    check_texts: Sequence[str] | None = None,
    check_pairs: Sequence[str] | None = None,
    task: str | None = None,
) -> Path:
    """Export the model saved in ``model_dir`` into ``model_dir/onnx``; return that folder.

    ``check_texts`` (a few hundred texts from the run's evaluation or training data; the
    first 256 are used; ``check_pairs``: their second texts, for a model trained on pairs)
    decide whether the int8 graph is served; without them only the fp32 graph is kept.
    ``task``: the model's task (default: ``task_outputs.model_task``, from ``run.json`` or
    the model's config).
    Raises ``OnnxExportError`` when export or verification fails; nothing is left behind.
    """
    model_dir = Path(model_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{EXPORT_DIR}-", dir=model_dir))
    try:
        build_export(model_dir, staging, check_texts, check_pairs=check_pairs, task=task)
        return publish_export(staging, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def build_export(
    model_dir: Path,
    staging: Path,
    check_texts: Sequence[str] | None = None,
    source_commit: str | None = None,
    check_pairs: Sequence[str] | None = None,
    task: str | None = None,
) -> ExportManifest:
    """Write a complete export of ``model_dir`` into the empty folder ``staging``, every file
    flushed; return its manifest. ``source_commit``: the run's commit it was built from.
    Raises ``OnnxExportError`` (the folder's contents are then undefined)."""
    try:
        texts = list(check_texts or [])
        pairs = list(check_pairs) if check_pairs is not None else None
        if pairs is not None and len(pairs) != len(texts):
            raise OnnxExportError(
                f"{len(pairs)} check pairs for {len(texts)} check texts: give one per text"
            )
        manifest = _build(Path(model_dir), staging, texts, pairs, task)
        if source_commit is not None:
            manifest = manifest.model_copy(update={"source_commit": source_commit})
        manifest.write(staging / EXPORT_MANIFEST)
        _fsync_files(staging)
    except OnnxExportError:
        raise
    except Exception as err:
        raise OnnxExportError(f"ONNX export of {Path(model_dir).name!r} failed: {err}") from err
    log.info(
        "model.exported",
        model_dir=str(model_dir),
        served_graph=manifest.served_graph,
        seconds=manifest.export_seconds,
    )
    return manifest


def publish_export(staging: Path, model_dir: Path) -> Path:
    """Move a built export into ``model_dir/onnx`` in one rename (replacing an older one)."""
    target = model_dir / EXPORT_DIR
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    fsync_dir(model_dir)
    return target


def load_manifest(model_dir: Path) -> ExportManifest:
    """The export's manifest (the one place ``export.json`` is read): ``OSError`` when the
    folder has no export, ``ManifestError`` when it is damaged or from a newer release."""
    return ExportManifest.read(model_dir / EXPORT_DIR / EXPORT_MANIFEST)


def read_manifest(model_dir: Path) -> ExportManifest | None:
    """The export's manifest, or None when the folder has no (readable) export."""
    try:
        return load_manifest(model_dir)
    except (OSError, ManifestError):
        return None


def has_export(model_dir: Path) -> bool:
    """Whether the folder holds an export (complete: its manifest is written last)."""
    return (model_dir / EXPORT_DIR / EXPORT_MANIFEST).is_file()


def is_current_export(model_dir: Path) -> bool:
    """Whether the folder has an export built from the commit it holds now. Exports made
    inside the commit itself name no commit: they are part of it."""
    manifest = read_manifest(model_dir)
    if manifest is None:
        return False
    source = manifest.source_commit
    return source is None or source == commit_of(model_dir)


def commit_of(model_dir: Path) -> str | None:
    """The folder's commit digest; None while it is incomplete (being overwritten)."""
    try:
        return commit_digest(model_dir) if is_complete(model_dir) else None
    except FileNotFoundError:
        return None


def write_check_texts(
    folder: Path,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    sweep: str | None = None,
) -> None:
    """Keep the texts that gate the int8 graph with the model (see ``CHECK_TEXTS_FILE``),
    with their second texts for a run trained on pairs; ``sweep``: the sweep whose trial the
    run is (only its best trial is exported after the sweep: ``runs`` shows ``none``)."""
    CheckTexts(
        texts=list(texts)[:MAX_CHECK_TEXTS],
        text_pairs=list(text_pairs)[:MAX_CHECK_TEXTS] if text_pairs is not None else None,
        sweep=sweep,
    ).write(folder / CHECK_TEXTS_FILE)


def read_check_sample(folder: Path) -> CheckTexts | None:
    """The check texts saved at commit (with their pairs); None for runs committed without
    them (fp32 only then), or whose file is unreadable."""
    try:
        return CheckTexts.read(folder / CHECK_TEXTS_FILE)
    except (OSError, ManifestError):
        return None


def read_check_texts(folder: Path) -> list[str]:
    """The texts saved at commit; none for runs committed without them (fp32 only then), or
    whose file is unreadable."""
    sample = read_check_sample(folder)
    return sample.texts if sample is not None else []


def read_check_pairs(folder: Path) -> list[str] | None:
    """The second texts of the check texts saved at commit, for a run trained on pairs."""
    sample = read_check_sample(folder)
    return sample.text_pairs if sample is not None else None


def commit_exporter(
    check_texts: Sequence[str] | None, check_pairs: Sequence[str] | None = None
) -> Callable[[Path], None]:
    """The export step of a run's commit: exports into the staging folder, never fails it.

    A run whose export fails still commits (without ``onnx/``) and is served by PyTorch; the
    failure is logged as ``export.failed``.
    """
    texts = list(check_texts or [])
    pairs = list(check_pairs) if check_pairs is not None else None

    def export(staging: Path) -> None:
        try:
            export_onnx(staging, texts, pairs)
        except OnnxExportError as err:
            log.warning("export.failed", model_dir=str(staging), error=str(err)[:500])

    return export


def _build(
    model_dir: Path,
    out: Path,
    check_texts: list[str],
    check_pairs: list[str] | None,
    task: str | None,
) -> ExportManifest:
    import torch

    from shared.model_loading import load_task_model, load_tokenizer
    from shared.task_outputs import model_task

    started = time.monotonic()
    task = task or model_task(model_dir)
    if task not in INT8_UNITS:
        raise OnnxExportError(f"{model_dir.name!r} has an unknown task {task[:60]!r}")
    subject, fix = f"the model in {model_dir.name!r}", "it is served by PyTorch instead"
    tokenizer = load_tokenizer(str(model_dir), subject, fix)
    if not getattr(tokenizer, "is_fast", False):
        raise OnnxExportError(f"run {model_dir.name!r} has no fast tokenizer to export")
    # Eager attention exports the plain MatMul/Softmax pattern ONNX Runtime knows how to fuse.
    model = load_task_model(str(model_dir), subject, fix, task, attn_implementation="eager").eval()
    pairs = check_pairs if check_texts else None
    if pairs is None and not check_texts and _trained_on_pairs(model_dir):
        pairs = list(PROBE_PAIRS)
    check = _CheckInputs(tokenizer, task)
    sample = check.encode(
        ["an example", "a second example text"],
        ["its pair", "and the second pair"] if pairs is not None else None,
        return_tensors="pt",
    )
    input_names = [name for name in tokenizer.model_input_names if name in sample]
    tokens = task == TOKEN_CLASSIFICATION
    raw = out / ".raw.onnx"
    # The tracer warns about Python-level shape checks it freezes; the logit check below is
    # what decides whether the graph is right.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _by_name(model, input_names),
            tuple(sample[name] for name in input_names),
            str(raw),
            dynamo=False,
            opset_version=OPSET,
            input_names=input_names,
            output_names=["logits"],
            dynamic_axes={
                **{name: {0: "batch", 1: "sequence"} for name in input_names},
                "logits": {0: "batch", 1: "sequence"} if tokens else {0: "batch"},
            },
        )
    _fuse(raw, out / FP32_GRAPH, model.config)
    raw.unlink()
    tokenizer.backend_tokenizer.save(str(out / TOKENIZER_FILE))

    # Length order keeps padding, and so the cost of the checks, low.
    texts = check_texts[:MAX_CHECK_TEXTS] or list(PROBE_TEXTS)
    if pairs is not None:
        pairs = pairs[: len(texts)]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + len(pairs[i]))  # type: ignore[index]
        texts, pairs = [texts[i] for i in order], [pairs[i] for i in order]
    else:
        texts = sorted(texts, key=len)
    # PyTorch is the slow side: compare with it on a spread of lengths; a wrong graph is
    # wrong on every text.
    every = max(1, len(texts) // FP32_CHECK_TEXTS)
    spread = list(range(0, len(texts), every))
    fp32 = check.ort_outputs(out / FP32_GRAPH, input_names, texts, pairs)
    reference = check.torch_outputs(
        model,
        input_names,
        [texts[i] for i in spread],
        [pairs[i] for i in spread] if pairs is not None else None,
    )
    difference = max(
        float(abs(fp32.logits[i] - ref).max()) if ref.size else 0.0
        for i, ref in zip(spread, reference.logits, strict=True)
    )
    if difference > MAX_FP32_LOGIT_DIFFERENCE:
        raise OnnxExportError(
            f"the ONNX graph of {model_dir.name!r} differs from PyTorch by {difference:.2e} "
            "in its logits"
        )
    id2label = model.config.id2label or {}
    label_names = [str(id2label.get(i, i)) for i in range(model.config.num_labels)]
    # The fp32 graph now stands in for PyTorch (its logits agree to float precision).
    served = FP32_GRAPH
    agreement = Int8Agreement(compared=0, disagreements=None)
    if check_texts:
        _quantize(out / FP32_GRAPH, out / INT8_GRAPH)
        int8 = check.ort_outputs(out / INT8_GRAPH, input_names, texts, pairs)
        agreement = int8_agreement(
            task, label_names, texts, fp32.logits, int8.logits, fp32.word_ids
        )
        if agreement.acceptable():
            served = INT8_GRAPH
        else:
            (out / INT8_GRAPH).unlink()
    return ExportManifest(
        version=1 if task == SINGLE_LABEL else ExportManifest.VERSION,
        served_graph=served,
        fp32_graph=FP32_GRAPH,
        tokenizer=TOKENIZER_FILE,
        input_names=input_names,
        label_names=label_names,
        pad_token_id=tokenizer.pad_token_id or 0,
        max_position_embeddings=getattr(model.config, "max_position_embeddings", None),
        opset=OPSET,
        check=ExportCheck(
            texts=len(texts),
            fp32_texts_compared_with_pytorch=len(spread),
            max_fp32_logit_difference=difference,
            int8_disagreements=agreement.disagreements,
            max_int8_disagreement=MAX_INT8_DISAGREEMENT,
            int8_compared=agreement.compared if check_texts else None,
            int8_unit=INT8_UNITS[task] if check_texts else None,
            int8_score_tolerance=agreement.tolerance,
            max_int8_score_difference=agreement.max_score_difference,
        ),
        versions=_versions(),
        export_seconds=round(time.monotonic() - started, 3),
        task=task,
    )


def _trained_on_pairs(model_dir: Path) -> bool:
    """Whether the run in ``model_dir`` was trained on text pairs (its ``run.json``)."""
    from shared.runs import RUN_MANIFEST, read_record

    if not (model_dir / RUN_MANIFEST).is_file():
        return False
    return read_record(model_dir).config.text_pair_column is not None


@dataclass
class Int8Agreement:
    """How the int8 graph's predictions compare with the fp32 graph's on the check texts."""

    compared: int
    disagreements: int | None
    tolerance: float | None = None
    max_score_difference: float | None = None

    def acceptable(self) -> bool:
        return self.disagreements is not None and self.disagreements <= int(
            MAX_INT8_DISAGREEMENT * self.compared
        )


def int8_agreement(
    task: str,
    label_names: list[str],
    texts: list[str],
    fp32: list[Any],
    int8: list[Any],
    word_ids: list[list[int | None]] | None,
) -> Int8Agreement:
    """Compare int8's predictions with fp32's per task (``INT8_UNITS``): labels, label sets,
    word tags, or scores within ``INT8_SCORE_TOLERANCE`` of the fp32 scores' spread."""
    from shared.task_outputs import prediction, prediction_units

    def units(outputs: list[Any]) -> list[Any]:
        found: list[Any] = []
        for index, logits in enumerate(outputs):
            ids = word_ids[index] if word_ids is not None else None
            found.extend(
                prediction_units(task, prediction(task, texts[index], logits, ids, label_names))
            )
        return found

    expected, got = units(fp32), units(int8)
    if task == REGRESSION:
        spread = (max(expected) - min(expected)) if expected else 0.0
        tolerance = INT8_SCORE_TOLERANCE * (spread or 1.0)
        distances = [abs(a - b) for a, b in zip(expected, got, strict=True)]
        return Int8Agreement(
            compared=len(expected),
            disagreements=sum(distance > tolerance for distance in distances),
            tolerance=tolerance,
            max_score_difference=max(distances, default=0.0),
        )
    return Int8Agreement(
        compared=len(expected),
        disagreements=sum(a != b for a, b in zip(expected, got, strict=True)),
    )


@dataclass
class _Outputs:
    """Per text: its logits without padding (``[labels]``, or ``[tokens, labels]``) and, for
    token classification, the word of each token."""

    logits: list[Any]
    word_ids: list[list[int | None]] | None


class _CheckInputs:
    """How the checks tokenize: as serving does (pairs, or each text's ``split()`` words for
    token classification), truncated at ``CHECK_MAX_LENGTH``, padded per batch."""

    def __init__(self, tokenizer: Any, task: str) -> None:
        self.tokenizer = tokenizer
        self.tokens = task == TOKEN_CLASSIFICATION

    def encode(self, texts: list[str], pairs: list[str] | None, return_tensors: str) -> Any:
        if self.tokens:
            return self.tokenizer(
                [text.split() for text in texts],
                is_split_into_words=True,
                truncation=True,
                max_length=CHECK_MAX_LENGTH,
                padding=True,
                return_tensors=return_tensors,
            )
        return self.tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=CHECK_MAX_LENGTH,
            padding=True,
            return_tensors=return_tensors,
        )

    def _collect(
        self, run: Callable[[Any], Any], texts: list[str], pairs: list[str] | None, kind: str
    ) -> _Outputs:
        import numpy as np

        logits: list[Any] = []
        word_ids: list[list[int | None]] = []
        for start in range(0, len(texts), CHECK_BATCH_SIZE):
            batch = texts[start : start + CHECK_BATCH_SIZE]
            pair_batch = pairs[start : start + CHECK_BATCH_SIZE] if pairs is not None else None
            encoded = self.encode(batch, pair_batch, kind)
            out = np.asarray(run(encoded), dtype=np.float64)
            for row in range(len(batch)):
                if self.tokens:
                    length = int(np.asarray(encoded["attention_mask"][row]).sum())
                    logits.append(out[row, :length])
                    word_ids.append(list(encoded.word_ids(row))[:length])
                else:
                    logits.append(out[row])
        return _Outputs(logits, word_ids if self.tokens else None)

    def torch_outputs(
        self, model: Any, input_names: list[str], texts: list[str], pairs: list[str] | None
    ) -> _Outputs:
        import torch

        def run(encoded: Any) -> Any:
            with torch.inference_mode():
                return model(**{name: encoded[name] for name in input_names}).logits.numpy()

        return self._collect(run, texts, pairs, "pt")

    def ort_outputs(
        self, graph: Path, input_names: list[str], texts: list[str], pairs: list[str] | None
    ) -> _Outputs:
        import numpy as np
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(
            str(graph), options, providers=["CPUExecutionProvider"]
        )

        def run(encoded: Any) -> Any:
            feed = {name: encoded[name].astype(np.int64) for name in input_names}
            return session.run(["logits"], feed)[0]

        return self._collect(run, texts, pairs, "np")


def _by_name(model: Any, input_names: list[str]) -> Any:
    import torch

    class ByName(torch.nn.Module):
        """Positional inputs in the tokenizer's order, passed to the model by keyword."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(input_names, inputs, strict=True))).logits

    return ByName().eval()


def _fuse(source: Path, target: Path, config: Any) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    heads = getattr(config, "num_attention_heads", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    # opt_level 0: ONNX Runtime's transformer fusions only; its generic graph optimisations
    # run anyway when a serving session loads the graph.
    optimized = optimize_model(
        str(source), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0
    )
    optimized.save_model_to_file(str(target))


def _quantize(source: Path, target: Path) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Fused operators (com.microsoft domain) defeat shape inference: name the default type.
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )


def _fsync_files(folder: Path) -> None:
    """Flush every file before the rename publishes the folder (a crash must not leave it empty)."""
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    fsync_dir(folder)


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    return {
        "torch": str(torch.__version__),
        "transformers": str(transformers.__version__),
        "onnxruntime": str(onnxruntime.__version__),
    }
