"""Inference under load: 50 concurrent executions, and memory bounded by the model cache."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from temporalio.client import Client

from shared import metrics
from shared.types import INFERENCE_WORKFLOW, BertInferenceRequest, BertInferenceResult
from tests.conftest import running_workers
from tests.hardening.conftest import TrainedRun, copy_run
from tests.helpers.inference import concurrent_inferences
from tests.helpers.runs import make_run

CACHE_SIZE = 2  # running_workers builds the inferencer with model_cache_size=2


async def test_fifty_concurrent_requests_all_succeed_with_correct_labels(
    client: Client, trained_run: TrainedRun, runs_root: Path
) -> None:
    copy_run(trained_run.run_dir, runs_root, "loaded")
    async with running_workers(client, runs_root, trainer=False) as queues:
        load = await concurrent_inferences(client, queues.inference, "loaded", 50, 8)
    assert len(load.results) == 50
    for result in load.results:
        expected = [
            "positive" if any(w in t for w in ("good", "wonderful")) else "negative"
            for t in result.texts
        ]
        assert result.label_names == expected
        assert all(0.5 <= c <= 1.0 for c in result.confidences)
    assert max(load.latencies) < 60


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def _build_medium_bert(path: Path) -> int:
    """A ~10M-parameter BERT (about 40 MB of weights), so each cached model shows in RSS."""
    from transformers import BertConfig, BertForSequenceClassification

    from tests.tiny import build_tiny_bert

    build_tiny_bert(path)
    tiny = BertConfig.from_pretrained(path)
    config = BertConfig(
        vocab_size=tiny.vocab_size,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=6,
        intermediate_size=1536,
        max_position_embeddings=128,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    model.save_pretrained(path)
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
async def test_memory_stays_bounded_when_requests_rotate_across_more_runs_than_cached(
    client: Client, runs_root: Path, tmp_path: Path
) -> None:
    model_bytes = _build_medium_bert(tmp_path / "medium")
    run_ids = [f"rotating-{i}" for i in range(3 * CACHE_SIZE)]
    for run_id in run_ids:
        make_run(runs_root, run_id, tmp_path / "medium", ["negative", "positive"])
    loads_before = metrics.MODEL_LOADS._value.get()

    async def rotate() -> None:
        for run_id in run_ids:
            result = await client.execute_workflow(
                INFERENCE_WORKFLOW,
                BertInferenceRequest(run_id=run_id, texts=["a good movie", "a bad day"]),
                id=f"rotate-{uuid.uuid4()}",
                task_queue=queues.inference,
                result_type=BertInferenceResult,
            )
            assert len(result.labels) == 2
            assert metrics.MODELS_CACHED._value.get() <= CACHE_SIZE

    async with running_workers(client, runs_root, trainer=False) as queues:
        await rotate()  # warm-up: the cache fills and allocator pools settle
        baseline = _rss_bytes()
        for _ in range(3):
            await rotate()
        growth = _rss_bytes() - baseline

    loads = metrics.MODEL_LOADS._value.get() - loads_before
    assert loads == 4 * len(run_ids), "every request past the cache must reload (LRU evicts)"
    # Unbounded, the last rounds would add (runs - cache) models; allow well under that.
    unbounded = (len(run_ids) - CACHE_SIZE) * model_bytes
    assert growth < unbounded / 2, (
        f"RSS grew {growth / 1e6:.0f} MB (model {model_bytes / 1e6:.0f} MB)"
    )
