"""``bert-finetune worker trainer`` on simulated hardware trouble, for tests of recovery.

Each environment variable below patches one library call to misbehave the way real
hardware or storage does; then the script hands over to the real CLI entry point, so the
worker under test is the production one (production code has no test branches).

- ``SIMULATED_DEVICE_ROWS=N``: a forward pass over more than N rows raises
  ``torch.OutOfMemoryError`` the way CUDA does (CPU training has no such error: exhausting
  RAM brings the kernel's OOM killer instead).
- ``FINAL_SAVE_WAITS_FOR=PATH``: the final model save stalls until the file ``PATH`` exists
  (at most ten minutes): a volume that hangs until the test lets it go, whatever the load; the
  Trainer's checkpoint saves pass ``_internal_call=True`` and are not held.
- ``SLOW_EVAL_BATCH_SECONDS=S``: every evaluation batch takes S seconds longer.
- ``HANG_IN=loading_data|evaluating``: that phase never returns (a dead volume or hub).
- ``HOLD_TRAINING=RUN:STEP:PATH``: a run whose output folder names ``RUN`` stops before
  training step ``STEP`` and stays there (at most ten minutes), after creating ``PATH``: a
  test kills the worker mid-training at a known step, whatever the machine's speed.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Any


def _forever(*args: Any, **kwargs: Any) -> Any:
    while True:
        time.sleep(3600)


def _limit_device_rows(rows_that_fit: int) -> None:
    import torch
    from transformers.models.bert import modeling_bert

    forward = modeling_bert.BertForSequenceClassification.forward

    # The Trainer picks the batch's columns from the forward signature: keep it.
    @functools.wraps(forward)
    def forward_on_a_small_device(self: Any, input_ids: Any = None, *args: Any, **kw: Any) -> Any:
        rows = int(input_ids.shape[0])
        if rows > rows_that_fit:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (simulated device: {rows} "
                f"rows, {rows_that_fit} fit)"
            )
        return forward(self, input_ids, *args, **kw)

    modeling_bert.BertForSequenceClassification.forward = forward_on_a_small_device


def _final_save_waits_for(release: Path) -> None:
    from transformers import Trainer

    save_model = Trainer.save_model

    @functools.wraps(save_model)
    def save_model_on_a_hung_volume(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("_internal_call"):
            deadline = time.monotonic() + 600
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        return save_model(self, *args, **kwargs)

    Trainer.save_model = save_model_on_a_hung_volume


def _hold_training(run: str, step: int, marker: Path) -> None:
    from transformers import Trainer

    training_step = Trainer.training_step

    @functools.wraps(training_step)
    def held_training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if run in str(self.args.output_dir) and self.state.global_step >= step:
            marker.touch()
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                time.sleep(0.1)
        return training_step(self, *args, **kwargs)

    Trainer.training_step = held_training_step


def _slow_evaluation(seconds: float) -> None:
    from transformers import Trainer

    prediction_step = Trainer.prediction_step

    @functools.wraps(prediction_step)
    def slow_prediction_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return prediction_step(self, *args, **kwargs)

    Trainer.prediction_step = slow_prediction_step


def _hang(phase: str) -> None:
    if phase == "loading_data":
        import datasets

        datasets.load_dataset = _forever
    elif phase == "evaluating":
        from transformers import Trainer

        Trainer.prediction_step = _forever
    else:
        raise SystemExit(f"HANG_IN={phase!r}: use loading_data or evaluating")


def _apply(env: dict[str, str]) -> None:
    if "SIMULATED_DEVICE_ROWS" in env:
        _limit_device_rows(int(env["SIMULATED_DEVICE_ROWS"]))
    if "FINAL_SAVE_WAITS_FOR" in env:
        _final_save_waits_for(Path(env["FINAL_SAVE_WAITS_FOR"]))
    if "SLOW_EVAL_BATCH_SECONDS" in env:
        _slow_evaluation(float(env["SLOW_EVAL_BATCH_SECONDS"]))
    if "HANG_IN" in env:
        _hang(env["HANG_IN"])
    if "HOLD_TRAINING" in env:
        run, step, marker = env["HOLD_TRAINING"].split(":", 2)
        _hold_training(run, int(step), Path(marker))


if __name__ == "__main__":
    _apply(dict(os.environ))
    from bert_finetune.cli import run

    sys.argv = ["bert-finetune", "worker", "trainer"]
    run()
