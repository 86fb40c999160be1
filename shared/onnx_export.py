"""Export a saved classifier to ONNX Runtime's format, next to the model, as one atomic step.

``export_onnx(model_dir)`` writes ``model_dir/onnx/``:

- ``model.onnx``: the fp32 graph from ``torch.onnx.export`` (TorchScript exporter, opset 17),
  with ONNX Runtime's transformer fusions applied (embedding + LayerNorm, attention, bias +
  GELU, skip + LayerNorm), so the serving process does less work per token;
- ``model.int8.onnx``: the same graph with dynamic int8 quantisation of its weights, kept
  only when its labels agree with the fp32 model's on the check texts (at most 0.5% may
  differ: label agreement of 99.5% also bounds the accuracy change to 0.5 points);
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
from pathlib import Path
from typing import Any

from shared.logging import get_logger
from shared.manifests import CheckTexts, ExportCheck, ExportManifest, ManifestError
from shared.runs import commit_digest, fsync_dir, is_complete

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
# The int8 graph is served only when at most this share of labels differ from fp32's.
MAX_INT8_DISAGREEMENT = 0.005
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


class OnnxExportError(RuntimeError):
    """The export failed or does not reproduce the PyTorch model; the run stays servable."""


def export_onnx(model_dir: Path, check_texts: Sequence[str] | None = None) -> Path:
    """Export the classifier saved in ``model_dir`` into ``model_dir/onnx``; return that folder.

    ``check_texts`` (a few hundred texts from the run's evaluation or training data; the
    first 256 are used) decide whether the int8 graph is served; without them only the fp32
    graph is kept.
    Raises ``OnnxExportError`` when export or verification fails; nothing is left behind.
    """
    model_dir = Path(model_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{EXPORT_DIR}-", dir=model_dir))
    try:
        build_export(model_dir, staging, check_texts)
        return publish_export(staging, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def build_export(
    model_dir: Path,
    staging: Path,
    check_texts: Sequence[str] | None = None,
    source_commit: str | None = None,
) -> ExportManifest:
    """Write a complete export of ``model_dir`` into the empty folder ``staging``, every file
    flushed; return its manifest. ``source_commit``: the run's commit it was built from.
    Raises ``OnnxExportError`` (the folder's contents are then undefined)."""
    try:
        manifest = _build(Path(model_dir), staging, list(check_texts or []))
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


def write_check_texts(folder: Path, texts: Sequence[str]) -> None:
    """Keep the texts that gate the int8 graph with the model (see ``CHECK_TEXTS_FILE``)."""
    CheckTexts(texts=list(texts)[:MAX_CHECK_TEXTS]).write(folder / CHECK_TEXTS_FILE)


def read_check_texts(folder: Path) -> list[str]:
    """The texts saved at commit; none for runs committed without them (fp32 only then), or
    whose file is unreadable."""
    try:
        return CheckTexts.read(folder / CHECK_TEXTS_FILE).texts
    except (OSError, ManifestError):
        return []


def commit_exporter(check_texts: Sequence[str] | None) -> Callable[[Path], None]:
    """The export step of a run's commit: exports into the staging folder, never fails it.

    A run whose export fails still commits (without ``onnx/``) and is served by PyTorch; the
    failure is logged as ``export.failed``.
    """
    texts = list(check_texts or [])

    def export(staging: Path) -> None:
        try:
            export_onnx(staging, texts)
        except OnnxExportError as err:
            log.warning("export.failed", model_dir=str(staging), error=str(err)[:500])

    return export


def _build(model_dir: Path, out: Path, check_texts: list[str]) -> ExportManifest:
    import torch

    from shared.model_loading import load_classification_model, load_tokenizer

    started = time.monotonic()
    subject, fix = f"the model in {model_dir.name!r}", "it is served by PyTorch instead"
    tokenizer = load_tokenizer(str(model_dir), subject, fix)
    if not getattr(tokenizer, "is_fast", False):
        raise OnnxExportError(f"run {model_dir.name!r} has no fast tokenizer to export")
    # Eager attention exports the plain MatMul/Softmax pattern ONNX Runtime knows how to fuse.
    model = load_classification_model(
        str(model_dir), subject, fix, attn_implementation="eager"
    ).eval()
    sample = tokenizer(["an example", "a second example text"], padding=True, return_tensors="pt")
    input_names = [name for name in tokenizer.model_input_names if name in sample]
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
                "logits": {0: "batch"},
            },
        )
    _fuse(raw, out / FP32_GRAPH, model.config)
    raw.unlink()
    tokenizer.backend_tokenizer.save(str(out / TOKENIZER_FILE))

    # Length order keeps padding, and so the cost of the checks, low.
    texts = sorted(check_texts[:MAX_CHECK_TEXTS] or PROBE_TEXTS, key=len)
    # PyTorch is the slow side: compare with it on a spread of lengths; a wrong graph is
    # wrong on every text.
    every = max(1, len(texts) // FP32_CHECK_TEXTS)
    spread = texts[::every]
    fp32 = _ort_logits(out / FP32_GRAPH, tokenizer, input_names, texts)
    reference = _torch_logits(model, tokenizer, input_names, spread)
    difference = float(abs(fp32[::every] - reference).max())
    if difference > MAX_FP32_LOGIT_DIFFERENCE:
        raise OnnxExportError(
            f"the ONNX graph of {model_dir.name!r} differs from PyTorch by {difference:.2e} "
            "in its logits"
        )
    # The fp32 graph now stands in for PyTorch (its logits agree to float precision).
    served, disagreements = FP32_GRAPH, None
    if check_texts:
        _quantize(out / FP32_GRAPH, out / INT8_GRAPH)
        int8 = _ort_logits(out / INT8_GRAPH, tokenizer, input_names, texts)
        disagreements = int((int8.argmax(-1) != fp32.argmax(-1)).sum())
        if disagreements <= int(MAX_INT8_DISAGREEMENT * len(texts)):
            served = INT8_GRAPH
        else:
            (out / INT8_GRAPH).unlink()
    id2label = model.config.id2label or {}
    return ExportManifest(
        version=EXPORT_FORMAT_VERSION,
        served_graph=served,
        fp32_graph=FP32_GRAPH,
        tokenizer=TOKENIZER_FILE,
        input_names=input_names,
        label_names=[str(id2label.get(i, i)) for i in range(model.config.num_labels)],
        pad_token_id=tokenizer.pad_token_id or 0,
        max_position_embeddings=getattr(model.config, "max_position_embeddings", None),
        opset=OPSET,
        check=ExportCheck(
            texts=len(texts),
            fp32_texts_compared_with_pytorch=len(spread),
            max_fp32_logit_difference=difference,
            int8_disagreements=disagreements,
            max_int8_disagreement=MAX_INT8_DISAGREEMENT,
        ),
        versions=_versions(),
        export_seconds=round(time.monotonic() - started, 3),
    )


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


def _batches(texts: list[str]) -> list[list[str]]:
    return [texts[i : i + CHECK_BATCH_SIZE] for i in range(0, len(texts), CHECK_BATCH_SIZE)]


def _torch_logits(model: Any, tokenizer: Any, input_names: list[str], texts: list[str]) -> Any:
    import numpy as np
    import torch

    out = []
    with torch.inference_mode():
        for batch in _batches(texts):
            encoded = tokenizer(
                batch,
                truncation=True,
                max_length=CHECK_MAX_LENGTH,
                padding=True,
                return_tensors="pt",
            )
            out.append(model(**{name: encoded[name] for name in input_names}).logits.numpy())
    return np.concatenate(out)


def _ort_logits(graph: Path, tokenizer: Any, input_names: list[str], texts: list[str]) -> Any:
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    out = []
    for batch in _batches(texts):
        encoded = tokenizer(
            batch, truncation=True, max_length=CHECK_MAX_LENGTH, padding=True, return_tensors="np"
        )
        feed = {name: encoded[name].astype(np.int64) for name in input_names}
        out.append(session.run(["logits"], feed)[0])
    return np.concatenate(out)


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
