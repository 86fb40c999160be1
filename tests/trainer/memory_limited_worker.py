"""``bert-finetune worker trainer`` on a simulated device with little memory.

A forward pass over more than ``SIMULATED_DEVICE_ROWS`` rows raises
``torch.OutOfMemoryError`` the way CUDA does. Only this script patches the model class, then
it hands over to the real CLI entry point, so the worker under test is the production one.
(CPU training has no such error: exhausting RAM brings the kernel's OOM killer instead.)
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from transformers.models.bert import modeling_bert

ROWS_THAT_FIT = int(os.environ["SIMULATED_DEVICE_ROWS"])
_forward = modeling_bert.BertForSequenceClassification.forward


def _forward_on_a_small_device(self: Any, input_ids: Any = None, *args: Any, **kwargs: Any) -> Any:
    rows = int(input_ids.shape[0])
    if rows > ROWS_THAT_FIT:
        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 2.00 GiB (simulated device: {rows} rows, "
            f"{ROWS_THAT_FIT} fit)"
        )
    return _forward(self, input_ids, *args, **kwargs)


modeling_bert.BertForSequenceClassification.forward = _forward_on_a_small_device

if __name__ == "__main__":
    from bert_finetune.cli import run

    sys.argv = ["bert-finetune", "worker", "trainer"]
    run()
