"""``BertInferenceWorkflow``: one ``run_bert_inference`` activity, size-checked input.

Small requests (one batch of texts) run the activity as a *local* activity on the worker
that runs the workflow: no activity task round trip through the server, which is most of
what a warm few-text request costs. Larger requests keep the regular activity, which
heartbeats per batch and can run on any inference worker.

A model is never loaded inside a workflow task (``WARM_LOCAL_ACTIVITY``): the local activity
(``run_bert_inference_warm``) serves only a model already loaded on its worker and fails
``ModelCold`` at once otherwise (starting a background load there), and the request then
runs as the regular activity, which loads it.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from shared.errors import INVALID_CONFIG, MODEL_COLD, NON_RETRYABLE_TYPES, failure
    from shared.types import (
        INFERENCE_ACTIVITY,
        INFERENCE_WARM_ACTIVITY,
        INFERENCE_WORKFLOW,
        MAX_INFERENCE_PAYLOAD_BYTES,
        BertInferenceRequest,
        BertInferenceResult,
        inference_payload_bytes,
    )
    from shared.workflow_versions import (
        INFERENCE_PAYLOAD_COUNTS_PAIRS,
        SMALL_REQUEST_LOCAL_ACTIVITY,
        WARM_LOCAL_ACTIVITY,
    )

# At most one default batch: classified in well under a second once the model is loaded.
SMALL_REQUEST_MAX_TEXTS = 32

INFERENCE_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
    non_retryable_error_types=NON_RETRYABLE_TYPES,
)


# Any exception fails the workflow: a bug must never leave it RUNNING with a retrying task.
@workflow.defn(name=INFERENCE_WORKFLOW, failure_exception_types=[Exception])
class BertInferenceWorkflow:
    @workflow.run
    async def run(self, request: BertInferenceRequest) -> BertInferenceResult:
        # Requests without pairs are estimated as they always were; the run's task (labels
        # per text, tags per word) is counted by the activity, which knows it.
        pairs = request.text_pairs
        if pairs is not None and not workflow.patched(INFERENCE_PAYLOAD_COUNTS_PAIRS.id):
            pairs = None
        size = inference_payload_bytes(request.texts, pairs)
        if size > MAX_INFERENCE_PAYLOAD_BYTES:
            raise failure(
                INVALID_CONFIG,
                f"texts: {len(request.texts)} texts make a result of about {size} bytes, over "
                f"the {MAX_INFERENCE_PAYLOAD_BYTES}-byte limit per request (the result echoes "
                "the texts with a label and confidence each, and Temporal caps payloads at "
                "2 MiB); split them over several requests (`bert-finetune predict --file` "
                "does this)",
            )
        if (
            workflow.patched(SMALL_REQUEST_LOCAL_ACTIVITY.id)
            and len(request.texts) <= SMALL_REQUEST_MAX_TEXTS
        ):
            if not workflow.patched(WARM_LOCAL_ACTIVITY.id):
                return await workflow.execute_local_activity(
                    INFERENCE_ACTIVITY,
                    request,
                    result_type=BertInferenceResult,
                    # Covers loading a model into a cold cache; the SDK keeps the workflow
                    # task alive meanwhile.
                    start_to_close_timeout=timedelta(minutes=2),
                    retry_policy=INFERENCE_RETRY_POLICY,
                )
            try:
                return await workflow.execute_local_activity(
                    INFERENCE_WARM_ACTIVITY,
                    request,
                    result_type=BertInferenceResult,
                    # Classification only: the model is loaded already, or this fails fast.
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=INFERENCE_RETRY_POLICY,
                )
            except (ActivityError, ApplicationError) as err:
                # (The SDK raises a local activity's ApplicationError as it is, or wrapped.)
                cause = err.cause if isinstance(err, ActivityError) else err
                if not (isinstance(cause, ApplicationError) and cause.type == MODEL_COLD):
                    raise
                # Not loaded on this worker: the regular activity below loads it.
        return await workflow.execute_activity(
            INFERENCE_ACTIVITY,
            request,
            result_type=BertInferenceResult,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=INFERENCE_RETRY_POLICY,
        )
