"""The table of bad inputs: each case, the error type it must produce, and what the message names.

``docs/errors.md`` lists the same cases; ``test_errors_doc`` keeps the two in step. A case's
``expect`` fragments must all appear in the error message the workflow fails with (and, unless
``cli_expect`` says otherwise, in the line the CLI prints).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.errors import DATASET_ERROR, INVALID_CONFIG, MODEL_LOAD_ERROR, RUN_NOT_FOUND
from tests.conftest import SentimentData, tiny_config
from tests.hardening.artefacts import SECRET, Artefacts

EXPERIMENT = "hardening-bad"
SWEEP = "hardening-sweep"
SYMLINK_RUN_ID = "escape-link"
INCOMPLETE_RUN_ID = "half-written"
CORRUPT_RUN_ID = "corrupt-weights"
# Run folders whose files name others outside them (a link, a sharded checkpoint's index).
LINKS_OUT_RUN_ID = "links-out"
INDEX_OUT_RUN_ID = "index-points-out"
OVERSIZE_TEXT_BYTES = 1024 * 1024 + 1


class RawJSON(str):
    """Bytes sent exactly as written, for input that is not valid JSON."""


@dataclass(frozen=True)
class Context:
    tiny_model: Path
    data: SentimentData
    bad: Artefacts
    good_run_id: str  # a complete run in the inference runs root


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    workflow: Literal["train", "predict", "promote", "sweep"]
    build: Callable[[Context], Any]
    error_type: str
    expect: tuple[str, ...]
    cli_expect: tuple[str, ...] | None = None
    cli: bool = True
    tags: frozenset[str] = field(default_factory=frozenset)
    # Fragments that must never appear (what a file holds must not leak into messages).
    hidden: tuple[str, ...] = ()

    def expected_on_cli(self) -> tuple[str, ...]:
        return self.expect if self.cli_expect is None else self.cli_expect


def experiment(**top: Any) -> Callable[[Context], dict[str, Any]]:
    def build(ctx: Context) -> dict[str, Any]:
        value = {"experiment_name": EXPERIMENT, "runs": [tiny_config(ctx.tiny_model, ctx.data)]}
        value.update(top)
        return value

    return build


def run_with(**overrides: Any) -> Callable[[Context], dict[str, Any]]:
    """An experiment whose single run has ``overrides``; callables get the context."""

    def build(ctx: Context) -> dict[str, Any]:
        resolved = {k: (v(ctx) if callable(v) else v) for k, v in overrides.items()}
        return {
            "experiment_name": EXPERIMENT,
            "runs": [tiny_config(ctx.tiny_model, ctx.data, **resolved)],
        }

    return build


def without(*keys: str) -> Callable[[Context], dict[str, Any]]:
    def build(ctx: Context) -> dict[str, Any]:
        value = experiment()(ctx)
        for key in keys:
            del value[key]
        return value

    return build


def local(name: str) -> Callable[[Context], str]:
    return lambda ctx: str(getattr(ctx.bad, name))


def predict(**overrides: Any) -> Callable[[Context], dict[str, Any]]:
    def build(ctx: Context) -> dict[str, Any]:
        value: dict[str, Any] = {"run_id": ctx.good_run_id, "texts": ["a good movie"]}
        value.update({k: (v(ctx) if callable(v) else v) for k, v in overrides.items()})
        return value

    return build


def promotion(**overrides: Any) -> Callable[[Context], dict[str, Any]]:
    def build(ctx: Context) -> dict[str, Any]:
        value: dict[str, Any] = {"run_id": ctx.good_run_id, "alias": "production"}
        value.update(overrides)
        return value

    return build


def sweep(**top: Any) -> Callable[[Context], dict[str, Any]]:
    """A small valid sweep of the tiny BERT, with ``top`` replacing its fields."""

    def build(ctx: Context) -> dict[str, Any]:
        value = {
            "sweep_name": SWEEP,
            "base": tiny_config(ctx.tiny_model, ctx.data, num_epochs=1),
            "space": {"learning_rate": {"values": [0.005, 0.001]}},
            "strategy": "grid",
        }
        value.update(top)
        return value

    return build


T, P, PR, S = "train", "predict", "promote", "sweep"
SHAPE, NAMES, HYPER, DATA, MODELS, INFER, ALIASES, SWEEPS, CONFINED = (
    "input shape",
    "names and paths",
    "hyperparameters",
    "data",
    "models",
    "inference",
    "aliases",
    "sweeps",
    "local paths",
)
OUTSIDE = ("outside the folders the trainer may read; allowed:", "BERT_LOCAL_PATH_ROOTS")
IC, DE, ML, RNF = INVALID_CONFIG, DATASET_ERROR, MODEL_LOAD_ERROR, RUN_NOT_FOUND
NAMES_OUTSIDE = "names a file outside its folder (or not a plain file) in"
PATTERN = "should match pattern"
LETTER_OR_DIGIT = "starting with a letter or digit"

CASES: list[Case] = [
    # input shape
    Case(
        "train-invalid-json",
        SHAPE,
        T,
        lambda c: RawJSON('{"experiment_name": "x", "runs": ['),
        IC,
        ("not valid JSON",),
    ),
    Case(
        "train-not-an-object",
        SHAPE,
        T,
        lambda c: ["a", "list"],
        IC,
        ("input",),
        cli_expect=("expected an object",),
    ),
    Case(
        "train-wrong-type",
        SHAPE,
        T,
        run_with(num_epochs="three"),
        IC,
        ("runs[0].num_epochs", "valid integer"),
    ),
    Case(
        "train-runs-not-a-list",
        SHAPE,
        T,
        experiment(runs={"model_name": "x"}),
        IC,
        ("runs", "must be a list"),
    ),
    Case(
        "train-unknown-top-level-field",
        SHAPE,
        T,
        experiment(epochs_total=3),
        IC,
        ("epochs_total", "unknown field"),
    ),
    Case(
        "train-unknown-run-field",
        SHAPE,
        T,
        run_with(epochs=3),
        IC,
        ("runs[0].epochs", "unknown field"),
    ),
    Case(
        "train-missing-experiment-name",
        SHAPE,
        T,
        without("experiment_name"),
        IC,
        ("experiment_name", "required field is missing"),
    ),
    Case(
        "train-missing-runs", SHAPE, T, without("runs"), IC, ("runs", "required field is missing")
    ),
    Case("train-empty-runs", SHAPE, T, experiment(runs=[]), IC, ("runs", "at least 1")),
    Case("train-null-runs", SHAPE, T, experiment(runs=None), IC, ("runs", "must be a list")),
    Case(
        "train-no-data-source",
        SHAPE,
        T,
        run_with(train_file=None, validation_file=None, dataset_name=None),
        IC,
        ("runs[0]", "no training data"),
    ),
    Case(
        "train-validation-without-train",
        SHAPE,
        T,
        run_with(train_file=None),
        IC,
        ("runs[0]", "validation_file is set without train_file"),
    ),
    # names and paths
    Case(
        "name-with-slash",
        NAMES,
        T,
        experiment(experiment_name="a/b"),
        IC,
        ("experiment_name", PATTERN),
    ),
    Case(
        "name-dot-dot", NAMES, T, experiment(experiment_name=".."), IC, ("experiment_name", PATTERN)
    ),
    Case(
        "name-traversal",
        NAMES,
        T,
        experiment(experiment_name="../../outside"),
        IC,
        ("experiment_name", PATTERN),
    ),
    Case(
        "name-absolute-path",
        NAMES,
        T,
        lambda c: experiment(experiment_name=str(c.bad.outside))(c),
        IC,
        ("experiment_name", PATTERN),
    ),
    Case(
        "name-nul-character",
        NAMES,
        T,
        experiment(experiment_name="bad\x00name"),
        IC,
        ("experiment_name", PATTERN),
    ),
    Case(
        "name-control-character",
        NAMES,
        T,
        experiment(experiment_name="bad\nname"),
        IC,
        ("experiment_name", PATTERN),
    ),
    Case(
        "name-hidden",
        NAMES,
        T,
        experiment(experiment_name=".hidden"),
        IC,
        ("experiment_name", PATTERN),
    ),
    Case("name-empty", NAMES, T, experiment(experiment_name=""), IC, ("experiment_name", PATTERN)),
    Case(
        # Names starting with _ belong to the runs root (``_aliases``), never to runs.
        "name-underscore",
        NAMES,
        T,
        experiment(experiment_name="_aliases"),
        IC,
        ("experiment_name", PATTERN),
    ),
    Case(
        "name-too-long",
        NAMES,
        T,
        experiment(experiment_name="x" * 101),
        IC,
        ("experiment_name", PATTERN),
    ),
    Case(
        "model-name-control-character",
        NAMES,
        T,
        run_with(model_name="tiny\x07bert"),
        IC,
        ("runs[0].model_name", "control characters"),
    ),
    Case(
        "run-id-too-long",
        NAMES,
        T,
        lambda c: {
            "experiment_name": "x" * 100,
            "runs": [tiny_config(c.tiny_model, c.data, model_name="m" * 200)],
        },
        IC,
        ("runs[0].model_name", "longer than 255 bytes"),
    ),
    # hyperparameters
    Case(
        "epochs-zero",
        HYPER,
        T,
        run_with(num_epochs=0),
        IC,
        ("runs[0].num_epochs", "greater than or equal to 1"),
    ),
    Case(
        "epochs-negative",
        HYPER,
        T,
        run_with(num_epochs=-3),
        IC,
        ("runs[0].num_epochs", "greater than or equal to 1"),
    ),
    Case(
        "epochs-too-many",
        HYPER,
        T,
        run_with(num_epochs=21),
        IC,
        ("runs[0].num_epochs", "less than or equal to 20"),
    ),
    Case(
        "batch-size-zero",
        HYPER,
        T,
        run_with(batch_size=0),
        IC,
        ("runs[0].batch_size", "greater than or equal to 1"),
    ),
    Case(
        "batch-size-huge",
        HYPER,
        T,
        run_with(batch_size=100000),
        IC,
        ("runs[0].batch_size", "less than or equal to 256"),
    ),
    Case(
        "learning-rate-zero",
        HYPER,
        T,
        run_with(learning_rate=0),
        IC,
        ("runs[0].learning_rate", "greater than 0"),
    ),
    Case(
        "learning-rate-negative",
        HYPER,
        T,
        run_with(learning_rate=-0.001),
        IC,
        ("runs[0].learning_rate", "greater than 0"),
    ),
    Case(
        "learning-rate-huge",
        HYPER,
        T,
        run_with(learning_rate=3.0),
        IC,
        ("runs[0].learning_rate", "less than or equal to 0.1"),
    ),
    Case(
        "max-seq-length-huge",
        HYPER,
        T,
        run_with(max_seq_length=100000),
        IC,
        ("runs[0].max_seq_length", "less than or equal to 512"),
    ),
    Case(
        "max-seq-length-over-model",
        HYPER,
        T,
        run_with(max_seq_length=256),  # the tiny test model has 128 position embeddings
        IC,
        ("max_seq_length 256", "128 positions"),
    ),
    Case(
        "max-seq-length-tiny",
        HYPER,
        T,
        run_with(max_seq_length=2),
        IC,
        ("runs[0].max_seq_length", "greater than or equal to 8"),
    ),
    Case(
        "max-train-samples-zero",
        HYPER,
        T,
        run_with(max_train_samples=0),
        IC,
        ("runs[0].max_train_samples", "greater than or equal to 1"),
    ),
    Case(
        "max-eval-samples-negative",
        HYPER,
        T,
        run_with(max_eval_samples=-1),
        IC,
        ("runs[0].max_eval_samples", "greater than or equal to 1"),
    ),
    Case(
        "checkpoint-steps-zero",
        HYPER,
        T,
        run_with(checkpoint_steps=0),
        IC,
        ("runs[0].checkpoint_steps", "greater than or equal to 1"),
    ),
    Case(
        "heartbeat-timeout-too-short",
        HYPER,
        T,
        experiment(heartbeat_timeout_seconds=1),
        IC,
        ("heartbeat_timeout_seconds", "greater than or equal to 5"),
    ),
    Case(
        "seed-negative",
        HYPER,
        T,
        run_with(seed=-1),
        IC,
        ("runs[0].seed", "greater than or equal to 0"),
    ),
    Case(
        "seed-too-large",
        HYPER,
        T,
        run_with(seed=2**32),
        IC,
        ("runs[0].seed", "less than or equal to 4294967295"),
    ),
    Case(
        "label-column-is-text-column",
        HYPER,
        T,
        run_with(label_column="sentence"),
        IC,
        ("runs[0]", "label_column 'sentence' is also the text_column"),
    ),
    Case(
        "use-gpu-not-boolean",
        HYPER,
        T,
        run_with(use_gpu="maybe"),
        IC,
        ("runs[0].use_gpu", "valid boolean"),
    ),
    # data
    Case(
        "dataset-not-found-offline",
        DATA,
        T,
        run_with(train_file=None, validation_file=None, dataset_name="no-such-org/no-such-dataset"),
        DE,
        ("dataset_name", "no-such-org/no-such-dataset"),
    ),
    Case(
        "train-file-missing",
        DATA,
        T,
        run_with(train_file=local("missing_file"), validation_file=None),
        DE,
        ("train_file", "does not exist"),
    ),
    Case(
        "validation-file-missing",
        DATA,
        T,
        run_with(validation_file=local("missing_file")),
        DE,
        ("validation_file", "does not exist"),
    ),
    Case(
        "train-file-unsupported-type",
        DATA,
        T,
        run_with(train_file=local("unsupported_file"), validation_file=None),
        DE,
        ("train_file", "unsupported file type"),
    ),
    Case(
        "train-file-not-parquet",
        DATA,
        T,
        run_with(train_file=local("garbage_parquet"), validation_file=None),
        DE,
        ("train_file", "could not be read"),
    ),
    Case(
        "train-file-broken-json",
        DATA,
        T,
        run_with(train_file=local("broken_json"), validation_file=None),
        DE,
        ("train_file", "could not be read"),
    ),
    Case(
        "text-column-missing",
        DATA,
        T,
        run_with(train_file=local("no_text_column"), validation_file=None),
        DE,
        ("text_column", "'sentence'", "it has 2 columns"),
    ),
    Case(
        "label-column-missing",
        DATA,
        T,
        run_with(train_file=local("no_label_column"), validation_file=None),
        DE,
        ("label_column", "'label'", "it has 2 columns"),
    ),
    Case(
        "train-file-empty",
        DATA,
        T,
        run_with(train_file=local("header_only"), validation_file=None),
        DE,
        ("train_file", "no data rows"),
    ),
    Case(
        "single-class",
        DATA,
        T,
        run_with(train_file=local("single_class"), validation_file=None),
        DE,
        ("single class",),
    ),
    Case(
        "single-class-after-subsampling",
        DATA,
        T,
        run_with(max_train_samples=1),
        DE,
        ("single class", "max_train_samples"),
    ),
    Case(
        "float-labels",
        DATA,
        T,
        run_with(train_file=local("float_labels"), validation_file=None),
        DE,
        ("label_column", "float"),
    ),
    Case(
        "mixed-label-types",
        DATA,
        T,
        run_with(train_file=local("mixed_labels"), validation_file=None),
        DE,
        ("label_column", "mixes"),
    ),
    Case(
        "non-utf8-text",
        DATA,
        T,
        run_with(train_file=local("latin1"), validation_file=None),
        DE,
        ("train_file", "not UTF-8"),
    ),
    Case(
        "null-text",
        DATA,
        T,
        run_with(train_file=local("null_text"), validation_file=None),
        DE,
        ("text_column", "row"),
    ),
    Case(
        "dict-labels-not-echoed",
        DATA,
        T,
        run_with(train_file=local("dict_labels"), validation_file=None),
        DE,
        ("label_column", "dict values", "row 0"),
        hidden=(SECRET,),
    ),
    Case(
        "list-text-not-echoed",
        DATA,
        T,
        run_with(train_file=local("list_text"), validation_file=None),
        DE,
        ("text_column", "list value", "row 0"),
        hidden=(SECRET,),
    ),
    Case(
        "single-class-label-not-echoed",
        DATA,
        T,
        run_with(train_file=local("secret_single_class"), validation_file=None),
        DE,
        ("single class", "40 rows, one label"),
        hidden=(SECRET,),
    ),
    Case(
        "validation-label-not-echoed",
        DATA,
        T,
        run_with(validation_file=local("secret_validation_label")),
        DE,
        ("validation split has 1 rows whose label never occurs", "validation row 40"),
        hidden=(SECRET,),
    ),
    # the tasks (docs/tasks.md): malformed rows named by row and field, never quoted
    Case(
        "tags-length-mismatch",
        DATA,
        T,
        run_with(
            task="token_classification",
            train_file=local("tags_mismatch"),
            validation_file=None,
            text_column="tokens",
            label_column="tags",
        ),
        DE,
        ("train row 1: text_column 'tokens' has 3 words but label_column 'tags' has 2 tags",),
        hidden=(SECRET,),
    ),
    Case(
        "regression-label-not-a-number",
        DATA,
        T,
        run_with(task="regression", train_file=local("score_not_number"), validation_file=None),
        DE,
        ("train row 1: label_column 'label' is not a number",),
        hidden=(SECRET,),
    ),
    Case(
        "multi-label-unknown-validation-label",
        DATA,
        T,
        run_with(
            task="multi_label_classification",
            label_separator="|",
            validation_file=local("unknown_validation_label"),
        ),
        DE,
        ("validation split has 1 rows with a label that never occurs", "validation row 5"),
        hidden=(SECRET,),
    ),
    Case(
        "pair-empty-second-text",
        DATA,
        T,
        run_with(
            text_pair_column="sentence2", train_file=local("empty_pair"), validation_file=None
        ),
        DE,
        ("train row 5: text_pair_column 'sentence2' is empty",),
        hidden=(SECRET,),
    ),
    Case(
        "header-not-echoed",
        DATA,
        T,
        run_with(train_file=local("headerless"), validation_file=None),
        DE,
        ("text_column 'sentence' is not a column", "it has 2 columns"),
        hidden=(SECRET,),
    ),
    Case(
        "too-many-classes",
        DATA,
        T,
        run_with(train_file=local("many_classes"), validation_file=None),
        IC,
        ("label_column 'label' has 1001 classes", "1000", "BERT_MAX_CLASSES"),
    ),
    # local paths
    Case(
        "train-file-outside-roots",
        CONFINED,
        T,
        run_with(train_file=local("forbidden_file"), validation_file=None),
        IC,
        ("train_file", *OUTSIDE),
        hidden=(SECRET,),
    ),
    Case(
        "validation-file-outside-roots",
        CONFINED,
        T,
        run_with(validation_file=local("forbidden_file")),
        IC,
        ("validation_file", *OUTSIDE),
        hidden=(SECRET,),
    ),
    Case(
        "train-file-outside-roots-missing",
        CONFINED,
        T,
        run_with(
            train_file=lambda ctx: str(ctx.bad.forbidden / "no-such.csv"), validation_file=None
        ),
        IC,
        ("train_file", *OUTSIDE),  # the same answer as for a file that exists
    ),
    Case(
        "train-file-symlink-out",
        CONFINED,
        T,
        run_with(train_file=local("link_to_forbidden_file"), validation_file=None),
        IC,
        ("train_file", "link-to-tenant-b.csv", *OUTSIDE),
        hidden=(SECRET,),
    ),
    Case(
        "train-file-dot-dot-out",
        CONFINED,
        T,
        run_with(
            train_file=lambda ctx: f"{ctx.bad.root}/../{ctx.bad.forbidden.name}/tenant-b.csv",
            validation_file=None,
        ),
        IC,
        ("train_file", *OUTSIDE),
    ),
    Case(
        "model-outside-roots",
        CONFINED,
        T,
        run_with(model_name=local("forbidden_model")),
        IC,
        ("model_name", *OUTSIDE),
    ),
    Case(
        "model-file-links-out",
        CONFINED,
        T,
        run_with(model_name=local("model_linking_out")),
        IC,
        ("model_name", "holds 'config.json', a link to outside", *OUTSIDE),
    ),
    Case(
        "dataset-name-outside-roots",
        CONFINED,
        T,
        run_with(
            dataset_name=local("forbidden_dataset"),
            dataset_config_name=None,
            train_file=None,
            validation_file=None,
        ),
        IC,
        ("dataset_name", *OUTSIDE),
    ),
    Case(
        "dataset-name-builtin-loader",
        CONFINED,
        T,
        run_with(
            dataset_name="csv", dataset_config_name=None, train_file=None, validation_file=None
        ),
        IC,
        ("dataset_name 'csv'", "built into the datasets library", "train_file"),
    ),
    Case(
        "dataset-card-names-file-outside",
        CONFINED,
        T,
        run_with(
            dataset_name=local("dataset_card_out"),
            dataset_config_name=None,
            train_file=None,
            validation_file=None,
        ),
        IC,
        ("dataset_name", "README.md has configs[0].data_files", "outside the folder"),
        hidden=(SECRET, "tenant-b"),
    ),
    Case(
        "model-index-names-file-outside",
        CONFINED,
        T,
        run_with(model_name=local("model_index_out")),
        IC,
        ("model_name", NAMES_OUTSIDE, "model.safetensors.index.json field 'weight_map'"),
        hidden=("shard.safetensors",),
    ),
    Case(
        "model-tokenizer-file-outside",
        CONFINED,
        T,
        run_with(model_name=local("model_tokenizer_file_out")),
        IC,
        ("model_name", NAMES_OUTSIDE, "tokenizer_config.json field 'vocab_file'"),
    ),
    # models
    Case(
        "model-not-found-offline",
        MODELS,
        T,
        run_with(model_name="no-such-org/no-such-bert"),
        ML,
        ("model_name", "no-such-org/no-such-bert"),
    ),
    Case(
        "model-path-not-a-model",
        MODELS,
        T,
        run_with(model_name=local("not_a_model")),
        ML,
        ("model_name", "not-a-model"),
    ),
    Case(
        "model-without-tokenizer",
        MODELS,
        T,
        run_with(model_name=local("no_tokenizer")),
        ML,
        ("model_name", "no usable tokenizer"),
    ),
    Case(
        "model-not-for-classification",
        MODELS,
        T,
        run_with(model_name=local("vision_model")),
        ML,
        ("model_name", "sequence classification"),
    ),
    Case(
        "model-pickle-only",
        MODELS,
        T,
        run_with(model_name=local("pickle_only")),
        ML,
        ("model_name", "safetensors"),
    ),
    Case(
        "model-needs-remote-code",
        MODELS,
        T,
        run_with(model_name=local("remote_code")),
        ML,
        ("model_name", "remote-code"),
        tags=frozenset({"remote-code"}),
    ),
    # inference
    Case(
        "predict-invalid-json",
        SHAPE,
        P,
        lambda c: RawJSON('{"run_id": "x", "texts": '),
        IC,
        ("not valid JSON",),
        cli=False,
    ),
    Case(
        "predict-unknown-field",
        SHAPE,
        P,
        predict(temperature=0.5),
        IC,
        ("temperature", "unknown field"),
        cli=False,
    ),
    Case(
        "predict-neither-run-id-nor-alias",
        SHAPE,
        P,
        lambda c: {"texts": ["good"]},
        IC,
        ("exactly one of run_id", "alias"),
        cli=False,
    ),
    Case(
        "predict-both-run-id-and-alias",
        SHAPE,
        P,
        predict(alias="production"),
        IC,
        ("exactly one of run_id", "alias"),
        cli=False,
    ),
    Case(
        "predict-empty-texts",
        SHAPE,
        P,
        predict(texts=[]),
        IC,
        ("texts", "at least 1"),
        cli_expect=("at least one TEXT",),
    ),
    Case(
        "predict-null-texts",
        SHAPE,
        P,
        predict(texts=None),
        IC,
        ("texts", "must be a list"),
        cli=False,
    ),
    Case(
        "predict-texts-not-strings",
        SHAPE,
        P,
        predict(texts=[1, 2]),
        IC,
        ("texts[0]", "valid string"),
        cli=False,
    ),
    Case("predict-run-id-traversal", NAMES, P, predict(run_id="../x"), IC, ("run_id",)),
    Case("predict-run-id-absolute", NAMES, P, predict(run_id="/etc"), IC, ("run_id",)),
    Case("predict-run-id-dot-dot", NAMES, P, predict(run_id=".."), IC, ("run_id",)),
    Case("predict-run-id-nested", NAMES, P, predict(run_id="a/b"), IC, ("run_id",)),
    Case("predict-run-id-empty", NAMES, P, predict(run_id=""), IC, ("run_id",)),
    Case(
        "predict-run-id-aliases-folder",
        NAMES,
        P,
        predict(run_id="_aliases"),
        IC,
        ("run_id", LETTER_OR_DIGIT),
    ),
    Case(
        "predict-run-id-underscore",
        NAMES,
        P,
        predict(run_id="_models"),
        IC,
        ("run_id", LETTER_OR_DIGIT),
    ),
    Case(
        "predict-alias-traversal",
        NAMES,
        P,
        predict(run_id=None, alias="../production"),
        IC,
        ("alias", PATTERN),
    ),
    Case(
        "predict-run-id-symlink-out",
        NAMES,
        P,
        predict(run_id=SYMLINK_RUN_ID),
        IC,
        ("run_id", "outside BERT_RUNS_DIR"),
    ),
    Case(
        "predict-max-seq-length-huge",
        HYPER,
        P,
        predict(max_seq_length=100000),
        IC,
        ("max_seq_length", "less than or equal to 512"),
    ),
    Case(
        "predict-batch-size-zero",
        HYPER,
        P,
        predict(batch_size=0),
        IC,
        ("batch_size", "greater than or equal to 1"),
    ),
    Case(
        "predict-unknown-run",
        INFER,
        P,
        predict(run_id="never-trained"),
        RNF,
        ("never-trained", "does not exist"),
    ),
    Case(
        "predict-incomplete-run",
        INFER,
        P,
        predict(run_id=INCOMPLETE_RUN_ID),
        RNF,
        (INCOMPLETE_RUN_ID, "incomplete"),
    ),
    Case(
        "predict-unknown-alias",
        INFER,
        P,
        predict(run_id=None, alias="staging"),
        RNF,
        ("alias 'staging' does not exist", "bert-finetune promote RUN_ID staging"),
    ),
    Case(
        "predict-corrupt-run",
        INFER,
        P,
        predict(run_id=CORRUPT_RUN_ID),
        ML,
        (CORRUPT_RUN_ID, "could not be loaded"),
    ),
    Case(
        "predict-run-links-out",
        INFER,
        P,
        predict(run_id=LINKS_OUT_RUN_ID),
        ML,
        (LINKS_OUT_RUN_ID, "holds 'onnx/tokenizer.json', a link to outside its folder"),
    ),
    Case(
        "predict-run-index-names-file-outside",
        INFER,
        P,
        predict(run_id=INDEX_OUT_RUN_ID),
        ML,
        (INDEX_OUT_RUN_ID, NAMES_OUTSIDE, "model.safetensors.index.json field 'weight_map'"),
    ),
    Case(
        "predict-over-payload-limit",
        INFER,
        P,
        predict(texts=["x" * (OVERSIZE_TEXT_BYTES // 2)] * 2 + ["x"]),
        IC,
        ("texts", "split them"),
        cli=False,
    ),
    Case(
        # Few bytes of text but a result too big for one payload: the label name and
        # confidence added per text dominate.
        "predict-too-many-short-texts",
        INFER,
        P,
        predict(texts=["ok"] * 12_000),
        IC,
        ("12000 texts", "split them"),
        cli=False,
    ),
    Case(
        # Second texts are for runs trained on pairs (text_pair_column) only.
        "predict-text-pairs-to-a-single-text-run",
        INFER,
        P,
        predict(text_pairs=["a second text"]),
        IC,
        ("text_pairs", "trained on single texts", "remove text_pairs"),
    ),
    Case(
        "predict-text-pairs-count",
        SHAPE,
        P,
        predict(text_pairs=["one", "two"]),
        IC,
        ("text_pairs: 2 second texts for 1 texts",),
        cli_expect=("2 --pair for 1 TEXT arguments",),
    ),
    # aliases (BertPromoteWorkflow)
    Case(
        "promote-unknown-field",
        SHAPE,
        PR,
        promotion(force=True),
        IC,
        ("force", "unknown field"),
        cli=False,
    ),
    Case(
        "promote-missing-alias",
        SHAPE,
        PR,
        lambda c: {"run_id": c.good_run_id},
        IC,
        ("alias", "required field is missing"),
        cli=False,
    ),
    Case("promote-alias-empty", ALIASES, PR, promotion(alias=""), IC, ("alias", LETTER_OR_DIGIT)),
    Case(
        "promote-alias-traversal",
        ALIASES,
        PR,
        promotion(alias="../production"),
        IC,
        ("alias", LETTER_OR_DIGIT),
    ),
    Case(
        "promote-alias-underscore",
        ALIASES,
        PR,
        promotion(alias="_aliases"),
        IC,
        ("alias", LETTER_OR_DIGIT),
    ),
    Case(
        "promote-alias-too-long",
        ALIASES,
        PR,
        promotion(alias="x" * 101),
        IC,
        ("alias", "1-100 characters"),
    ),
    Case(
        "promote-run-id-aliases-folder",
        ALIASES,
        PR,
        promotion(run_id="_aliases"),
        IC,
        ("run_id", LETTER_OR_DIGIT),
    ),
    Case(
        "promote-run-id-traversal",
        ALIASES,
        PR,
        promotion(run_id="../x"),
        IC,
        ("run_id", LETTER_OR_DIGIT),
    ),
    Case(
        "promote-run-id-symlink-out",
        ALIASES,
        PR,
        promotion(run_id=SYMLINK_RUN_ID),
        IC,
        ("run_id", "outside BERT_RUNS_DIR"),
    ),
    Case(
        "promote-unknown-run",
        ALIASES,
        PR,
        promotion(run_id="never-trained"),
        RNF,
        ("never-trained", "does not exist"),
    ),
    Case(
        "promote-incomplete-run",
        ALIASES,
        PR,
        promotion(run_id=INCOMPLETE_RUN_ID),
        RNF,
        (INCOMPLETE_RUN_ID, "incomplete"),
    ),
    # rollouts (gate, canary_percent, shadow, rollback); the CLI's options cannot combine them
    Case(
        "promote-canary-and-shadow",
        ALIASES,
        PR,
        promotion(canary_percent=10, shadow=True),
        IC,
        ("canary_percent and shadow", "are exclusive; give one of them"),
        cli=False,
    ),
    Case(
        "promote-canary-out-of-range",
        ALIASES,
        PR,
        promotion(canary_percent=100),
        IC,
        ("canary_percent: Input should be less than or equal to 99",),
        cli=False,
    ),
    Case(
        "promote-gate-loss",
        ALIASES,
        PR,
        promotion(gate={"metric": "eval_loss", "data_file": "held_out.csv"}),
        IC,
        ("gate.metric", "'eval_loss' is not a metric a gate can compare"),
        cli=False,
    ),
    Case(
        "promote-no-run-id",
        ALIASES,
        PR,
        lambda c: {"alias": "production"},
        IC,
        ("run_id: required field is missing (only a rollback",),
        cli=False,
    ),
    Case(
        "promote-rollback-with-gate",
        ALIASES,
        PR,
        lambda c: {
            "alias": "production",
            "rollback": True,
            "gate": {"metric": "eval_accuracy", "data_file": "held_out.csv"},
        },
        IC,
        ("rollback removes the alias's canary or shadow; it takes no gate",),
        cli=False,
    ),
    Case(
        "promote-rollback-nothing",
        ALIASES,
        PR,
        lambda c: {"alias": "production", "rollback": True},
        IC,
        ("rollback: alias 'production' has no canary or shadow to roll back",),
        cli=False,
    ),
    # sweeps
    Case("sweep-empty-space", SWEEPS, S, sweep(space={}), IC, ("space", "at least 1 item")),
    Case(
        "sweep-unknown-field-in-space",
        SWEEPS,
        S,
        sweep(space={"learning_rat": {"values": [0.01]}}),
        IC,
        ("space", "'learning_rat' is not a tunable field"),
    ),
    Case(
        "sweep-non-tunable-field",
        SWEEPS,
        S,
        sweep(space={"text_column": {"values": ["text"]}}),
        IC,
        ("space", "'text_column' is not a tunable field", "set other fields in base"),
    ),
    Case(
        "sweep-spec-neither-values-nor-range",
        SWEEPS,
        S,
        sweep(space={"learning_rate": {"log": True}}),
        IC,
        ("space.learning_rate", 'give either "values"'),
    ),
    Case(
        "sweep-min-greater-than-max",
        SWEEPS,
        S,
        sweep(strategy="random", space={"learning_rate": {"min": 0.01, "max": 0.001}}),
        IC,
        ("space.learning_rate", "min (0.01) is greater than max (0.001)"),
    ),
    Case(
        "sweep-log-with-nonpositive-min",
        SWEEPS,
        S,
        sweep(strategy="random", space={"weight_decay": {"min": 0, "max": 0.1, "log": True}}),
        IC,
        ("space.weight_decay", "needs min > 0"),
    ),
    Case(
        "sweep-value-out-of-bounds",
        SWEEPS,
        S,
        sweep(space={"learning_rate": {"values": [0.01, 0.5]}}),
        IC,
        ("space.learning_rate", "0.5 is not allowed", "less than or equal to 0.1"),
    ),
    Case(
        "sweep-range-end-out-of-bounds",
        SWEEPS,
        S,
        sweep(strategy="random", space={"batch_size": {"min": 8, "max": 1024}}),
        IC,
        ("space.batch_size", "1024 is not allowed", "less than or equal to 256"),
    ),
    Case(
        "sweep-integer-field-fraction",
        SWEEPS,
        S,
        sweep(strategy="random", space={"num_epochs": {"min": 1, "max": 2.5}}),
        IC,
        ("space.num_epochs", "2.5 is not an integer"),
    ),
    Case(
        "sweep-grid-with-range",
        SWEEPS,
        S,
        sweep(space={"learning_rate": {"min": 0.001, "max": 0.01}}),
        IC,
        ("space.learning_rate", "strategy grid takes only"),
    ),
    Case(
        "sweep-grid-too-large",
        SWEEPS,
        S,
        sweep(
            space={
                "seed": {"values": list(range(11))},
                "batch_size": {"values": list(range(1, 11))},
            }
        ),
        IC,
        ("space", "110 combinations, more than 100"),
    ),
    Case(
        "sweep-seed-out-of-range-in-space",
        SWEEPS,
        S,
        sweep(space={"seed": {"values": [1, -1]}}),
        IC,
        ("space.seed", "-1 is not allowed", "greater than or equal to 0"),
    ),
    Case(
        "sweep-seed-too-large",
        SWEEPS,
        S,
        sweep(seed=2**32),
        IC,
        ("seed", "less than or equal to 4294967295"),
    ),
    Case(
        "sweep-run-id-too-long",
        SWEEPS,
        S,
        lambda c: sweep(
            sweep_name="x" * 100,
            base=tiny_config(c.tiny_model, c.data, num_epochs=1, model_name="m" * 200),
        )(c),
        IC,
        ("base.model_name", "longer than 255 bytes"),
    ),
    Case(
        "sweep-num-trials-zero",
        SWEEPS,
        S,
        sweep(strategy="random", num_trials=0),
        IC,
        ("num_trials", "greater than or equal to 1"),
    ),
    Case(
        "sweep-num-trials-too-many",
        SWEEPS,
        S,
        sweep(strategy="random", num_trials=101),
        IC,
        ("num_trials", "less than or equal to 100"),
    ),
    Case(
        "sweep-max-concurrent-zero",
        SWEEPS,
        S,
        sweep(max_concurrent_trials=0),
        IC,
        ("max_concurrent_trials", "greater than or equal to 1"),
    ),
    Case(
        "sweep-unknown-metric",
        SWEEPS,
        S,
        sweep(metric="accuracy"),
        IC,
        (
            "metric: 'accuracy' is not a metric of task single_label_classification",
            "choose one of eval_accuracy, eval_f1_macro, eval_precision_macro",
        ),
    ),
    Case(
        "sweep-unknown-strategy",
        SWEEPS,
        S,
        sweep(strategy="bayes"),
        IC,
        ("strategy", "Input should be 'grid', 'random' or 'tpe'"),
    ),
    Case(
        "sweep-reduction-factor-too-large",
        SWEEPS,
        S,
        sweep(early_stopping={"type": "successive_halving", "reduction_factor": 5}),
        IC,
        ("early_stopping.reduction_factor", "less than or equal to 4"),
    ),
    Case(
        "sweep-reduction-factor-too-small",
        SWEEPS,
        S,
        sweep(early_stopping={"type": "successive_halving", "reduction_factor": 1}),
        IC,
        ("early_stopping.reduction_factor", "greater than or equal to 2"),
    ),
    Case(
        "sweep-bad-promote-alias",
        SWEEPS,
        S,
        sweep(promote_alias="_aliases"),
        IC,
        ("promote_alias", PATTERN),
    ),
    Case(
        "sweep-bad-name",
        SWEEPS,
        S,
        sweep(sweep_name="../up"),
        IC,
        ("sweep_name", PATTERN),
    ),
]

CASES_BY_ID = {case.id: case for case in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"


def cases(workflow: str) -> list[Case]:
    return [case for case in CASES if case.workflow == workflow]
