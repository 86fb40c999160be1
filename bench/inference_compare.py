"""Inference: ``BertInferenceWorkflow`` (the run's ONNX export, and the PyTorch path) vs
``transformers.pipeline`` on the same saved model (texts/s, label agreement, accuracy)."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bench_data import INFER_QUEUE, LABELS, Row, step, verdict


@dataclass(frozen=True)
class InferenceFigures:
    texts_per_second: float
    labels: list[int]


def pipeline_baseline(run_dir: Path, texts: list[str]) -> InferenceFigures:
    """``transformers.pipeline`` on the saved run: batch 32, truncation at 128 tokens."""
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(run_dir), device=-1)
    classifier(texts[:32], batch_size=32, truncation=True, max_length=128)  # warm
    started = time.perf_counter()
    predictions = classifier(texts, batch_size=32, truncation=True, max_length=128)
    elapsed = time.perf_counter() - started
    return InferenceFigures(len(texts) / elapsed, [LABELS.index(p["label"]) for p in predictions])


async def infer_with_workflow(client: Any, run_id: str, texts: list[str]) -> InferenceFigures:
    await request(client, run_id, texts[:8])  # warm: loads the model into the cache
    started = time.perf_counter()
    result = await request(client, run_id, texts)
    elapsed = time.perf_counter() - started
    return InferenceFigures(len(texts) / elapsed, result.labels)


async def request(client: Any, run_id: str, texts: list[str]) -> Any:
    from shared.types import INFERENCE_WORKFLOW, BertInferenceRequest, BertInferenceResult

    return await client.execute_workflow(
        INFERENCE_WORKFLOW,
        BertInferenceRequest(run_id=run_id, texts=texts),
        id=f"bench-infer-{uuid.uuid4()}",
        task_queue=INFER_QUEUE,
        result_type=BertInferenceResult,
    )


def serving_runs(runs_root: Path, run_dir: Path) -> tuple[str, str]:
    """(the run, served from its export; a copy without the export, served by PyTorch)."""
    from shared.onnx_export import EXPORT_DIR

    torch_run = f"{run_dir.name}-torch"
    shutil.copytree(run_dir, runs_root / torch_run)
    shutil.rmtree(runs_root / torch_run / EXPORT_DIR, ignore_errors=True)
    return run_dir.name, torch_run


def agreement(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


@dataclass
class InferenceComparison:
    onnx_run: str  # the trained run, served from its ONNX export
    torch_run: str  # a copy of it without the export, served by PyTorch
    served_graph: str  # the export's graph the ONNX side serves
    pipeline: InferenceFigures
    ours_onnx: InferenceFigures
    ours_torch: InferenceFigures
    gold: list[int]


async def compare_inference(
    client: Any, runs_root: Path, run_dir: Path, texts: list[str], gold: list[int]
) -> InferenceComparison:
    from shared.onnx_export import load_manifest

    onnx_run, torch_run = await asyncio.to_thread(serving_runs, runs_root, run_dir)
    manifest = load_manifest(runs_root / onnx_run)
    step("inference: transformers.pipeline")
    pipeline = await asyncio.to_thread(pipeline_baseline, run_dir, texts)
    step("inference: BertInferenceWorkflow (ONNX export, then PyTorch)")
    ours_onnx = await infer_with_workflow(client, onnx_run, texts)
    ours_torch = await infer_with_workflow(client, torch_run, texts)
    return InferenceComparison(
        onnx_run, torch_run, manifest.served_graph, pipeline, ours_onnx, ours_torch, gold
    )


def inference_rows(i: InferenceComparison) -> list[Row]:
    pipeline_accuracy = agreement(i.pipeline.labels, i.gold)
    onnx_agreement = agreement(i.ours_onnx.labels, i.pipeline.labels)
    torch_agreement = agreement(i.ours_torch.labels, i.pipeline.labels)
    return [
        (
            f"inference texts/s: workflow (ONNX `{i.served_graph}`) vs `pipeline`",
            f"{i.ours_onnx.texts_per_second:.0f}",
            f"{i.pipeline.texts_per_second:.0f}",
            f"{i.ours_onnx.texts_per_second / i.pipeline.texts_per_second:.2f}x",
            f"≥ 2.0x: {verdict(i.ours_onnx.texts_per_second >= 2 * i.pipeline.texts_per_second)}",
            f"labels agree {onnx_agreement:.2%} (≥ 99.5%: {verdict(onnx_agreement >= 0.995)}); "
            f"accuracy {agreement(i.ours_onnx.labels, i.gold):.3f} vs {pipeline_accuracy:.3f}",
        ),
        (
            "inference texts/s: workflow (PyTorch path, runs without export) vs `pipeline`",
            f"{i.ours_torch.texts_per_second:.0f}",
            f"{i.pipeline.texts_per_second:.0f}",
            f"{i.ours_torch.texts_per_second / i.pipeline.texts_per_second:.2f}x",
            "",
            f"labels agree {torch_agreement:.2%}",
        ),
    ]
