"""The one policy for loading a sequence classifier and its tokenizer (trainer and inferencer).

- Weights only from safetensors files: a pickle (``pytorch_model.bin``) can execute code.
- Never ``trust_remote_code``: a model folder or hub repo must not ship Python we run.
- A tokenizer without a vocabulary is refused: transformers builds an empty one from a bare
  config, and every word would become ``[UNK]``.
- Every failure is a ``ModelLoadError`` naming what was loaded and how to fix it.

Any architecture that ``AutoModelForSequenceClassification`` knows loads this way (BERT,
RoBERTa, DeBERTa-v2, DistilBERT, ...): a model family is a config change, not a code change.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from shared.errors import MODEL_LOAD_ERROR, failure
from shared.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TOKEN_CLASSIFICATION


def torch_available() -> bool:
    """Whether PyTorch can be imported here: the default inferencer image has none (ONNX
    Runtime serves every run with an export; docs/deploy.md, "Images")."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # blocked, or a stub module without a spec
        return False


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines() or [""]
    return f"{type(err).__name__}: {lines[0][:300]}"


def load_tokenizer(source: str, subject: str, fix: str) -> Any:
    """The tokenizer saved at ``source`` (a folder or hub id); ``subject`` names it in errors."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as err:
        raise failure(
            MODEL_LOAD_ERROR,
            f"{subject} could not be loaded: no usable tokenizer ({_first_line(err)}); {fix}",
        ) from None
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise failure(
            MODEL_LOAD_ERROR,
            f"{subject} could not be loaded: no usable tokenizer (it has no vocabulary files next "
            f"to the weights); {fix}",
        )
    return tokenizer


def load_classification_model(source: str, subject: str, fix: str, **overrides: Any) -> Any:
    """The transformers sequence-classification model at ``source`` (not the inferencer's
    ``Classifier``, which serves a run); ``overrides`` set labels for a new head."""
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(
            source, trust_remote_code=False, use_safetensors=True, **overrides
        )
    except Exception as err:
        raise failure(
            MODEL_LOAD_ERROR,
            f"{subject} could not be loaded for sequence classification ({_first_line(err)}); "
            f"{fix}",
        ) from None


def load_token_classification_model(source: str, subject: str, fix: str, **overrides: Any) -> Any:
    """The transformers token-classification model at ``source`` (one tag per token)."""
    from transformers import AutoModelForTokenClassification

    try:
        return AutoModelForTokenClassification.from_pretrained(
            source, trust_remote_code=False, use_safetensors=True, **overrides
        )
    except Exception as err:
        raise failure(
            MODEL_LOAD_ERROR,
            f"{subject} could not be loaded for token classification ({_first_line(err)}); {fix}",
        ) from None


def load_task_model(source: str, subject: str, fix: str, task: str, **overrides: Any) -> Any:
    """The model of ``task`` at ``source``: a token-classification model for
    ``token_classification``, a sequence classifier otherwise (its saved ``problem_type``
    says whether it is single-label, multi-label or a regression)."""
    if task == TOKEN_CLASSIFICATION:
        return load_token_classification_model(source, subject, fix, **overrides)
    return load_classification_model(source, subject, fix, **overrides)


def head_overrides(task: str, label_names: list[str]) -> dict[str, Any]:
    """How a new head is set up for ``task``: one output per label (a regression: one
    output, no label names), the loss by ``problem_type``."""
    if task == REGRESSION:
        return {
            "num_labels": 1,
            "problem_type": "regression",
            "id2label": {0: "score"},
            "label2id": {"score": 0},
        }
    overrides: dict[str, Any] = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    if task == MULTI_LABEL:  # (single-label leaves it to transformers, as before the tasks)
        overrides["problem_type"] = task
    return overrides


def load_for_fine_tuning(
    model_name: str, label_names: list[str], task: str = SINGLE_LABEL
) -> tuple[Any, Any]:
    """Tokenizer and model to fine-tune, with a new head for ``task`` and ``label_names``."""
    subject = f"model_name {model_name!r}"
    tokenizer = load_tokenizer(
        model_name,
        subject,
        "give a hub id or a directory with a saved model and its tokenizer "
        "(tokenizer.save_pretrained)",
    )
    model = load_task_model(
        model_name,
        subject,
        "it must be a checkpoint saved with safetensors (no pickles, no remote code) of an "
        "architecture transformers can classify with",
        task,
        ignore_mismatched_sizes=True,
        **head_overrides(task, label_names),
    )
    return tokenizer, model


def load_for_serving(model_dir: str, run_id: str, task: str = SINGLE_LABEL) -> tuple[Any, Any]:
    """Tokenizer and model of a finished run, for inference with PyTorch (runs without an
    ONNX export). Refused, naming the fix, where PyTorch is not installed."""
    if not torch_available():
        raise failure(
            MODEL_LOAD_ERROR,
            f"run {run_id!r} has no ONNX export, and this inferencer image has no PyTorch to "
            f"serve it with (the torch-free image serves exports only): run `bert-finetune "
            f"export {run_id}` to add its export (the next request is served by ONNX Runtime), "
            "or run the inferencer's -torch image",
        )
    fix = "retrain it or check the runs volume"
    subject = f"run {run_id!r}"
    tokenizer = load_tokenizer(model_dir, subject, fix)
    return tokenizer, load_task_model(model_dir, subject, fix, task)
