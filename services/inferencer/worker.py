"""Entry point of the inference worker (``bert-finetune worker inferencer``)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from services.inferencer.activities import InferenceActivities
from services.inferencer.gate import GateActivities
from services.inferencer.http_server import HttpEndpoint
from services.inferencer.model_cache import ModelCache
from services.inferencer.shadow import ShadowScorer
from services.inferencer.warming import AliasWarmer
from services.inferencer.workflows import BertInferenceWorkflow
from services.trainer.run_folder.paths import LocalPathRoots, default_roots
from shared.service import Sidecar, run_worker_service
from shared.settings import Settings


def build_inferencer_worker(
    client: Client,
    *,
    task_queue: str,
    runs_root: Path,
    model_cache_size: int = 4,
    max_concurrent_activities: int = 4,
    graceful_shutdown: timedelta = timedelta(seconds=30),
    cache: ModelCache | None = None,
    shadow: ShadowScorer | None = None,
    local_path_roots: Sequence[Path] | None = None,
) -> Worker:
    """The inference worker.

    Args:
        task_queue: queue polled for ``BertInferenceWorkflow`` and ``run_bert_inference``.
        runs_root: the shared runs volume (``BERT_RUNS_DIR``), read only.
        model_cache_size: models kept loaded (LRU); bounds memory when requests rotate runs.
        max_concurrent_activities: requests classified at once; the backends use every core
            for each, so a few is enough to overlap loading with compute. Small requests run
            as local activities (``workflows.py``); they share the same thread pool.
        graceful_shutdown: time in-flight requests get to finish after SIGTERM.
        cache: the model cache to serve from (the HTTP endpoint's, in the same process);
            a new one of ``model_cache_size`` models by default.
        shadow: scores requests by an alias with its shadow run (the HTTP endpoint's, so
            both paths share one background thread); a new one by default.
        local_path_roots: the folders a promotion gate's ``data_file`` may be in
            (``BERT_LOCAL_PATH_ROOTS``, symlinks followed); default the working directory
            and ``runs_root``.
    """
    cache = cache if cache is not None else ModelCache(model_cache_size)
    activities = InferenceActivities(runs_root, cache, shadow)
    roots = LocalPathRoots.of(local_path_roots) if local_path_roots else default_roots(runs_root)
    gate = GateActivities(runs_root, cache, roots)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[BertInferenceWorkflow],
        activities=[
            activities.run_bert_inference,
            activities.run_bert_inference_warm,
            gate.evaluate_promotion_gate,
        ],
        activity_executor=ThreadPoolExecutor(
            max_workers=max_concurrent_activities, thread_name_prefix="inference"
        ),
        max_concurrent_activities=max_concurrent_activities,
        max_concurrent_local_activities=max_concurrent_activities,
        graceful_shutdown_timeout=graceful_shutdown,
    )


async def run_inferencer(settings: Settings) -> None:
    # One cache for both paths: the workflow's activities and the HTTP endpoint serve the same
    # loaded models (and load each once).
    cache = ModelCache(settings.model_cache_size)
    shadow = ShadowScorer(settings.runs_dir, cache)
    sidecars: list[Sidecar] = []
    if settings.http.enabled:
        sidecars.append(
            HttpEndpoint(
                settings.http,
                settings.runs_dir,
                cache,
                shadow=shadow,
                classify_threads=settings.inference_max_concurrent_activities,
                graceful_shutdown_seconds=settings.graceful_shutdown_seconds,
            )
        )
    if settings.warm_aliases_seconds > 0:
        # Promoted runs (and their exports) are loaded ahead of their first request.
        sidecars.append(
            AliasWarmer(
                settings.runs_dir,
                cache,
                interval_seconds=settings.warm_aliases_seconds,
                limit=settings.model_cache_size,
            )
        )
    await run_worker_service(
        "inferencer",
        settings,
        settings.inferencer_metrics_port,
        lambda client: build_inferencer_worker(
            client,
            task_queue=settings.inference_task_queue,
            runs_root=settings.runs_dir,
            model_cache_size=settings.model_cache_size,
            max_concurrent_activities=settings.inference_max_concurrent_activities,
            graceful_shutdown=timedelta(seconds=settings.graceful_shutdown_seconds),
            cache=cache,
            shadow=shadow,
            local_path_roots=settings.local_path_roots,
        ),
        sidecars=sidecars,
    )
