"""Dynamic batching for the HTTP endpoint: concurrent requests for one model, one forward pass.

Requests for the same loaded model (and ``max_seq_length``, and whether they send text pairs)
queue together. A batch starts
when its oldest request has waited ``window`` seconds, or at once when the queue holds
``max_batch_texts`` texts; while a batch runs, the next one fills up, so under load the
batches grow by themselves and an idle endpoint adds at most ``window`` to a request. A
request is never split between batches, and a batch takes whole requests up to
``max_batch_texts`` texts (a larger request goes alone). The classifier then cuts the batch
into forward passes by its token budget (``classifiers.token_batches``: at most
``forward_batch_size`` texts of similar length and ``MAX_BATCH_TOKENS`` padded tokens each),
so memory stays bounded however requests combine. One batch per model runs at a time (the
backends use every core for one); batches of different models run side by side on the
executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from services.inferencer.classifiers import BatchCallback, LoadedModel
from shared import metrics

# One prediction per text, in the run's task's shape (``Classifier.predict``).
Result = list[dict[str, Any]]

# Texts per forward pass. On CPU, passes of 16 texts of similar length were faster per text
# than 32 or 64 (less padding; docs/benchmarks.md, "HTTP serving"); an accelerator wants
# wider passes to fill its cores.
CPU_FORWARD_BATCH = 16
ACCELERATOR_FORWARD_BATCH = 64


def forward_batch_size(device: str) -> int:
    """Texts per forward pass for a model served on ``device`` ("cpu", "cuda:0", ...)."""
    return CPU_FORWARD_BATCH if device == "cpu" else ACCELERATOR_FORWARD_BATCH


@dataclass
class _Waiting:
    texts: list[str]
    pairs: list[str] | None
    future: asyncio.Future[Result]
    arrived: float


@dataclass
class _Queue:
    model: LoadedModel
    max_seq_length: int
    waiting: deque[_Waiting] = field(default_factory=deque)
    texts: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    running: bool = False


class DynamicBatcher:
    def __init__(
        self,
        executor: Executor,
        *,
        window_seconds: float,
        max_batch_texts: int,
        on_batch: Callable[[], BatchCallback] | None = None,
    ) -> None:
        self._executor = executor
        self._window = window_seconds
        self._max_texts = max_batch_texts
        self._on_batch = on_batch or (lambda: _ignore)
        self._queues: dict[tuple[int, int, bool], _Queue] = {}

    async def predict(
        self,
        model: LoadedModel,
        texts: list[str],
        max_seq_length: int,
        pairs: list[str] | None = None,
    ) -> Result:
        """Predictions for ``texts`` (input order; ``pairs``: their second texts), made with
        whatever other requests for ``model`` arrive within the window."""
        key = (id(model), max_seq_length, pairs is not None)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(model, max_seq_length)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(texts, pairs, loop.create_future(), time.monotonic())
        queue.waiting.append(waiting)
        queue.texts += len(texts)
        if queue.texts >= self._max_texts:
            queue.wake.set()
        if not queue.running:
            queue.running = True
            loop.create_task(self._drain(key, queue))
        return await waiting.future

    async def _drain(self, key: tuple[int, int, bool], queue: _Queue) -> None:
        loop = asyncio.get_running_loop()
        try:
            while queue.waiting:
                delay = queue.waiting[0].arrived + self._window - time.monotonic()
                if delay > 0 and queue.texts < self._max_texts:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(queue.wake.wait(), delay)
                queue.wake.clear()
                batch = [queue.waiting.popleft()]
                size = len(batch[0].texts)
                while queue.waiting and size + len(queue.waiting[0].texts) <= self._max_texts:
                    size += len(queue.waiting[0].texts)
                    batch.append(queue.waiting.popleft())
                queue.texts -= size
                # Requests whose client went away are not classified.
                batch = [item for item in batch if not item.future.done()]
                if not batch:
                    continue
                texts = [text for item in batch for text in item.texts]
                pairs = None
                if key[2]:  # a queue of requests with pairs: every item has them
                    pairs = [pair for item in batch for pair in item.pairs or []]
                metrics.HTTP_BATCH_TEXTS.observe(len(texts))
                metrics.HTTP_BATCH_REQUESTS.observe(len(batch))
                try:
                    predictions = await loop.run_in_executor(
                        self._executor,
                        queue.model.classifier.predict,
                        texts,
                        queue.max_seq_length,
                        forward_batch_size(queue.model.classifier.device),
                        self._on_batch(),
                        pairs,
                    )
                except Exception as err:
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(err)
                    continue
                start = 0
                for item in batch:
                    end = start + len(item.texts)
                    if not item.future.done():
                        item.future.set_result(predictions[start:end])
                    start = end
        except BaseException as err:  # a bug or a cancelled loop: no request waits forever
            while queue.waiting:
                item = queue.waiting.popleft()
                if not item.future.done():
                    item.future.set_exception(err)
            queue.texts = 0
            raise
        finally:
            queue.running = False
            if not queue.waiting and self._queues.get(key) is queue:
                del self._queues[key]


def _ignore(done: int, size: int) -> None:
    del done, size
